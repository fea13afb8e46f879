"""The README's box-prompted figure: `make demo`'s run from the scenes' boxes, masks and boxes.

    make demo
    .venv/bin/python docs/prompted_figure.py demo-output-boxes

Writes ``docs/prompted_overlays.png``: the first eight scenes of the prompted run, each mask
drawn as ``autolabel show`` draws it, with the box that prompted it in white, and the
mask's IoU with its ground-truth object (the boxes are the scenes' own annotations) under it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from docs.figures import caption, contact_sheet, first_scenes, overlay_tile  # noqa: E402
from pipeline.core import rle  # noqa: E402


def scene_tile(image: dict, masks: list[dict], truth: dict[str, np.ndarray]) -> Image.Image:
    """One scene: its masks over it, each prompt's box, and the masks' mean IoU."""
    tile, decoded = overlay_tile(image, masks)
    draw = ImageDraw.Draw(tile)
    ious = []
    for row, mask in zip(masks, decoded, strict=True):
        x, y, w, h = row["prompt_box"]
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(255, 220, 0))
        want = truth[row["source_id"]]
        ious.append((mask & want).sum() / max((mask | want).sum(), 1))
    boxes = f"{len(masks)} box" + ("es" if len(masks) != 1 else "")
    caption(tile, f"{boxes}, mean IoU {np.mean(ious):.2f}" if ious else "no boxes")
    return tile


def main(run_path: str, gt: str = "samples/scenes/annotations.json", count: int = 8) -> None:
    """Draw ``count`` scenes of the prompted run at ``run_path`` into the figure."""
    annotations = json.loads((ROOT / gt).read_text())["annotations"]
    truth = {
        str(a["id"]): rle.decode(rle.as_pycocotools(a["segmentation"])).astype(bool)
        for a in annotations
    }
    tiles = [scene_tile(image, masks, truth) for image, masks in first_scenes(run_path, int(count))]
    out = ROOT / "docs" / "prompted_overlays.png"
    contact_sheet(tiles).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
