"""After the run: filter, stats, export, show, the Python API and the notebook."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from nbclient import NotebookClient
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pipeline.core.config import load_config
from pipeline.core.storage import Location
from pipeline.job.runner import execute, plan_run
from pipeline.results.dataset import decode_mask, open_run
from pipeline.results.export import export_coco, export_sa1b
from pipeline.results.filters import FilterError, MaskFilter, filter_run, parse_where
from pipeline.results.overlays import show
from pipeline.results.stats import run_stats
from tests.conftest import ROOT, autolabel, make_scene

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, micro_overrides) -> Path:
    """A run of 6 images with many masks of varied scores and areas."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(6):
        make_scene(64 + 8 * i, 48, seed=60 + i).save(folder / f"p{i}.png")
    (folder / "bad.png").write_bytes(b"nope")
    output = tmp_path_factory.mktemp("run") / "out"
    overrides = [*micro_overrides, "amg.points_per_side=5", "runtime.shard_size=4"]
    plan = plan_run(load_config(None, overrides), Location(str(folder)), Location(str(output)))
    execute(plan, show_progress=False)
    return output


def mask_keys(table) -> set[tuple[int, int]]:
    return set(zip(table["image_id"].to_pylist(), table["mask_index"].to_pylist(), strict=True))


def test_filter_keeps_exactly_the_rows_of_its_predicate(finished_run, tmp_path):
    source = open_run(str(finished_run)).masks.to_table()
    iou_median = pc.approximate_median(source["predicted_iou"]).as_py()
    stab_q = pc.quantile(source["stability_score"], q=0.3)[0].as_py()
    area_lo, area_hi = (pc.quantile(source["area"], q=q)[0].as_py() for q in (0.1, 0.9))
    mask_filter = MaskFilter(
        min_predicted_iou=iou_median,
        min_stability_score=stab_q,
        min_area=int(area_lo),
        max_area=int(area_hi),
        where="area > 0",
    )
    counts = filter_run(Location(str(finished_run)), Location(str(tmp_path / "f")), mask_filter)

    expected = source.filter(
        pc.and_(
            pc.and_(
                pc.greater_equal(source["predicted_iou"], iou_median),
                pc.greater_equal(source["stability_score"], stab_q),
            ),
            pc.and_(
                pc.greater_equal(source["area"], int(area_lo)),
                pc.less_equal(source["area"], int(area_hi)),
            ),
        )
    )
    kept = open_run(str(tmp_path / "f"))
    assert 0 < expected.num_rows < source.num_rows
    assert mask_keys(kept.masks.to_table()) == mask_keys(expected)
    assert counts["masks"] == expected.num_rows
    images = kept.images.to_table().to_pylist()
    assert len(images) == 7
    per_image = dict(
        zip(*np.unique(expected["image_id"].to_numpy(), return_counts=True), strict=True)
    )
    assert all(row["num_masks"] == per_image.get(row["image_id"], 0) for row in images)
    manifest = kept.manifest
    assert manifest["filter"]["source"] == str(finished_run)
    assert manifest["filter"]["min_predicted_iou"] == iou_median


def test_top_k_area_fraction_and_where(finished_run, tmp_path):
    source = open_run(str(finished_run)).masks.to_table()
    mask_filter = MaskFilter(
        top_k=3,
        max_area_fraction=0.6,
        where="predicted_iou * 2 > 0.5 and not (mask_index in (0, 1))",
    )
    filter_run(Location(str(finished_run)), Location(str(tmp_path / "f")), mask_filter)
    kept = open_run(str(tmp_path / "f")).masks.to_table().to_pylist()

    rows = source.to_pylist()
    candidates = [
        r
        for r in rows
        if r["predicted_iou"] * 2 > 0.5
        and r["mask_index"] not in (0, 1)
        and r["area"] / np.prod(r["segmentation"]["size"]) <= 0.6
    ]
    expected = set()
    for image_id in {r["image_id"] for r in candidates}:
        mine = sorted(
            (r for r in candidates if r["image_id"] == image_id), key=lambda r: -r["predicted_iou"]
        )
        expected |= {(r["image_id"], r["mask_index"]) for r in mine[:3]}
    assert {(r["image_id"], r["mask_index"]) for r in kept} == expected
    assert 0 < len(expected) <= 3 * 6


