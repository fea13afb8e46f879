"""Look at the labels: coloured masks with outlines drawn over the original images."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core.imageio import load_image
from pipeline.core.storage import Location, write_file_atomic
from pipeline.results.dataset import Run, decode_mask, open_run
from pipeline.results.filters import MaskFilter

ALPHA = 0.45


def palette(count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct bright colours (uint8 RGB), the same for the same seed."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(count) * 0.618033988749895 + rng.random()) % 1.0
    import colorsys

    return np.array(
        [[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)] for h in hues], dtype=np.uint8
    ).reshape(-1, 3)


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (inside pixels with an outside 4-neighbour)."""
    padded = np.pad(mask.astype(bool), 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask.astype(bool) & ~inner


def draw_overlay(pixels: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """Blend each mask in its own colour over ``pixels`` and draw its outline in white.

    Larger masks are drawn first so small ones stay visible on top.
    """
    canvas = pixels.astype(np.float32).copy()
    colours = palette(len(masks))
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for i in order:
        region = masks[i].astype(bool)
        canvas[region] = (1 - ALPHA) * canvas[region] + ALPHA * colours[i]
    for i in order:
        canvas[outline(masks[i])] = (255, 255, 255)
    return canvas.clip(0, 255).astype(np.uint8)


def render_image(run: Run, image: dict[str, Any], mask_filter: MaskFilter) -> Image.Image:
    """One image's overlay, read at the resolution its masks were made at."""
    settings = run.manifest.get("config", {}).get("image", {})
    decoded = load_image(
        run.location.at(image["image_uri"]),
        max_short_side=settings.get("max_short_side", 0),
        max_pixels=settings.get("max_pixels", 0),
    )
    masks = [decode_mask(row) for row in image_mask_rows(run, image, mask_filter)]
    return Image.fromarray(draw_overlay(decoded.pixels, masks))


def image_mask_rows(run: Run, image: dict[str, Any], mask_filter: MaskFilter) -> list[dict]:
    """The mask rows of one image that pass ``mask_filter``, in generator order.

    Args:
        run: the run.
        image: the image's row (``image_id``; its ``shard``, when given, is the only file read).
        mask_filter: which masks to keep.
    """
    expression = with_image(mask_filter, image["image_id"])
    if image.get("shard"):
        table = run.shard_masks(image["shard"], filter=expression)
    else:
        table = run.masks.to_table(filter=expression)
    rows = mask_filter.apply_in_memory(table).to_pylist()
    return sorted(rows, key=lambda row: row["mask_index"])


def with_image(mask_filter: MaskFilter, image_id: int):
    """The filter's pushdown expression restricted to one image."""
    from pyarrow import dataset as ds

    expression = ds.field("image_id") == image_id
    extra = mask_filter.expression()
    return expression if extra is None else expression & extra


def show(
    source: Location,
    out: str,
    image_ids: list[int] | None = None,
    sample: int | None = None,
    seed: int = 0,
    mask_filter: MaskFilter | None = None,
) -> list[Path]:
    """Write overlay PNGs for chosen images, or for a random sample of ok images.

    Args:
        source: the run (its options also open its images).
        out: local folder for the PNGs (``<image_id>.png``).
        image_ids: images to draw; unknown ids are an error.
        sample: draw this many ok images chosen at random (with ``seed``).
        mask_filter: draw only the masks that pass it.
    """
    run = open_run(source)
    mask_filter = mask_filter or MaskFilter()
    table = run.images.to_table(columns=["image_id", "image_uri", "status"])
    images = {row["image_id"]: row for row in table.to_pylist() if row["status"] == "ok"}
    if image_ids:
        missing = [i for i in image_ids if i not in images]
        if missing:
            raise ValueError(f"no ok image with id {missing[0]} in {source}")
        chosen = image_ids
    else:
        ids = sorted(images)
        chosen = random.Random(seed).sample(ids, min(sample or 8, len(ids)))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for image_id in chosen:
        path = folder / f"{image_id}.png"
        picture = render_image(run, images[image_id], mask_filter)
        write_file_atomic(path, lambda f, picture=picture: picture.save(f, format="PNG"))
        written.append(path)
    return written
