"""The README's label-map figure: one demo scene beside its exported 16-bit instance map.

    make demo && .venv/bin/autolabel export demo-output --format png --out demo-maps
    .venv/bin/python docs/label_map_figure.py demo-maps

Writes ``docs/label_map.png``: the scene, and its map in false colour (each value 1..N its own
colour, 0 black; the file itself is greyscale, its values too small to see), with the map's
values and the ``mask_index`` each stands for, read from the JSON beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def false_colour(labels: np.ndarray) -> np.ndarray:
    """Values 1..N as distinct colours (golden-angle hues), 0 as black."""
    import colorsys

    rgb = np.zeros((*labels.shape, 3), np.uint8)
    for value in np.unique(labels[labels > 0]):
        hue = (int(value) * 0.381966) % 1.0
        rgb[labels == value] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.95)]
    return rgb


def main(maps: str, name: str = "scene_90210_00001") -> None:
    maps = Path(maps)
    labels = np.asarray(Image.open(maps / f"{name}.png"))
    legend = json.loads((maps / f"{name}.json").read_text())["mask_index"]
    scene = Image.open(ROOT / "samples" / "scenes" / "images" / f"{name}.png").convert("RGB")
    coloured = Image.fromarray(false_colour(labels))
    width, height = scene.size
    figure = Image.new("RGB", (2 * width + 12, height + 40), "white")
    figure.paste(scene, (0, 0))
    figure.paste(coloured.resize(scene.size, Image.NEAREST), (width + 12, 0))
    text = f"{name}.png ({labels.dtype}): " + ", ".join(
        f"{value}=mask {index}" for value, index in legend.items()
    )
    ImageDraw.Draw(figure).text((4, height + 12), text, fill="black")
    figure.save(ROOT / "docs" / "label_map.png")
    values = [int(v) for v in np.unique(labels)]
    print(f"wrote docs/label_map.png: {len(legend)} masks, values {values}")


if __name__ == "__main__":
    main(*sys.argv[1:])