def test_bad_where_expressions_are_clear_errors():
    with pytest.raises(FilterError, match="unknown column 'colour'"):
        parse_where("colour == 3")
    with pytest.raises(FilterError, match="unsupported expression"):
        parse_where("__import__('os').system('true')")
    with pytest.raises(FilterError):
        parse_where("area >")
    # not conditions: a number, a column as a boolean, arithmetic without a comparison
    for text, reason in (
        ("1", "is not a condition; give a condition"),
        ("not area", "'invert' has no kernel"),
        ("area + 1", "it gives int64, not true or false"),
        ("1/0", "it gives double, not true or false"),
    ):
        with pytest.raises(FilterError, match=reason) as raised:
            parse_where(text)
        assert "\n" not in str(raised.value)


def test_where_divides_as_python_does_and_a_zero_keeps_the_command_alive(finished_run, tmp_path):
    """``/`` is float division: a row meeting a zero gives inf or nan, not an Arrow error
    that ends the command (issue 22)."""
    rows = open_run(str(finished_run)).masks.to_table().to_pylist()
    source = Location(str(finished_run))
    half = int(np.median([r["area"] for r in rows])) / 2
    for name, where, keeps in (
        ("half", f"area / 2 > {half}", lambda r: r["area"] / 2 > half),
        ("zero", "area / (area - area) > 3", lambda r: r["area"] > 0),  # x / 0 = inf
    ):
        filter_run(source, Location(str(tmp_path / name)), MaskFilter(where=where))
        kept = open_run(str(tmp_path / name)).masks.to_table().num_rows
        assert kept == sum(keeps(r) for r in rows), name
    assert 0 < sum(r["area"] / 2 > half for r in rows) < len(rows)


def test_filter_from_local_to_s3(finished_run, s3):
    fs, prefix = s3
    counts = filter_run(
        Location(str(finished_run)), Location(f"s3://{prefix}/filtered"), MaskFilter(top_k=1)
    )
    assert counts["masks"] == 6
    run = open_run(f"s3://{prefix}/filtered")
    assert run.masks.count_rows() == 6 and run.images.count_rows() == 7


def test_coco_export_loads_in_pycocotools(finished_run, tmp_path):
    masks = open_run(str(finished_run)).masks.to_table()
    out = tmp_path / "coco.json"
    counts = export_coco(Location(str(finished_run)), Location(str(out)))
    coco = COCO(str(out))
    assert counts == {"images": 6, "annotations": masks.num_rows}
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) == masks.num_rows
    assert coco.getCatIds() == [1]
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(ann["image_id"])[0]
        decoded = coco.annToMask(ann)
        assert decoded.shape == (image["height"], image["width"])
        assert int(decoded.sum()) == ann["area"]
        assert ann["score"] == ann["predicted_iou"]
        assert list(mask_utils.toBbox(ann["segmentation"])) == ann["bbox"]
    filtered = export_coco(
        Location(str(finished_run)), Location(str(tmp_path / "f.json")), MaskFilter(top_k=2)
    )
    assert filtered["annotations"] == 12


def test_sa1b_export_writes_one_file_per_image(finished_run, tmp_path):
    counts = export_sa1b(
        Location(str(finished_run)),
        Location(str(tmp_path / "sa1b")),
        MaskFilter(min_predicted_iou=1.1),
    )  # nothing passes: empty files
    files = sorted((tmp_path / "sa1b").glob("sa_*.json"))
    assert len(files) == counts["files"] == 6 and counts["annotations"] == 0
    export_sa1b(Location(str(finished_run)), Location(str(tmp_path / "all")))
    total = 0
    for path in (tmp_path / "all").glob("*.json"):
        document = json.loads(path.read_text())
        assert set(document["image"]) == {"image_id", "width", "height", "file_name"}
        for ann in document["annotations"]:
            assert set(ann) == {
                "id",
                "segmentation",
                "bbox",
                "area",
                "predicted_iou",
                "stability_score",
                "point_coords",
                "crop_box",
            }
            assert int(mask_utils.decode(ann["segmentation"]).sum()) == ann["area"]
        total += len(document["annotations"])
    assert total == open_run(str(finished_run)).masks.count_rows()


