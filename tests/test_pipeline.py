"""The whole job through a real local Ray cluster: listing → actors → committed Parquet shards."""

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

from pipeline.core.config import load_config
from pipeline.core.storage import Location
from pipeline.job.manifest import RunConflictError
from pipeline.job.runner import execute, plan_run
from pipeline.model.records import fix_feature_sizes
from pipeline.model.reference import SAM2_ARGUMENTS
from pipeline.model.registry import build_model, resolve_model
from tests.conftest import autolabel

pytestmark = pytest.mark.usefixtures("ray_local")


def run(source, output, overrides, **kwargs):
    job = load_config(None, overrides)
    places = (Location(str(p), job.storage.options) for p in (source, output))
    plan = plan_run(job, *places, **kwargs)
    return plan, execute(plan, show_progress=False)


def read_run(output: Path):
    images = ds.dataset(output / "images", format="parquet").to_table().to_pylist()
    masks = ds.dataset(output / "masks", format="parquet").to_table().to_pylist()
    return images, masks


def stock_records(job, image_uri: str) -> list[dict]:
    """What sam2's own generator gives for the same image, weights and settings."""
    spec = resolve_model(job.model.name, job.model.config, job.model.checkpoint)
    stock = SAM2AutomaticMaskGenerator(
        build_model(spec, "cpu"),
        output_mode="coco_rle",
        min_mask_region_area=0,
        **{name: getattr(job.amg, name) for name in SAM2_ARGUMENTS},
    )
    fix_feature_sizes(stock.predictor)
    records = stock.generate(np.array(Image.open(image_uri).convert("RGB")))
    return [r for r in records if r["area"] > 0]  # we drop empty masks


