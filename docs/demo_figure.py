"""The README's first figure: `make demo`'s automatic run, each scene's masks over it.

    make demo
    .venv/bin/python docs/demo_figure.py demo-output

Writes ``docs/demo_overlays.png``: the first eight scenes of the run (by file name), each mask
drawn as ``autolabel show`` draws it, with the scene's mask count under it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from docs.prompted_figure import contact_sheet  # noqa: E402
from pipeline.core.imageio import load_image  # noqa: E402
from pipeline.core.storage import as_location  # noqa: E402
from pipeline.results.dataset import decode_mask, open_run  # noqa: E402
from pipeline.results.overlays import draw_overlay  # noqa: E402


def scene_tile(image: dict, masks: list[dict]) -> Image.Image:
    """One scene with its masks over it and their count."""
    pixels = load_image(as_location(image["image_uri"])).pixels
    decoded = [decode_mask(row["segmentation"]).astype(bool) for row in masks]
    tile = Image.fromarray(draw_overlay(pixels, decoded))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, tile.height - 14, tile.width, tile.height], fill=(0, 0, 0))
    draw.text((4, tile.height - 13), f"{len(masks)} masks", fill=(255, 255, 255))
    return tile


def main(run_path: str, count: int = 8) -> None:
    """Draw ``count`` scenes of the run at ``run_path`` into the figure."""
    run = open_run(run_path)
    images = sorted(run.images.to_table().to_pylist(), key=lambda r: r["image_uri"])[:count]
    rows = run.masks.to_table().to_pylist()
    tiles = [
        scene_tile(image, [r for r in rows if r["image_id"] == image["image_id"]])
        for image in images
    ]
    out = ROOT / "docs" / "demo_overlays.png"
    contact_sheet(tiles).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
