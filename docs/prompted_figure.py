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

from pipeline.core import rle  # noqa: E402
from pipeline.core.imageio import load_image  # noqa: E402
from pipeline.core.storage import as_location  # noqa: E402
from pipeline.results.dataset import decode_mask, open_run  # noqa: E402
from pipeline.results.overlays import draw_overlay  # noqa: E402


def scene_tile(image: dict, masks: list[dict], truth: dict[str, np.ndarray]) -> Image.Image:
    """One scene: its masks over it, each prompt's box, and the masks' mean IoU."""
    pixels = load_image(as_location(image["image_uri"])).pixels
    decoded = [decode_mask(row["segmentation"]).astype(bool) for row in masks]
    tile = Image.fromarray(draw_overlay(pixels, decoded))
    draw = ImageDraw.Draw(tile)
    ious = []
    for row, mask in zip(masks, decoded, strict=True):
        x, y, w, h = row["prompt_box"]
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(255, 220, 0))
        want = truth[row["source_id"]]
        ious.append((mask & want).sum() / max((mask | want).sum(), 1))
    boxes = f"{len(masks)} box" + ("es" if len(masks) != 1 else "")
    label = f"{boxes}, mean IoU {np.mean(ious):.2f}" if ious else "no boxes"
    draw.rectangle([0, tile.height - 14, tile.width, tile.height], fill=(0, 0, 0))
    draw.text((4, tile.height - 13), label, fill=(255, 255, 255))
    return tile


def main(run_path: str, gt: str = "samples/scenes/annotations.json", count: int = 8) -> None:
    """Draw ``count`` scenes of the prompted run at ``run_path`` into the figure."""
    run = open_run(run_path)
    annotations = json.loads((ROOT / gt).read_text())["annotations"]
    truth = {
        str(a["id"]): rle.decode(rle.as_pycocotools(a["segmentation"])).astype(bool)
        for a in annotations
    }
    images = sorted(run.images.to_table().to_pylist(), key=lambda r: r["image_uri"])[:count]
    rows = run.masks.to_table().to_pylist()
    tiles = [
        scene_tile(image, [r for r in rows if r["image_id"] == image["image_id"]], truth)
        for image in images
    ]
    out = ROOT / "docs" / "prompted_overlays.png"
    contact_sheet(tiles).save(out)
    print(f"wrote {out}")


def contact_sheet(tiles: list[Image.Image], columns: int = 4) -> Image.Image:
    """Square tiles of one size in rows of ``columns``, 2 px of white between them."""
    side = tiles[0].width
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * (side + 2) - 2, rows * (side + 2) - 2), (255, 255, 255))
    for index, tile in enumerate(tiles):
        sheet.paste(tile, ((index % columns) * (side + 2), (index // columns) * (side + 2)))
    return sheet


if __name__ == "__main__":
    main(*sys.argv[1:])
