"""Synthetic scenes, `autolabel eval`, and the small SAM 2 trained on them."""

import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from pycocotools.coco import COCO

from pipeline.core import rle
from pipeline.core.schema import image_row, image_table, mask_rows
from pipeline.core.storage import Location
from pipeline.core.writer import RunLayout, commit_shard
from pipeline.job.sources import image_id_for
from pipeline.results.evaluate import evaluate_run
from pipeline.synthetic.scenes import make_scene, write_dataset
from tests.conftest import autolabel


def test_synth_writes_scenes_and_exact_ground_truth(tmp_path):
    result = autolabel("synth", "--n", "6", "--seed", "3", "--out", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    coco = COCO(str(tmp_path / "s" / "annotations.json"))
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) >= 6
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        masks = np.stack([coco.annToMask(a) for a in anns])
        assert masks.sum(axis=0).max() <= 1, "visible instance masks must not overlap"
        assert all(int(m.sum()) == a["area"] for m, a in zip(masks, anns, strict=True))
    shapes = {a["shape"] for a in coco.dataset["annotations"]}
    assert len(shapes) >= 3
    again = make_scene(3 * 1_000_003, 256, 1.0)
    written = np.array(Image.open(tmp_path / "s" / "images" / "scene_3_00000.png"))
    assert np.array_equal(again.image, written), "the same seed must give the same scene"


def write_run_from_masks(output, folder, coco: COCO, perturb: bool) -> None:
    """A run whose masks are the ground truth (perturb: shifted), written by the real writer."""
    layout = RunLayout(Location(str(output)))
    masks, rows = [], []
    for image in coco.dataset["images"]:
        uri = str(folder / "images" / image["file_name"])
        records = []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])):
            mask = coco.annToMask(ann)
            if perturb:
                mask = np.roll(mask, 40, axis=1)
            seg = rle.encode_mask(mask)
            records.append(
                {
                    "segmentation": seg,
                    "area": rle.area(seg),
                    "bbox": rle.bbox(seg),
                    "predicted_iou": 0.9,
                    "stability_score": 0.97,
                    "point_coords": [[0.0, 0.0]],
                    "crop_box": [0.0, 0.0, 256.0, 256.0],
                }
            )
        masks.append(mask_rows(image_id_for(uri), uri, records))
        rows.append(
            image_row(
                image_id_for(uri), uri, "shard-00000", width=256, height=256, num_masks=len(records)
            )
        )
    commit_shard(
        layout,
        "shard-00000",
        pa.concat_tables(masks),
        image_table(rows),
        {"images": len(rows), "ok": len(rows), "errors": 0, "masks": 0},
    )
    layout.manifest.write_json_atomic({"format": "autolabel-run/1", "config": {}})


@pytest.mark.parametrize("perturb, low, high", [(False, 0.99, 1.0), (True, 0.0, 0.2)])
def test_eval_scores_perfect_and_shifted_labels(tmp_path, perturb, low, high):
    write_dataset(str(tmp_path / "gt"), 5, seed=11)
    coco = COCO(str(tmp_path / "gt" / "annotations.json"))
    write_run_from_masks(tmp_path / "run", tmp_path / "gt", coco, perturb)
    report = evaluate_run(
        str(tmp_path / "run"), str(tmp_path / "gt" / "annotations.json"), str(tmp_path / "eval")
    )
    assert low <= report["metrics"]["AP"] <= high
    assert low <= report["metrics"]["AR@100"] <= high
    assert report["images"] == 5 and report["gt_instances"] == len(coco.getAnnIds())
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(saved["threshold_curves"]) == {"predicted_iou", "stability_score"}
    assert (tmp_path / "eval" / "thresholds.png").stat().st_size > 10_000
