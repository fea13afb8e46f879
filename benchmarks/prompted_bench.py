"""Benchmark: labelling from prompts (boxes, clicks) against a plain SAM2ImagePredictor loop.

On synthetic scenes whose exact masks are known, each object is prompted by its tight box
(with small boxes zoomed, as ``run --prompts`` does by default, and without), by its box
jittered by SAM's rule (noise of std 10 % of the side, at most 20 px) and by one click on it.
``PromptedGenerator`` (what ``autolabel run --prompts`` runs: image encoded once, prompts
decoded in batches) is timed against the loop users write (``set_image`` once, then
``predict`` per prompt, never zoomed), both on the same images and model, and the masks' IoU
with the objects is reported per prompt kind. Writes ``<out>.json`` and ``<out>.md``.

Example::

    python benchmarks/prompted_bench.py --images 16 --out benchmarks/results/cpu_prompted_256
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.core import rle  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.core.prompt import Prompt  # noqa: E402
from pipeline.model.prompted import PromptedGenerator  # noqa: E402
from pipeline.model.records import fix_feature_sizes  # noqa: E402
from pipeline.model.registry import build_model, resolve_model  # noqa: E402
from pipeline.synthetic.scenes import make_scene  # noqa: E402

HELD_OUT = 8_080_808  # scene seeds far from anything the training stream drew


def object_prompts(scene, rng: np.random.Generator) -> dict[str, list[Prompt]]:
    """Each object's tight box, its box jittered by SAM's rule, and one click on a random
    pixel of it."""
    prompts: dict[str, list[Prompt]] = {"box": [], "jittered box": [], "click": []}
    size = scene.image.shape[0]
    for mask in scene.masks:
        ys, xs = np.nonzero(mask)
        box = (float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1))
        prompts["box"].append(Prompt(box=box))
        corners = np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]])
        sides = np.array([box[2], box[3]] * 2)
        corners = np.clip(corners + np.clip(rng.normal(0, 0.1 * sides), -20, 20), 0, size)
        x0, y0, x1, y1 = (float(v) for v in corners)
        prompts["jittered box"].append(Prompt(box=(x0, y0, max(x1 - x0, 1.0), max(y1 - y0, 1.0))))
        pick = int(rng.integers(len(xs)))
        prompts["click"].append(
            Prompt(points=((float(xs[pick]), float(ys[pick])),), point_labels=(1,))
        )
    return prompts


def iou(mask: np.ndarray, truth: np.ndarray) -> float:
    union = (mask | truth).sum()
    return float((mask & truth).sum() / union) if union else 0.0


def ours(generator, scenes, prompts) -> tuple[float, list[list]]:
    """Seconds for all images, and each image's results."""
    start = time.perf_counter()
    results = [generator.generate(s.image, p) for s, p in zip(scenes, prompts, strict=True)]
    return time.perf_counter() - start, results


def plain_loop(predictor, scenes, prompts) -> float:
    """Seconds for the loop users write: set_image, then predict once per prompt."""
    start = time.perf_counter()
    with torch.inference_mode():
        for scene, own in zip(scenes, prompts, strict=True):
            predictor.set_image(scene.image)
            for prompt in own:
                if prompt.box is not None:
                    x, y, w, h = prompt.box
                    predictor.predict(box=np.array([x, y, x + w, y + h]), multimask_output=False)
                else:
                    predictor.predict(
                        point_coords=np.array(prompt.points),
                        point_labels=np.array(prompt.point_labels),
                        multimask_output=True,
                    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its table, write JSON and markdown."""
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sam2-tiny-synthetic")
    parser.add_argument("--checkpoint", help="other weights for the model (default: its own)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64, help="prompts decoded together")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/latest_prompted"))
    args = parser.parse_args(argv)
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model = build_model(resolve_model(args.model, None, args.checkpoint), "cpu")
    scenes = [make_scene(HELD_OUT + i, args.size, 1.0) for i in range(args.images)]
    rng = np.random.default_rng(0)
    drawn = [object_prompts(scene, rng) for scene in scenes]
    job = load_config(None, [])
    unzoomed = load_config(None, ["prompts.zoom_below=0"]).prompts
    zoomed = PromptedGenerator(model, job.amg, batch=args.batch, zoom=job.prompts)
    plain = PromptedGenerator(model, job.amg, batch=args.batch, zoom=unzoomed)
    predictor = SAM2ImagePredictor(model)
    fix_feature_sizes(predictor)
    rows = {}
    kinds = (
        ("tight box", "box", zoomed),
        ("tight box, unzoomed", "box", plain),
        ("jittered box", "jittered box", zoomed),
        ("jittered box, unzoomed", "jittered box", plain),
        ("one click", "click", zoomed),
    )
    for kind, drawn_kind, generator in kinds:
        prompts = [own[drawn_kind] for own in drawn]
        count = sum(len(p) for p in prompts)
        ours(generator, scenes[:1], prompts[:1])  # warm-up
        seconds, results = ours(generator, scenes, prompts)
        loop = plain_loop(predictor, scenes, prompts)
        ious = [
            iou(rle.decode(r["segmentation"]).astype(bool), truth) if isinstance(r, dict) else 0.0
            for scene, own in zip(scenes, results, strict=True)
            for r, truth in zip(own, scene.masks, strict=True)
        ]
        rows[kind] = {
            "prompts": count,
            "ours_prompts_per_s": count / seconds,
            "loop_prompts_per_s": count / loop,
            "speed_up": loop / seconds,
            "mean_iou": float(np.mean(ious)),
        }
    result = {
        "setup": {
            "model": args.model,
            "checkpoint": args.checkpoint,
            "zoom": {
                "zoom_below": job.prompts.zoom_below,
                "zoom_context": job.prompts.zoom_context,
            },
            "images": args.images,
            "size": args.size,
            "batch": args.batch,
        },
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "rows": rows,
    }
    lines = [
        "| prompt | prompts | ours prompts/s | SAM2ImagePredictor loop prompts/s | speed-up "
        "| mean IoU with the object |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, row in rows.items():
        lines.append(
            f"| {kind} | {row['prompts']} | {row['ours_prompts_per_s']:.1f} | "
            f"{row['loop_prompts_per_s']:.1f} | {row['speed_up']:.2f}x | {row['mean_iou']:.3f} |"
        )
    table = (
        "\n".join(lines) + f"\n\n{args.model}{f' ({args.checkpoint})' if args.checkpoint else ''}, "
        f"{args.images} held-out {args.size}-px scenes; {result['machine']}\n"
    )
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