def test_stats_writes_json_and_plots(finished_run, tmp_path):
    stats = run_stats(Location(str(finished_run)), str(tmp_path / "stats"))
    document = json.loads((tmp_path / "stats" / "stats.json").read_text())
    masks = open_run(str(finished_run)).masks.to_table()
    assert document["masks"] == masks.num_rows == stats.masks
    assert document["images"] == {"ok": 6, "error": 1}
    median = pc.approximate_median(masks["predicted_iou"]).as_py()
    assert abs(document["predicted_iou"]["p50"] - median) < 0.002
    kept = np.array(document["survival"]["kept"])
    assert kept[0, 0] == masks.num_rows
    assert (np.diff(kept, axis=0) <= 0).all() and (np.diff(kept, axis=1) <= 0).all()
    for name in ("distributions.png", "survival.png"):
        with Image.open(tmp_path / "stats" / name) as image:
            assert image.size[0] > 300 and image.size[1] > 200


def test_show_writes_overlays(finished_run, tmp_path):
    run = open_run(str(finished_run))
    image = run.images.to_table(filter=ds.field("status") == "ok").to_pylist()[0]
    [path] = show(
        Location(str(finished_run)), str(tmp_path / "ov"), image_ids=[image["image_id"]]
    ).written
    overlay = np.array(Image.open(path))
    original = np.array(Image.open(image["image_uri"]).convert("RGB"))
    assert overlay.shape == original.shape
    covered = np.zeros(original.shape[:2], bool)
    for row in run.image_masks(image["image_id"]):
        covered |= decode_mask(row).astype(bool)
    assert (overlay[covered] != original[covered]).any(axis=1).mean() > 0.5
    assert len(show(Location(str(finished_run)), str(tmp_path / "sample"), sample=4).written) == 4


