"""Procedural scenes with exact instance masks: the offline stand-in for labelled photos.

Each scene is a background (flat, gradient or textured) with shapes painted over it in order:
ellipses, rectangles, polygons, thin bars, concave stars and rings, each filled flat, with a
gradient or with a texture. Later shapes occlude earlier ones; an instance's mask is what
stays visible. ``difficulty`` (0 to 1) raises the number of shapes, the share of textures and
thin or concave shapes, and lowers the contrast: the training curriculum walks it up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.core import rle
from pipeline.core.storage import Location, as_location

SHAPES = ("ellipse", "rectangle", "polygon", "bar", "star", "ring")
MIN_VISIBLE_AREA = 24


@dataclass
class Scene:
    """An RGB image and the visible mask of each instance on it."""

    image: np.ndarray  # (h, w, 3) uint8
    masks: list[np.ndarray]  # (h, w) bool each, disjoint
    shapes: list[str]


def texture(rng: np.random.Generator, size: tuple[int, int], base: np.ndarray) -> np.ndarray:
    """A textured (h, w, 3) float fill around the colour ``base``: stripes, checks or noise."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(3)
    other = np.clip(base + rng.uniform(-70, 70, 3), 0, 255)
    if kind == 0:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 14)
        wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period) > 0
    elif kind == 1:
        cell = int(rng.integers(3, 10))
        wave = ((x // cell + y // cell) % 2).astype(bool)
    else:
        wave = rng.random((h, w)) > 0.5
    return np.where(wave[..., None], base, other).astype(np.float32)


def fill(rng: np.random.Generator, size: tuple[int, int], base: np.ndarray, textured: float):
    """A flat, gradient or (with probability ``textured``) textured fill of colour ``base``."""
    h, w = size
    if rng.random() < textured:
        return texture(rng, size, base)
    if rng.random() < 0.5:
        return np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (x * np.cos(angle) + y * np.sin(angle)) / max(h, w)
    delta = rng.uniform(-60, 60, 3)
    return np.clip(base + ramp[..., None] * delta, 0, 255).astype(np.float32)


def shape_mask(rng: np.random.Generator, size: tuple[int, int], kind: str, scale: float):
    """One shape's full (unoccluded) mask."""
    h, w = size
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    r = rng.uniform(0.06, 0.25) * min(h, w) * scale
    if kind == "ellipse":
        rx, ry = r * rng.uniform(0.5, 1.5), r * rng.uniform(0.5, 1.5)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    elif kind == "rectangle":
        rx, ry = r * rng.uniform(0.5, 1.5), r * rng.uniform(0.5, 1.5)
        draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    elif kind == "polygon":
        count = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        radii = r * rng.uniform(0.6, 1.3, count)
        draw.polygon(
            list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles), strict=True)), fill=1
        )
    elif kind == "bar":
        angle, length = rng.uniform(0, np.pi), r * rng.uniform(2, 4)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=1, width=int(rng.integers(3, 7)))
    elif kind == "star":
        points = int(rng.integers(4, 7))
        angles = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False) + rng.uniform(0, 1)
        radii = np.where(np.arange(2 * points) % 2 == 0, r * 1.2, r * 0.45)
        draw.polygon(
            list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles), strict=True)), fill=1
        )
    else:  # ring: a shape with a hole
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        inner = r * rng.uniform(0.35, 0.6)
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    return np.asarray(canvas, dtype=bool)


def make_scene(seed: int, size: int = 256, difficulty: float = 1.0, min_shapes: int = 1) -> Scene:
    """One scene; the same arguments always give the same scene.

    Args:
        seed: random seed of this scene.
        size: image side in pixels (square).
        difficulty: 0 (a few large flat shapes on a plain background) to 1 (many shapes,
            textures, thin and concave shapes, low contrast).
        min_shapes: paint at least this many shapes (some may end up hidden).
    """
    rng = np.random.default_rng(seed)
    hw = (size, size)
    background_colour = rng.uniform(0, 255, 3)
    canvas = fill(rng, hw, background_colour, textured=0.5 * difficulty)
    count = max(min_shapes, int(rng.integers(1, 3 + round(7 * difficulty))))
    hard_shapes = 0.5 * difficulty
    contrast = 120 - 70 * difficulty
    owner = np.full(hw, -1, dtype=np.int32)
    kinds = []
    for index in range(count):
        kind = (
            SHAPES[int(rng.integers(3, 6))]
            if rng.random() < hard_shapes
            else SHAPES[int(rng.integers(0, 3))]
        )
        mask = shape_mask(rng, hw, kind, scale=1.6 - 0.8 * difficulty)
        colour = distinct_colour(rng, background_colour, contrast)
        canvas[mask] = fill(rng, hw, colour, textured=0.6 * difficulty)[mask]
        owner[mask] = index
        kinds.append(kind)
    canvas += rng.normal(0, 2 + 4 * difficulty, canvas.shape)  # sensor noise
    masks, shapes = [], []
    for index, kind in enumerate(kinds):
        visible = owner == index
        if visible.sum() >= MIN_VISIBLE_AREA:
            masks.append(visible)
            shapes.append(kind)
    return Scene(np.clip(canvas, 0, 255).astype(np.uint8), masks, shapes)


def distinct_colour(rng: np.random.Generator, background: np.ndarray, contrast: float):
    """A colour at least ``contrast`` away (L2) from the background colour."""
    for _ in range(50):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - background) >= contrast:
            return colour
    return 255.0 - background


def write_dataset(
    out: Location | str,
    count: int,
    seed: int = 0,
    size: int = 256,
    difficulty: float = 1.0,
    options: dict | None = None,
) -> dict[str, int]:
    """Write ``count`` scenes as PNGs plus ``annotations.json`` (COCO instances, RLE masks).

    Scene ``i`` uses seed ``seed * 1_000_003 + i``, so two seeds give disjoint scene sets.

    Args:
        out: folder to create (path, URI or ``Location``; images go to ``out/images``).
        count: number of scenes.
        seed: dataset seed.
        size: image side in pixels.
        difficulty: see ``make_scene``.
        options: fsspec options for a URI ``out``.
    """
    folder = as_location(out, options)
    images, annotations = [], []
    for i in range(count):
        scene = make_scene(seed * 1_000_003 + i, size, difficulty)
        name = f"scene_{seed}_{i:05d}.png"
        picture = Image.fromarray(scene.image)
        folder.join("images", name).write_atomic(lambda f, p=picture: p.save(f, format="PNG"))
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for mask, kind in zip(scene.masks, scene.shapes, strict=True):
            segmentation = rle.encode_mask(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "segmentation": segmentation,
                    "area": rle.area(segmentation),
                    "bbox": rle.bbox(segmentation),
                    "iscrowd": 0,
                    "shape": kind,
                }
            )
    coco = {
        "info": {"description": f"autolabel synthetic scenes (seed {seed})"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }
    payload = json.dumps(coco).encode()
    folder.join("annotations.json").write_atomic(lambda f: f.write(payload))
    return {"images": len(images), "annotations": len(annotations)}
