"""How good are the pseudo-labels? Class-agnostic COCO metrics against a labelled subset.

The run's masks are scored with pycocotools' COCOeval (segm) against a COCO instances file,
all categories merged into one (the generator knows no classes). With ``--out`` it also writes
how precision and recall (at mask IoU 0.5) move as the predicted-IoU and stability thresholds
rise, so a user can pick ``autolabel filter`` thresholds on their own labelled images.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline.core import rle
from pipeline.core.errors import UserError, one_line
from pipeline.core.pairing import by_path_end, file_key
from pipeline.core.storage import Location, as_location
from pipeline.results.dataset import open_run
from pipeline.results.stats import without_nan

METRIC_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR@1",
    "AR@10",
    "AR@100",
    "AR_small",
    "AR_medium",
    "AR_large",
)
THRESHOLDS = np.round(np.linspace(0.0, 1.0, 41), 3)


class EvalError(UserError, ValueError):
    """Ground truth and run that cannot be compared; one line for the user."""


def read_ground_truth(gt: Location) -> dict[str, Any]:
    """The COCO instances file at ``gt`` (a path or URI), checked to be one.

    Raises:
        EvalError: it is missing, unreadable, not JSON, or not a COCO instances file.
    """
    try:
        data = json.loads(gt.read_bytes())
    except FileNotFoundError as error:
        raise EvalError(f"--gt {gt}: no such file") from error
    except json.JSONDecodeError as error:
        raise EvalError(f"--gt {gt} is not JSON: {error}") from error
    except Exception as error:  # a folder, a permission, an unreachable store
        raise EvalError(f"cannot read --gt {gt}: {one_line(error)}") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise EvalError(f"--gt {gt} is not a COCO instances file (it has no 'images' list)")
    return data


def class_agnostic(ground_truth: dict[str, Any], agnostic: bool = True) -> COCO:
    """A COCO index of a ground-truth file's content, every annotation moved to one category
    (``agnostic``) or as it is; ``ground_truth`` itself is not changed."""
    data = copy.deepcopy(ground_truth)
    data.setdefault("annotations", [])
    if agnostic:
        for ann in data["annotations"]:
            ann["category_id"] = 1
        data["categories"] = [{"id": 1, "name": "object"}]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def match_images(gt: COCO, uris: dict[str, int]) -> dict[int, int]:
    """GT image id → run image id: a ``file_name`` ends the image's path at a folder boundary
    (``core/pairing``, as ``--prompts`` pairs a COCO file).

    Raises:
        EvalError: a ``file_name`` fits two of the run's images.
    """
    keys: dict[str, list[int]] = {}
    for image in gt.dataset["images"]:
        keys.setdefault(file_key(image["file_name"]), []).append(image["id"])
    pairing = by_path_end(keys, uris)
    shared = pairing.shared()
    if shared is not None:
        name, fits = shared
        raise EvalError(
            f"the ground truth's file_name {name} fits {len(fits)} images of the run "
            f"({fits[0]}, {fits[1]}); give file_name with its folder (train/a.jpg)"
        )
    return {gt_id: uris[uri] for uri, key in pairing.found.items() for gt_id in keys[key]}


def detections(source: Location, gt: COCO) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """The run's masks of the GT's images as COCO results (score = predicted IoU)."""
    run = open_run(source)
    images = run.images.to_table(columns=["image_id", "image_uri", "status"]).to_pylist()
    matched = match_images(gt, {row["image_uri"]: row["image_id"] for row in images})
    if not matched:
        raise EvalError(f"no image of {source} matches a file_name of the ground truth")
    back = {run_id: gt_id for gt_id, run_id in matched.items()}
    table = run.masks.to_table(filter=run.field("image_id").isin(list(back)))
    results = []
    for row in table.to_pylist():
        gt_id = back[row["image_id"]]
        image = gt.imgs[gt_id]
        if list(row["segmentation"]["size"]) != [image["height"], image["width"]]:
            raise EvalError(
                f"masks of {image['file_name']} are {row['segmentation']['size']} (h, w) but the "
                f"ground truth is {[image['height'], image['width']]}; run with "
                "image.max_short_side=0 to label at full size"
            )
        results.append(
            {
                "image_id": gt_id,
                "category_id": 1,
                "segmentation": row["segmentation"],
                "score": row["predicted_iou"],
                "stability_score": row["stability_score"],
                "run_category": row.get("category_id"),
                "area": row["area"],
                "bbox": row["bbox"],
                "source_id": row.get("source_id"),
                "prompt_box": row.get("prompt_box"),
            }
        )
    return results, matched


def prompted_iou(gt: COCO, results: list[dict[str, Any]], matched: dict[int, int]) -> dict | None:
    """For a run prompted by this ground truth's own annotations (``--prompts`` with the same
    COCO file): each prompt's mask against the annotation that prompted it.

    A mask is that annotation's when its ``source_id`` is the annotation's id, on the same
    image, and its prompt box is the annotation's box (ids alone could come from another
    file). Returns None when no mask is; else ``prompts`` (the annotations of the matched
    images), ``masks`` (those with their mask) and ``mean_iou`` (an annotation without a
    mask counts 0).

    Args:
        gt: the ground truth (``class_agnostic``: annotation ids are kept).
        results: ``detections``' masks.
        matched: GT image id → run image id.
    """
    by_id = {str(ann_id): ann for ann_id, ann in gt.anns.items()}  # source_id is a string
    ious = []
    for result in results:
        ann = by_id.get(result["source_id"]) if result["source_id"] is not None else None
        if ann is None or ann["image_id"] != result["image_id"]:
            continue
        box = result["prompt_box"]
        if box is None or np.abs(np.subtract(box, ann["bbox"])).max() > 1.0:
            continue
        mask = rle.as_pycocotools(result["segmentation"])
        ious.append(float(mask_utils.iou([mask], [gt.annToRLE(ann)], [0])[0][0]))
    if not ious:
        return None
    prompts = len(gt.getAnnIds(imgIds=list(matched)))
    return {"prompts": prompts, "masks": len(ious), "mean_iou": sum(ious) / max(prompts, len(ious))}


def coco_metrics(gt: COCO, results: list[dict[str, Any]], image_ids: list[int]) -> dict:
    """COCOeval (segm) summary as a dict of the 12 standard numbers."""
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(results)) if results else COCO()
        evaluator = COCOeval(gt, dt, "segm")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats, strict=True)}


def per_category_ap(
    ground_truth: dict[str, Any], results: list[dict[str, Any]], image_ids: list[int]
) -> dict[str, float]:
    """AP (segm, IoU 0.5:0.95) per ground-truth category, for masks that carry a category
    (prompted runs); empty when none do or the categories do not meet."""
    typed = [
        {**r, "category_id": r["run_category"]} for r in results if r["run_category"] is not None
    ]
    if not typed:  # an automatic run: no second read of the ground truth
        return {}
    gt = class_agnostic(ground_truth, agnostic=False)
    if not {r["category_id"] for r in typed} & set(gt.getCatIds()):
        return {}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(typed)), "segm")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # IoU, recall, category
    scores = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        if (values > -1).any():
            scores[gt.cats[category_id]["name"]] = float(values[values > -1].mean())
    return scores


def threshold_curves(gt: COCO, results: list[dict[str, Any]], image_ids: list[int]) -> dict:
    """Precision and recall at mask IoU 0.5 as each score threshold rises.

    A kept mask is a hit when it overlaps some GT instance with IoU ≥ 0.5; a GT instance is
    found when some kept mask does.
    """
    best_for_dt, dt_scores = [], []
    gt_hits: list[list[int]] = []
    offset = 0
    for image_id in image_ids:
        dts = [r for r in results if r["image_id"] == image_id]
        gts = gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))
        dt_rles = [rle.as_pycocotools(r["segmentation"]) for r in dts]
        gt_rles = [gt.annToRLE(g) for g in gts]
        ious = (
            mask_utils.iou(dt_rles, gt_rles, [0] * len(gt_rles))
            if dt_rles and gt_rles
            else np.zeros((len(dts), len(gts)))
        )
        ious = np.asarray(ious).reshape(len(dts), len(gts))
        best_for_dt += list(ious.max(axis=1) if len(gts) else np.zeros(len(dts)))
        dt_scores += [(r["score"], r["stability_score"]) for r in dts]
        gt_hits += [list(np.flatnonzero(ious[:, j] >= 0.5) + offset) for j in range(len(gts))]
        offset += len(dts)
    hit = np.array(best_for_dt) >= 0.5
    scores = np.array(dt_scores).reshape(-1, 2)
    curves = {}
    for column, name in ((0, "predicted_iou"), (1, "stability_score")):
        precision, recall = [], []
        for threshold in THRESHOLDS:
            kept = scores[:, column] >= threshold
            precision.append(float(hit[kept].mean()) if kept.any() else float("nan"))
            found = sum(any(kept[i] for i in hits) for hits in gt_hits)
            recall.append(found / len(gt_hits) if gt_hits else float("nan"))
        curves[name] = {"thresholds": THRESHOLDS.tolist(), "precision": precision, "recall": recall}
    return curves


def evaluate_run(
    source: Location | str, gt: Location | str, out: Location | str | None = None
) -> dict[str, Any]:
    """COCO metrics of a run against ground truth; with ``out``, a JSON and a plot there.

    Args:
        source: the run (path, URI or ``Location``).
        gt: a COCO instances JSON whose ``file_name`` s end the run's image URIs (path, URI
            or ``Location``; paths and URIs open with the run's storage options).
        out: a folder (path, URI or ``Location``) for ``eval.json`` and ``thresholds.png``.
    """
    source = as_location(source)
    gt = as_location(gt, source.options)
    ground_truth = read_ground_truth(gt)
    gt_index = class_agnostic(ground_truth)
    results, matched = detections(source, gt_index)
    image_ids = sorted(matched)
    report = {
        "run": str(source),
        "ground_truth": str(gt),
        "images": len(image_ids),
        "gt_instances": len(gt_index.getAnnIds(imgIds=image_ids)),
        "masks": len(results),
        "metrics": coco_metrics(gt_index, results, image_ids),
        "per_category_ap": per_category_ap(ground_truth, results, image_ids),
    }
    prompted = prompted_iou(gt_index, results, matched)
    if prompted is not None:
        report["prompted"] = prompted
    if out:
        folder = as_location(out, source.options)
        report["threshold_curves"] = threshold_curves(gt_index, results, image_ids)
        payload = json.dumps(without_nan(report), indent=2).encode()
        folder.join("eval.json").write_atomic(lambda f: f.write(payload))
        plot_curves(report["threshold_curves"], folder.join("thresholds.png"))
    return report


def plot_curves(curves: dict, path: Location) -> None:
    """Precision and recall against the predicted-IoU and stability thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (name, curve) in zip(axes, curves.items(), strict=True):
        ax.plot(curve["thresholds"], curve["precision"], label="precision (IoU ≥ 0.5)")
        ax.plot(curve["thresholds"], curve["recall"], label="recall (IoU ≥ 0.5)")
        ax.set_xlabel(f"{name} threshold")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("fraction")
    figure.suptitle("choose filter thresholds: precision vs recall")
    figure.tight_layout()
    path.write_atomic(lambda f: figure.savefig(f, format="png", dpi=100))
    plt.close(figure)


def metrics_table(report: dict[str, Any]):
    """The terminal table of the 12 COCO numbers."""
    from rich.table import Table

    table = Table(title=f"autolabel eval: {report['run']}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in report["metrics"].items():
        table.add_row(name, f"{value:.3f}")
    for name, value in report.get("per_category_ap", {}).items():
        table.add_row(f"AP {name}", f"{value:.3f}")
    if "prompted" in report:
        prompted = report["prompted"]
        label = f"prompts: mean IoU with their annotation ({prompted['prompts']} prompts)"
        table.add_row(label, f"{prompted['mean_iou']:.3f}")
    return table


def metrics_caption(report: dict[str, Any]) -> str:
    """One line saying what was compared."""
    return (
        f"{report['images']} images, {report['gt_instances']} ground-truth instances, "
        f"{report['masks']} masks (class-agnostic, segm)"
    )