def test_notebook_runs_against_a_run(finished_run):
    notebook = nbformat.read(ROOT / "notebooks" / "explore_run.ipynb", as_version=4)
    os.environ["AUTOLABEL_RUN"] = str(finished_run)
    try:
        NotebookClient(
            notebook,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(ROOT / "notebooks")}},
        ).execute()
    finally:
        os.environ.pop("AUTOLABEL_RUN")
    text = "".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "2 shards, 7 images" in text
    assert "one decoded mask" in text
    images = [
        o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert len(images) == 2


def test_after_run_commands_take_storage_options_instead_of_the_environment(
    finished_run, s3, s3_server
):
    """No AWS_* variables in the command's environment: --storage-option carries it all."""
    fs, prefix = s3
    fs.put(str(finished_run), f"{prefix}/run", recursive=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    secret = "autolabel-test-secret"
    options = [f"endpoint_url={s3_server}", "key=autolabel-test", f"secret={secret}"]
    flags = [part for option in options for part in ("--storage-option", option)]
    run, out = f"s3://{prefix}/run", f"s3://{prefix}/export/coco.json"

    def autolabel_without_env(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "pipeline.cli", *args, *flags]
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert secret not in done.stdout + done.stderr
        return done

    bare = [sys.executable, "-m", "pipeline.cli", "stats", run]  # neither variables nor options
    refused = subprocess.run(bare, env=env, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("autolabel: error: cannot read")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "masks" in autolabel_without_env("stats", run).stdout
    autolabel_without_env("export", run, "--format", "coco", "--out", out)
    coco = json.loads(fs.cat(out[len("s3://") :]))
    assert len(coco["annotations"]) == open_run(str(finished_run)).masks.count_rows()
    # every path flag takes a URI: the run's own export as ground truth, all outputs in the bucket
    autolabel_without_env("eval", run, "--gt", out, "--out", f"s3://{prefix}/eval")
    report = json.loads(fs.cat(f"{prefix}/eval/eval.json"))
    assert report["metrics"]["AP"] > 0.9  # the masks scored against themselves
    assert fs.info(f"{prefix}/eval/thresholds.png")["size"] > 0
    autolabel_without_env("stats", run, "--out", f"s3://{prefix}/stats")
    document = json.loads(fs.cat(f"{prefix}/stats/stats.json"))
    assert document["masks"] == len(coco["annotations"])
    assert any(name.endswith(".png") for name in fs.ls(f"{prefix}/stats"))
    autolabel_without_env("show", run, "--out", f"s3://{prefix}/overlays", "--sample", "2")
    assert len(fs.ls(f"{prefix}/overlays")) == 2
    autolabel_without_env("synth", "--out", f"s3://{prefix}/synth", "--n", "2")
    truth = json.loads(fs.cat(f"{prefix}/synth/annotations.json"))
    assert len(truth["images"]) == 2 == len(fs.ls(f"{prefix}/synth/images"))


def test_file_uris_on_every_path_flag(finished_run, tmp_path):
    """``file://`` URIs where paths go: read and written where they point (no folder named
    ``file:`` under the current directory)."""
    run = f"file://{finished_run}"
    out = tmp_path / "coco.json"
    done = autolabel("export", run, "--format", "coco", "--out", f"file://{out}")
    assert done.returncode == 0, done.stderr[-2000:]
    for args in (
        ["eval", run, "--gt", f"file://{out}", "--out", f"file://{tmp_path}/eval"],
        ["stats", run, "--out", f"file://{tmp_path}/stats"],
        ["show", run, "--out", f"file://{tmp_path}/overlays", "--sample", "1"],
    ):
        done = autolabel(*args)
        assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]["AP"] > 0.9
    assert (tmp_path / "stats" / "stats.json").exists()
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 1
    assert not (ROOT / "file:").exists()


def test_filter_stats_and_exports_as_ray_tasks_equal_one_process(finished_run, tmp_path):
    """``--ray``: one task per shard on the cluster, the same outputs as one process."""
    from pipeline.core.executor import ShardPool

    cluster, here = ShardPool(use_ray=True), ShardPool()
    source = Location(str(finished_run))
    mask_filter = MaskFilter(min_predicted_iou=0.05, max_area_fraction=0.8, top_k=4)
    counts = {
        name: filter_run(source, Location(str(tmp_path / name)), mask_filter, pool=pool)
        for name, pool in (("here", here), ("cluster", cluster))
    }
    assert counts["here"] == counts["cluster"] and counts["here"]["masks"] > 0
    for part in ("masks", "images"):
        tables = [
            ds.dataset(tmp_path / name / part).to_table().sort_by("image_id").to_pylist()
            for name in ("here", "cluster")
        ]
        assert tables[0] == tables[1]

    one, many = run_stats(source, pool=here), run_stats(source, pool=cluster)
    assert one.summary() == many.summary() and one.masks > 0
    assert (one.joint == many.joint).all() and (one.per_image == many.per_image).all()

    for name, pool in (("here", here), ("cluster", cluster)):
        export_coco(source, Location(str(tmp_path / f"{name}.json")), mask_filter, pool=pool)
        export_sa1b(source, Location(str(tmp_path / f"{name}-sa1b")), mask_filter, pool=pool)
    here_coco, cluster_coco = ((tmp_path / f"{n}.json").read_bytes() for n in ("here", "cluster"))
    assert here_coco == cluster_coco and len(json.loads(here_coco)["annotations"]) > 0
    files = {
        name: {p.name: p.read_bytes() for p in (tmp_path / f"{name}-sa1b").iterdir()}
        for name in ("here", "cluster")
    }
    assert files["here"] == files["cluster"] and len(files["here"]) == 6


def test_stats_of_a_run_without_masks(tmp_path):
    """A run whose images kept no mask at all (strict thresholds) still gets its stats."""
    from benchmarks.synthetic_run import write_synthetic_run

    write_synthetic_run(str(tmp_path / "empty"), images=4, masks_per_image=0, shard_size=2)
    result = autolabel("stats", str(tmp_path / "empty"), "--out", str(tmp_path / "stats"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "masks 0" in result.stdout
    document = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert document["masks"] == 0 and document["images"]["ok"] == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "{run}", "--format", "coco", "--out", "{folder}"], "is a folder; give a file"),
        (["export", "{run}", "--format", "sa1b", "--out", "{file}"], "is a file; give a folder"),
        (["stats", "{run}", "--out", "{file}"], "--out {file} is a file; give a folder"),
        (["show", "{run}", "--out", "{file}", "--sample", "1"], "is a file; give a folder"),
        (["eval", "{run}", "--gt", "{file}", "--out", "{file}"], "is a file; give a folder"),
        (["filter", "{run}", "{file}"], "OUT {file} is a file; give a folder"),
        (["run", "--input", "{folder}", "--output", "{file}"], "--output {file} is a file"),
    ],
)
def test_an_output_of_the_wrong_kind_is_refused_first(finished_run, tmp_path, args, message):
    """A file where a folder is written (or a folder where a file is) ends in one line before
    any work, and is left as it was (issue 22)."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("mine")
    names = {"run": finished_run, "folder": tmp_path / "folder", "file": tmp_path / "file"}
    result = autolabel(*(a.format(**names) for a in args))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert message.format(**names) in line
    assert (tmp_path / "file").read_text() == "mine"
    assert list((tmp_path / "folder").iterdir()) == []