def assert_masks_decode_and_match_rows(images, masks):
    sizes = {row["image_id"]: (row["height"], row["width"]) for row in images}
    for row in masks:
        decoded = mask_utils.decode(row["segmentation"])  # stored as it is, no conversion
        assert decoded.shape == sizes[row["image_id"]]
        assert row["area"] == int(decoded.sum())
        ys, xs = np.nonzero(decoded)
        x0, y0 = int(xs.min()), int(ys.min())
        assert row["bbox"] == [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def assert_same_as_stock(job, images, masks):
    by_image: dict[int, list[dict]] = {}
    for row in masks:
        by_image.setdefault(row["image_id"], []).append(row)
    for image in (r for r in images if r["status"] == "ok"):
        expected = stock_records(job, image["image_uri"])
        got = sorted(by_image.get(image["image_id"], []), key=lambda r: r["mask_index"])
        assert image["num_masks"] == len(got) == len(expected)
        for mine, theirs in zip(got, expected, strict=True):
            # The same mask, to float rounding: the re-associated decoder may flip a pixel
            # whose logit is within 1e-5 of the threshold (thresholds 0 keep every mask here).
            [[iou]] = mask_utils.iou([mine["segmentation"]], [theirs["segmentation"]], [0])
            assert iou >= 0.999
            assert mine["predicted_iou"] == pytest.approx(theirs["predicted_iou"], abs=1e-5)
            assert mine["stability_score"] == pytest.approx(theirs["stability_score"], abs=1e-3)
            assert mine["point_coords"][0] == pytest.approx(theirs["point_coords"][0])
            assert mine["crop_box"] == pytest.approx(theirs["crop_box"])


def test_every_image_gets_one_row_and_masks_equal_stock(image_folder, tmp_path, micro_overrides):
    output = tmp_path / "out"
    overrides = [*micro_overrides, "runtime.shard_size=3"]
    plan, summary = run(image_folder, output, overrides)
    assert summary.succeeded and summary.shards_done == 3
    images, masks = read_run(output)

    listed = sorted(str(p) for p in image_folder.rglob("*.*"))
    assert sorted(r["image_uri"] for r in images) == listed
    assert len({r["image_id"] for r in images}) == len(listed)
    broken = [r for r in images if r["image_uri"].endswith("broken.jpg")]
    assert broken[0]["status"] == "error" and "cannot decode image" in broken[0]["error"]
    assert all(r["status"] == "ok" and r["error"] is None for r in images if r not in broken)
    assert summary.ok == 7 and summary.errors == 1 and summary.masks == len(masks) > 7 * 5

    assert_masks_decode_and_match_rows(images, masks)
    assert_same_as_stock(plan.job, images, masks)

    manifest = json.loads((output / "_run.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {
        "images": 8,
        "ok": 7,
        "errors": 1,
        "masks": len(masks),
        "shards_committed": 3,
    }
    assert manifest["config"]["amg"]["points_per_side"] == 4
    assert manifest["model"]["checkpoint"] == plan.model.checkpoint
    assert {"sam2", "torch", "ray", "pyarrow"} <= set(manifest["versions"])
    assert not list(output.rglob("*.partial"))


def test_mask_files_let_score_filters_skip_row_groups(image_folder, tmp_path, micro_overrides):
    output = tmp_path / "out"
    run(image_folder, output, [*micro_overrides, "output.mask_row_group_size=16"])
    meta = pq.ParquetFile(output / "masks" / "shard-00000.parquet").metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    column = meta.schema.names.index("predicted_iou")
    ranges = [
        (
            meta.row_group(i).column(column).statistics.min,
            meta.row_group(i).column(column).statistics.max,
        )
        for i in range(meta.num_row_groups)
    ]
    assert len(ranges) > 3
    threshold = ranges[-1][0]  # keep only the best row group's scores
    assert sum(high >= threshold for _, high in ranges) <= 2


def test_rerun_resumes_and_refuses_other_settings(image_folder, tmp_path, micro_overrides):
    output = tmp_path / "out"
    overrides = [*micro_overrides, "runtime.shard_size=3"]
    run(image_folder, output, overrides)
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*.parquet")}
    clean = read_run(output)

    plan, summary = run(image_folder, output, overrides)
    assert plan.todo == [] and summary.shards_skipped == 3
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*.parquet")} == before

    (output / "_shards" / "shard-00001.json").unlink()  # as if the run died before its commit
    plan, summary = run(image_folder, output, overrides)
    assert [s.name for s in plan.todo] == ["shard-00001"] and summary.shards_done == 1
    resumed = read_run(output)
    key = lambda r: (r["image_id"], r.get("mask_index", 0))  # noqa: E731
    assert sorted(resumed[1], key=key) == sorted(clean[1], key=key)
    assert len(resumed[0]) == 8

    with pytest.raises(RunConflictError, match="different settings \\(amg\\)"):
        run(image_folder, output, [*overrides, "amg.points_per_side=3"])
    _, summary = run(image_folder, output, [*overrides, "amg.points_per_side=3"], overwrite=True)
    assert summary.shards_done == 3


@pytest.mark.slow
def test_done_when_command_with_hiera_tiny(tmp_path):
    """The issue's own command: sam2.1 Hiera-T with random weights, through the CLI."""
    from pipeline.model.registry import save_random_checkpoint
    from tests.conftest import make_scene

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        make_scene(96, 64, seed=20 + i).save(folder / f"p{i}.png")
    ckpt = save_random_checkpoint("configs/sam2.1/sam2.1_hiera_t.yaml", str(tmp_path / "t.pt"))
    overrides = [
        "model.config=configs/sam2.1/sam2.1_hiera_t.yaml",
        f"model.checkpoint={ckpt}",
        "amg.points_per_side=4",
        "amg.pred_iou_thresh=0",
        "amg.stability_score_thresh=0",
        "model.dtype=float32",
    ]
    output = tmp_path / "out"
    result = autolabel("run", "--input", str(folder), "--output", str(output), *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "images ok" in result.stdout and str(output) in result.stdout
    images, masks = read_run(output)
    assert len(images) == 2 and masks
    assert_masks_decode_and_match_rows(images, masks)
    assert_same_as_stock(load_config(None, overrides), images, masks)
