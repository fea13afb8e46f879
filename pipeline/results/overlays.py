"""Look at the labels: coloured masks with outlines drawn over the original images."""

from __future__ import annotations

import io
import random
import textwrap
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipeline.core.errors import UserError
from pipeline.core.imageio import ImageReadError, load_image
from pipeline.core.storage import Location, as_location
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


def placeholder(reason: str, side: int) -> bytes:
    """A grey square PNG of ``side`` pixels that shows ``reason`` (an image that cannot be
    read), so the page shows why instead of a broken picture."""
    picture = Image.new("RGB", (side, side), (70, 70, 70))
    draw = ImageDraw.Draw(picture)
    draw.text((10, 10), "cannot show this image:", fill=(255, 210, 120))
    lines = textwrap.wrap(reason, width=max(12, side // 7))[: max(1, side // 14 - 3)]
    draw.multiline_text((10, 30), "\n".join(lines), fill=(235, 235, 235), spacing=3)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


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


class OverlayError(UserError, ValueError):
    """Overlays that cannot be drawn as asked (an unknown image id); one line for the user."""


@dataclass
class Overlays:
    """What ``show`` did.

    Attributes:
        written: the overlay PNGs written (URIs or local paths, in the order drawn).
        failed: image URI → why its overlay could not be drawn (an image gone missing).
    """

    written: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def show(
    source: Location,
    out: Location | str,
    image_ids: list[int] | None = None,
    sample: int | None = None,
    seed: int = 0,
    mask_filter: MaskFilter | None = None,
) -> Overlays:
    """Write overlay PNGs for chosen images, or for a random sample of ok images; an image
    that cannot be read is reported in ``failed`` and the others are drawn.

    Args:
        source: the run (its options also open its images).
        out: folder (path, URI or ``Location``) for the PNGs (``<image_id>.png``).
        image_ids: images to draw; an id that is not an ok image of the run is an error.
        sample: draw this many ok images chosen at random (with ``seed``).
        seed: the random sample's seed.
        mask_filter: draw only the masks that pass it.

    Raises:
        OverlayError: an id of ``image_ids`` is not an ok image of the run.
    """
    run = open_run(source)
    mask_filter = mask_filter or MaskFilter()
    table = run.images.to_table(columns=["image_id", "image_uri", "status"])
    rows = {row["image_id"]: row for row in table.to_pylist()}
    images = {key: row for key, row in rows.items() if row["status"] == "ok"}
    if image_ids:
        for image_id in image_ids:
            check_drawable(image_id, rows, source)
        chosen = image_ids
    else:
        ids = sorted(images)
        chosen = random.Random(seed).sample(ids, min(sample or 8, len(ids)))
    folder = as_location(out, source.options)
    done = Overlays()
    for image_id in chosen:
        try:
            picture = render_image(run, images[image_id], mask_filter)
        except ImageReadError as error:
            done.failed[images[image_id]["image_uri"]] = str(error)
            continue
        target = folder.join(f"{image_id}.png")
        target.write_atomic(lambda f, picture=picture: picture.save(f, format="PNG"))
        done.written.append(target.uri)
    return done


def check_drawable(image_id: int, rows: dict[int, dict], source: Location) -> None:
    """Raise ``OverlayError`` unless ``image_id`` is an ok image of the run."""
    if image_id not in rows:
        known = f"its ids run from {min(rows)} to {max(rows)}" if rows else "it has no images"
        raise OverlayError(f"no image with id {image_id} in {source} ({known})")
    if rows[image_id]["status"] != "ok":
        raise OverlayError(
            f"image {image_id} ({rows[image_id]['image_uri']}) has no masks to draw: its "
            "status is error (autolabel view or the images table say why)"
        )
