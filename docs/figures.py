"""What the README's overlay figures share: a run's first scenes with their masks, each drawn
as ``autolabel show`` draws it, a caption under a tile, and the tiles on one sheet."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.imageio import load_image  # noqa: E402
from pipeline.core.storage import as_location  # noqa: E402
from pipeline.results.dataset import decode_mask, open_run  # noqa: E402
from pipeline.results.overlays import draw_overlay  # noqa: E402


def first_scenes(run_path: str, count: int) -> list[tuple[dict, list[dict]]]:
    """The run's first ``count`` images by URI, each with its mask rows."""
    run = open_run(run_path)
    images = sorted(run.images.to_table().to_pylist(), key=lambda r: r["image_uri"])[:count]
    rows = run.masks.to_table().to_pylist()
    return [(image, [r for r in rows if r["image_id"] == image["image_id"]]) for image in images]


def overlay_tile(image: dict, masks: list[dict]) -> tuple[Image.Image, list[np.ndarray]]:
    """The image with its masks drawn over it, and the masks decoded (boolean arrays)."""
    pixels = load_image(as_location(image["image_uri"])).pixels
    decoded = [decode_mask(row["segmentation"]).astype(bool) for row in masks]
    return Image.fromarray(draw_overlay(pixels, decoded)), decoded


def caption(tile: Image.Image, label: str) -> None:
    """Write ``label`` in white on a black strip along the tile's bottom edge."""
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, tile.height - 14, tile.width, tile.height], fill=(0, 0, 0))
    draw.text((4, tile.height - 13), label, fill=(255, 255, 255))


def contact_sheet(tiles: list[Image.Image], columns: int = 4) -> Image.Image:
    """Square tiles of one size in rows of ``columns``, 2 px of white between them."""
    side = tiles[0].width
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * (side + 2) - 2, rows * (side + 2) - 2), (255, 255, 255))
    for index, tile in enumerate(tiles):
        sheet.paste(tile, ((index % columns) * (side + 2), (index // columns) * (side + 2)))
    return sheet
