"""Where the automatic generator loses small objects (issue 21's "AR small").

For every ground-truth object of unseen synthetic scenes, follows it through sam2's automatic
pipeline as the default preset runs it, and reports the first step that loses it:

- ``no point``: no point of the 32×32 grid falls on it;
- ``model``: none of the masks its points give (three each) has IoU ≥ 0.5 with it;
- ``iou head``: the best of those masks has a predicted IoU at or under ``pred_iou_thresh``;
- ``stability``: it passes that, but its stability score is under ``stability_score_thresh``;
- ``nms``: it passes both, but the generator's final masks have none with IoU ≥ 0.5 with it;
- ``found``: one of the final masks has IoU ≥ 0.5 with it.

Objects are binned as COCO does (small: area < 32², medium: < 96², large). Writes
``<out>.json`` and ``<out>.md``.

Usage: ``python benchmarks/small_objects.py [--images 48] [--seed 5150] [--out PATH]``
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.core import rle  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.model.factory import make_generator  # noqa: E402
from pipeline.model.records import fix_feature_sizes  # noqa: E402
from pipeline.model.registry import build_model, resolve_model  # noqa: E402
from pipeline.synthetic.scenes import make_scene  # noqa: E402

STEPS = ("no point", "model", "iou head", "stability", "nms", "found")


def size_bin(area: int) -> str:
    """COCO's object size bins."""
    return "small" if area < 32**2 else "medium" if area < 96**2 else "large"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def candidates(predictor, points: np.ndarray, amg) -> list[tuple[np.ndarray, float, float]]:
    """Each point's three masks as the generator sees them: (mask, predicted IoU, stability)."""
    from sam2.utils.amg import calculate_stability_score

    found = []
    for x, y in points:
        masks, scores, _ = predictor.predict(
            point_coords=np.array([[x, y]], np.float32),
            point_labels=np.array([1]),
            multimask_output=True,
            return_logits=True,
        )
        logits = torch.from_numpy(masks)
        stability = calculate_stability_score(
            logits, amg.mask_threshold, amg.stability_score_offset
        ).numpy()
        for k in range(len(scores)):
            found.append((masks[k] > amg.mask_threshold, float(scores[k]), float(stability[k])))
    return found


def follow(obj: np.ndarray, grid: np.ndarray, predictor, final: list[np.ndarray], amg) -> str:
    """The first step of the generator that loses ``obj`` (see the module docstring)."""
    on = [(x, y) for x, y in grid if obj[int(y), int(x)]]
    if not on:
        return "no point"
    masks = candidates(predictor, np.array(on), amg)
    best = max(masks, key=lambda m: iou(m[0], obj))
    if iou(best[0], obj) < 0.5:
        return "model"
    good = [m for m in masks if iou(m[0], obj) >= 0.5]
    if all(score <= amg.pred_iou_thresh for _, score, _ in good):
        return "iou head"
    passing = [m for m in good if m[1] > amg.pred_iou_thresh]
    if all(stability < amg.stability_score_thresh for _, _, stability in passing):
        return "stability"
    return "found" if any(iou(mask, obj) >= 0.5 for mask in final) else "nms"


def main(argv: list[str] | None = None) -> int:
    """Follow every object of ``--images`` unseen scenes; print and write the table."""
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--seed", type=int, default=5150)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default="sam2-tiny-synthetic")
    parser.add_argument("--checkpoint", help="weights for --model's config (default: shipped)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/small_objects"))
    args = parser.parse_args(argv)

    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from sam2.utils.amg import build_all_layer_point_grids

    job = load_config("default", [])
    amg = job.amg
    model = build_model(resolve_model(args.model, None, args.checkpoint), "cpu")
    generator = make_generator(model, amg, job.generator, "float32", "cpu")
    predictor = SAM2ImagePredictor(model)
    fix_feature_sizes(predictor)
    grid = build_all_layer_point_grids(amg.points_per_side, 0, 1)[0] * args.size
    tally: dict[str, Counter] = {name: Counter() for name in ("small", "medium", "large")}
    for index in range(args.images):
        scene = make_scene(args.seed * 1_000_003 + index, args.size, 1.0)
        final = [
            rle.decode(r["segmentation"]).astype(bool) for r in generator.generate(scene.image)
        ]
        predictor.set_image(scene.image)
        for obj in scene.masks:
            tally[size_bin(int(obj.sum()))][follow(obj, grid, predictor, final, amg)] += 1
        print(f"scene {index + 1}/{args.images}", flush=True)
    rows = ["| objects | count | " + " | ".join(STEPS) + " |", "|---|---:|" + "---:|" * len(STEPS)]
    for name, counts in tally.items():
        total = sum(counts.values())
        shares = [f"{counts[s] / total:.2f}" if total else "—" for s in STEPS]
        rows.append(f"| {name} | {total} | " + " | ".join(shares) + " |")
    table = "\n".join(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "images": args.images,
        "seed": args.seed,
        "model": args.model,
        "checkpoint": args.checkpoint,
        "tally": {k: dict(v) for k, v in tally.items()},
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
