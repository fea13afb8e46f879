"""Labelling from prompts users have: masks equal SAM2ImagePredictor.predict prompt by prompt,
and COCO / YOLO / table prompts go through the whole job."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pycocotools.coco import COCO

from pipeline.core import rle
from pipeline.core.config import load_config
from pipeline.core.prompt import Prompt
from pipeline.dataset import open_run
from pipeline.model.prompted import PromptedGenerator
from pipeline.model.records import fix_feature_sizes
from pipeline.model.registry import build_model, resolve_model
from pipeline.results.evaluate import evaluate_run
from pipeline.synthetic.scenes import make_scene, write_dataset
from tests.conftest import autolabel


@pytest.fixture(scope="module")
def model():
    return build_model(resolve_model("sam2-tiny-synthetic", None, None), "cpu")


@pytest.fixture(scope="module")
def model_at_256():
    """The shipped model at 256-px input, the size the crop geometry below is written for
    (its config says 512: the mechanics are the same, the crops' pixel sizes are not)."""
    return build_model(resolve_model("sam2-tiny-synthetic", None, None, image_size=256), "cpu")


def alone(predictor, prompt: Prompt, width: int, height: int):
    """What sam2's predictor gives for one prompt: (binary mask, predicted IoU)."""
    kwargs = {}
    if prompt.box is not None:
        x, y, w, h = prompt.box
        kwargs["box"] = np.array([max(0, x), max(0, y), min(width, x + w), min(height, y + h)])
    if prompt.points:
        kwargs["point_coords"] = np.array(prompt.points, dtype=np.float32)
        kwargs["point_labels"] = np.array(prompt.point_labels)
    multimask = prompt.box is None and len(prompt.points) == 1
    masks, iou, _ = predictor.predict(multimask_output=multimask, **kwargs)
    return masks[int(iou.argmax())].astype(bool), float(iou.max())


def test_prompted_masks_equal_the_predictor_one_prompt_at_a_time(model):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    scene = make_scene(31_337, 256, 1.0)
    first, second = scene.masks[0], scene.masks[1]
    ys, xs = np.nonzero(first)
    box = (float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1))
    click = (float(xs[len(xs) // 2]), float(ys[len(ys) // 2]))
    ys2, xs2 = np.nonzero(second)
    elsewhere = (float(xs2[0]), float(ys2[0]))
    prompts = [
        Prompt(box=box, category_name="thing", source_id="1"),
        Prompt(points=(click,), point_labels=(1,)),
        Prompt(points=(click, elsewhere), point_labels=(1, 0)),
        # partly outside: clipped (a corner box over background alone gives no mask at all,
        # that prompt's "no mask" error, not a mask to compare)
        Prompt(box=(150.0, 150.0, 150.0, 150.0)),
        Prompt(box=(-50.0, 10.0, 20.0, 20.0)),  # wholly outside: no area
        Prompt(box=(10.0, 10.0, 0.0, 5.0)),  # zero width
        Prompt(box=(box[0] / 256, box[1] / 256, box[2] / 256, box[3] / 256), normalized=True),
    ]
    job = load_config(None, ["amg.min_mask_region_area=0", "prompts.zoom_below=0"])
    results = PromptedGenerator(model, job.amg, batch=2, zoom=job.prompts).generate(
        scene.image, prompts
    )
    assert results[4] == results[5] == "the prompt's box has no area inside the image"
    predictor = SAM2ImagePredictor(model)
    fix_feature_sizes(predictor)
    with torch.inference_mode():
        predictor.set_image(scene.image)
        for index in (0, 1, 2, 3, 6):
            prompt = prompts[index].in_pixels(256, 256)
            mask, iou = alone(predictor, prompt, 256, 256)
            record = results[index]
            assert isinstance(record, dict), record
            assert np.array_equal(rle.decode(record["segmentation"]).astype(bool), mask), index
            assert record["predicted_iou"] == pytest.approx(iou, abs=1e-4)
            assert record["area"] == int(mask.sum()) and 0 <= record["stability_score"] <= 1
    assert results[6]["segmentation"] == results[0]["segmentation"]  # YOLO-style = pixels
    clicked = rle.decode(results[1]["segmentation"]).astype(bool)
    assert (clicked & first).sum() / (clicked | first).sum() > 0.5, "a click finds its object"


def test_a_small_box_is_segmented_on_a_crop_around_it_and_placed_back(model_at_256):
    """A box under ``prompts.zoom_below`` input pixels: its mask is what sam2's predictor gives
    for it on a square crop three times its size (a box with a click keeps the click), placed
    back in the image, unless that mask runs into an inner edge of the crop (then the whole
    image's); a large box, a click and a box whose click is outside the crop are decoded on
    the whole image."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from pipeline.model.prompted import Window, cut_by_crop

    model = model_at_256
    scene = make_scene(31_337, 256, 1.0)
    image = np.ascontiguousarray(np.concatenate([scene.image, scene.image[:64]], axis=0))
    whole = [0.0, 0.0, 256.0, 320.0]
    small = (100.0, 180.0, 20.0, 12.0)  # x, y, w, h: 20 px of a 320 x 256 image
    prompts = {  # a prompt, and the crop it is decoded on, if zoomed
        "small": (Prompt(box=small), [80.0, 156.0, 60.0, 60.0]),  # 3 x 20 px, centred
        "small + click": (
            Prompt(box=small, points=((110.0, 186.0),), point_labels=(1,)),
            [80.0, 156.0, 60.0, 60.0],
        ),
        "corner": (Prompt(box=(5.0, 300.0, 14.0, 16.0)), [0.0, 272.0, 48.0, 48.0]),  # slid in
        "tiny": (Prompt(box=(150.0, 40.0, 4.0, 3.0)), [136.0, 26.0, 32.0, 32.0]),  # input / 8
        "small again": (Prompt(box=small, category_name="again"), [80.0, 156.0, 60.0, 60.0]),
        "large": (Prompt(box=(10.0, 10.0, 200.0, 150.0)), None),  # 200 of 256 input px
        "click": (Prompt(points=((110.0, 186.0),), point_labels=(1,)), None),
        "click outside": (
            Prompt(box=small, points=((110.0, 186.0), (20.0, 20.0)), point_labels=(1, 0)),
            None,
        ),
    }
    job = load_config(None, ["amg.min_mask_region_area=0"])
    assert (job.prompts.zoom_below, job.prompts.zoom_context) == (96, 3.0)
    given = [prompt for prompt, _ in prompts.values()]
    results = dict(
        zip(
            prompts,
            PromptedGenerator(model, job.amg, zoom=job.prompts).generate(image, given),
            strict=True,
        )
    )
    unzoomed = load_config(None, ["amg.min_mask_region_area=0", "prompts.zoom_below=0"])
    plain = dict(
        zip(
            prompts,
            PromptedGenerator(model, unzoomed.amg, zoom=unzoomed.prompts).generate(image, given),
            strict=True,
        )
    )
    assert all(isinstance(r, dict) for r in [*results.values(), *plain.values()]), results
    assert all(r["crop_box"] == whole for r in plain.values())
    predictor = SAM2ImagePredictor(model)
    fix_feature_sizes(predictor)
    placed_from_crops = 0
    with torch.inference_mode():
        for name, (prompt, crop) in prompts.items():
            record = results[name]
            if crop is None:
                assert record["crop_box"] == whole, name
                assert record["segmentation"] == plain[name]["segmentation"], name
                continue
            x0, y0, side, _ = (int(v) for v in crop)
            predictor.set_image(np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side]))
            x, y, w, h = prompt.box
            points = tuple((px - x0, py - y0) for px, py in prompt.points)
            local = Prompt(
                box=(x - x0, y - y0, w, h), points=points, point_labels=prompt.point_labels
            )
            mask, iou = alone(predictor, local, side, side)
            if cut_by_crop(mask, Window(x0, y0, side), 256, 320):  # decoded on the whole image
                assert record["crop_box"] == whole, name
                assert record["segmentation"] == plain[name]["segmentation"], name
                continue
            placed_from_crops += 1
            assert record["crop_box"] == crop, name
            placed = np.zeros(image.shape[:2], dtype=bool)
            placed[y0 : y0 + side, x0 : x0 + side] = mask
            got = rle.decode(record["segmentation"]).astype(bool)
            assert got.any() and np.array_equal(got, placed), name
            assert record["predicted_iou"] == pytest.approx(iou, abs=1e-4)
            assert record["area"] == int(mask.sum())
            assert record["point_coords"] == [list(p) for p in prompt.points]  # image pixels
    assert placed_from_crops >= 3, "the shipped model's masks of these boxes fit their crops"
    assert results["small again"]["segmentation"] == results["small"]["segmentation"]
    # a long box in a narrow strip: no square crop of the strip holds it, so no zoom
    strip = np.ascontiguousarray(np.tile(scene.image[100:140], (1, 4, 1)))  # 1024 x 40
    (record,) = PromptedGenerator(model, job.amg, zoom=job.prompts).generate(
        strip, [Prompt(box=(300.0, 10.0, 80.0, 10.0))]
    )
    assert record["crop_box"] == [0.0, 0.0, 1024.0, 40.0]


def test_a_mask_cut_by_its_crop_is_told_from_one_that_ends_inside_it():
    """``cut_by_crop``: a mask touching an inner edge of its crop (the object goes on) is
    cut; touching an edge the crop shares with the image is not."""
    from pipeline.model.prompted import Window, cut_by_crop

    mask = np.zeros((32, 32), dtype=bool)
    mask[10:20, 10:20] = True
    assert not cut_by_crop(mask, Window(50, 50, 32), 256, 256)
    for edge in (np.s_[10:20, 0], np.s_[0, 10:20], np.s_[10:20, -1], np.s_[-1, 10:20]):
        touching = mask.copy()
        touching[edge] = True
        assert cut_by_crop(touching, Window(50, 50, 32), 256, 256)
    left, top = mask.copy(), mask.copy()
    left[10:20, 0], top[0, 10:20] = True, True
    assert not cut_by_crop(left, Window(0, 50, 32), 256, 256)  # the image's own left edge
    assert not cut_by_crop(top, Window(50, 0, 32), 256, 256)
    right = mask.copy()
    right[10:20, -1] = True
    assert not cut_by_crop(right, Window(224, 50, 32), 256, 256)


def test_a_prompted_run_labelled_before_boxes_were_zoomed_resumes_unzoomed():
    """The fingerprint of a prompted run written before zooming (no ``prompts`` settings) is
    what ``prompts.zoom_below=0`` gives now; with zooming on, the refusal says so. An
    automatic run's fingerprint does not depend on the prompt settings."""
    import hashlib

    from pipeline.job.manifest import RunConflictError, check_compatible, new_manifest
    from pipeline.job.manifest import fingerprint as run_fingerprint

    spec = resolve_model("sam2-tiny-synthetic", None, None)
    prompts = {"hash": "0123abcd", "matched": 3, "unmatched": 0}
    zoomed, unzoomed = load_config(None, []), load_config(None, ["prompts.zoom_below=0"])
    before = new_manifest(unzoomed, spec, "/in", prompts)
    del before["config"]["prompts"]
    config = before["config"]
    identity = {section: config[section] for section in ("model", "amg", "image")}
    identity["runtime"] = {"shard_size": config["runtime"]["shard_size"]}
    identity["generator"] = {"impl": config["generator"]["impl"]}
    identity["resolved_model"] = {  # the shipped model: named by its weights' content
        "name": spec.name,
        "checkpoint_sha256": hashlib.sha256(Path(spec.checkpoint).read_bytes()).hexdigest(),
    }
    identity["prompts"] = prompts["hash"]
    old = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    assert before["fingerprint"] == old
    check_compatible(before, new_manifest(unzoomed, spec, "/in", prompts))  # resumes
    with pytest.raises(
        RunConflictError, match="before boxes were zoomed: add prompts.zoom_below=0"
    ):
        check_compatible(before, new_manifest(zoomed, spec, "/in", prompts))
    assert run_fingerprint(zoomed, spec) == run_fingerprint(unzoomed, spec)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Four synthetic scenes and their exact ground truth (COCO, ids 1..N)."""
    folder = tmp_path_factory.mktemp("prompted") / "scenes"
    write_dataset(str(folder), 4, seed=4040)
    return folder, json.loads((folder / "annotations.json").read_text())


def run_prompted(scenes_folder, prompts, out, *extra):
    return autolabel(
        "run",
        "--input",
        str(scenes_folder / "images"),
        "--output",
        str(out),
        "--prompts",
        str(prompts),
        "--no-progress",
        "model.name=sam2-tiny-synthetic",
        "runtime.shard_size=2",
        *extra,
    )


def accounted(out) -> tuple[int, list[str]]:
    """Every prompt of every image is a mask or a reason; returns (masks, reasons)."""
    images = open_run(str(out)).images.to_table().to_pylist()
    assert all(row["status"] == "ok" for row in images)
    for row in images:
        assert row["num_prompts"] == row["num_masks"] + len(row["prompt_errors"])
    return sum(r["num_masks"] for r in images), [e for r in images for e in r["prompt_errors"]]


def test_coco_boxes_become_a_segmentation_dataset_with_their_categories_and_ids(scenes, tmp_path):
    folder, truth = scenes
    coco = dict(truth)
    coco["categories"] = [{"id": 7, "name": "round"}, {"id": 9, "name": "angular"}]
    coco["annotations"] = [
        {**ann, "category_id": 7 if ann["shape"] in ("ellipse", "ring") else 9}
        for ann in truth["annotations"]
    ]
    zero_width = {"id": 5000, "image_id": 1, "bbox": [10, 10, 0, 4], "category_id": 7}
    coco["annotations"].append(zero_width)
    coco["images"] = [*truth["images"], {"id": 99, "file_name": "gone.png"}]
    coco["annotations"].append({"id": 5001, "image_id": 99, "bbox": [1, 1, 5, 5], "category_id": 9})
    prompts = tmp_path / "detections.json"
    prompts.write_text(json.dumps(coco))
    out = tmp_path / "run"
    result = run_prompted(folder, prompts, out)
    assert result.returncode == 0, result.stderr
    assert "1 for images not in the input" in result.stdout
    manifest = open_run(str(out)).manifest["prompts"]
    assert (manifest["matched"], manifest["unmatched"]) == (len(truth["annotations"]) + 1, 1)
    # The actors read their prompts from the run's prompt files, beside the listing files.
    blocks = list(out.glob("_listing/*/prompts-*.parquet"))
    assert blocks and sum(pq.read_metadata(b).num_rows for b in blocks) == manifest["matched"]
    masks, reasons = accounted(out)
    assert reasons == ["prompt 5000: the prompt's box has no area inside the image"]
    rows = open_run(str(out)).masks.to_table().to_pylist()
    expected = {str(a["id"]): a for a in coco["annotations"]}
    for row in rows:
        source = expected[row["source_id"]]
        assert row["category_id"] == source["category_id"]
        assert row["category_name"] == {7: "round", 9: "angular"}[source["category_id"]]
        assert row["prompt_box"] == pytest.approx(source["bbox"])
        assert 0.0 <= row["box_iou"] <= 1.0
    export = tmp_path / "segmentation.json"
    assert autolabel("export", str(out), "--format", "coco", "--out", str(export)).returncode == 0
    exported = COCO(str(export))
    assert {c["name"] for c in exported.loadCats(exported.getCatIds())} == {"round", "angular"}
    for ann in exported.dataset["annotations"]:
        assert ann["category_id"] == expected[str(ann["id"])]["category_id"]
    assert len(exported.dataset["annotations"]) == masks
    ground_truth = tmp_path / "truth.json"
    categories = {ann["id"]: ann["category_id"] for ann in coco["annotations"]}
    ground_truth.write_text(
        json.dumps(
            {
                **truth,
                "categories": coco["categories"],
                "annotations": [
                    {**a, "category_id": categories[a["id"]]} for a in truth["annotations"]
                ],
            }
        )
    )
    report = evaluate_run(str(out), str(ground_truth))
    assert set(report["per_category_ap"]) == {"round", "angular"}
    assert all(0.0 <= ap <= 1.0 for ap in report["per_category_ap"].values())
    wandered = autolabel("filter", str(out), str(tmp_path / "odd"), "--where", "box_iou < 0.5")
    assert wandered.returncode == 0, wandered.stderr
    odd = open_run(str(tmp_path / "odd")).masks.to_table().column("box_iou").to_pylist()
    assert sorted(odd) == sorted(r["box_iou"] for r in rows if r["box_iou"] < 0.5)
    rerun = run_prompted(folder, prompts, out)
    assert rerun.returncode == 0 and "2 already committed" in rerun.stderr
    unzoomed = run_prompted(folder, prompts, out, "prompts.zoom_below=0")
    assert unzoomed.returncode == 2 and "(prompts.zoom_below/zoom_context)" in unzoomed.stderr
    coco["annotations"] = coco["annotations"][:-3]
    prompts.write_text(json.dumps(coco))
    refused = run_prompted(folder, prompts, out)
    assert refused.returncode == 2 and "prompts" in refused.stderr


def test_yolo_labels_become_masks_by_file_stem(scenes, tmp_path):
    folder, truth = scenes
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("shape\n")
    for image in truth["images"][:3]:
        anns = [a for a in truth["annotations"] if a["image_id"] == image["id"]]
        lines = [
            f"0 {(x + w / 2) / 256} {(y + h / 2) / 256} {w / 256} {h / 256}"
            for x, y, w, h in (a["bbox"] for a in anns)
        ]
        (labels / image["file_name"].replace(".png", ".txt")).write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    result = run_prompted(folder, labels, out)
    assert result.returncode == 0, result.stderr
    masks, reasons = accounted(out)
    images = open_run(str(out)).images.to_table().to_pylist()
    assert sorted(r["num_prompts"] for r in images)[0] == 0, "an image without labels: no masks"
    rows = open_run(str(out)).masks.to_table().to_pylist()
    assert masks == len(rows) > 0 and {r["category_name"] for r in rows} == {"shape"}
    class_zero = tmp_path / "truth.json"  # YOLO's first class has id 0
    class_zero.write_text(
        json.dumps(
            {
                **truth,
                "categories": [{"id": 0, "name": "shape"}],
                "annotations": [{**a, "category_id": 0} for a in truth["annotations"]],
            }
        )
    )
    assert set(evaluate_run(str(out), str(class_zero))["per_category_ap"]) == {"shape"}


def test_a_malformed_prompts_file_stops_the_run_before_any_model_loads(scenes, tmp_path):
    folder, _ = scenes
    prompts = tmp_path / "bad.csv"
    prompts.write_text("image_uri,category_name\nx.png,cup\n")
    result = run_prompted(folder, prompts, tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"autolabel: error: row 1 of {prompts} has neither a box nor points"
    ]


def test_a_table_of_boxes_and_clicks_becomes_masks(scenes, tmp_path):
    """Parquet prompts by image_uri: a box row and a click row for the same object."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder, truth = scenes
    image = truth["images"][0]
    uri = str(folder / "images" / image["file_name"])
    ann = next(a for a in truth["annotations"] if a["image_id"] == image["id"])
    ys, xs = np.nonzero(rle.decode(ann["segmentation"]))
    table = pa.table(
        {
            "image_uri": [uri, uri],
            "box": [ann["bbox"], None],
            "points": [None, [[float(xs[0]), float(ys[0])]]],
            "point_labels": [None, [1]],
            "category_name": ["thing", "thing"],
            "source_id": ["box-1", "click-1"],
        }
    )
    pq.write_table(table, tmp_path / "prompts.parquet")
    out = tmp_path / "run"
    result = run_prompted(folder, tmp_path / "prompts.parquet", out)
    assert result.returncode == 0, result.stderr
    masks, reasons = accounted(out)
    rows = open_run(str(out)).masks.to_table().to_pylist()
    assert masks == 2 and not reasons
    by_source = {row["source_id"]: row for row in rows}
    assert by_source["box-1"]["prompt_box"] == pytest.approx(ann["bbox"])
    assert by_source["click-1"]["prompt_points"] == [[float(xs[0]), float(ys[0])]]
    assert by_source["click-1"]["box_iou"] is None


def test_an_unreadable_image_keeps_its_prompt_count_on_its_error_row(scenes, tmp_path):
    folder, truth = scenes
    images = tmp_path / "images"
    images.mkdir()
    good = images / truth["images"][0]["file_name"]
    good.write_bytes((folder / "images" / good.name).read_bytes())
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        "image_uri,box\n"
        f'{good},"[10, 10, 40, 40]"\n'
        f'{images / "broken.png"},"[1, 1, 5, 5]"\n'
        f'{images / "broken.png"},"[2, 2, 5, 5]"\n'
    )
    result = run_prompted(tmp_path, prompts, tmp_path / "run")
    assert result.returncode == 0, result.stderr
    table = open_run(str(tmp_path / "run")).images.to_table()
    rows = {row["image_uri"]: row for row in table.to_pylist()}
    broken = rows[str(images / "broken.png")]
    assert broken["status"] == "error" and broken["num_prompts"] == 2 and broken["error"]
    assert rows[str(good)]["num_prompts"] == 1
