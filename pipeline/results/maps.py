"""Masks as pictures: instance label maps (``export --format png``) and cut-outs
(``export --format cutouts``).

Label maps follow the convention of semantic/instance segmentation trainers: one 16-bit PNG
per image at the masks' resolution, 0 for background and ``1..N`` for the image's kept masks
in ``mask_index`` order; where masks overlap, the one with the higher predicted IoU wins (it is
painted last). ``<name>.json`` beside each map maps every value back to its ``mask_index``;
prompted runs also get ``<name>.categories.png`` (each pixel the ``category_id`` of the mask
that owns it, 0 for background and for masks without a category).

Cut-outs are one RGBA PNG per kept mask, the image cropped to the mask's bounding box with the
pixels outside the mask transparent: ``<name>.<mask_index>.png``.

``<name>`` is the image's path below the images' common folder without its extension (the
full file name where two images would share it), so an image's files are found from its URI.
Both stream shard by shard, here or as Ray tasks.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core import rle
from pipeline.core.errors import OperationError
from pipeline.core.executor import ShardPool
from pipeline.core.guard import OutputConflictError, check_apart
from pipeline.core.imageio import ImageReadError, load_image
from pipeline.core.storage import Location
from pipeline.results.dataset import Run, open_source_run
from pipeline.results.export import common_root, image_masks_of_shard, ok_images
from pipeline.results.filters import MaskFilter


class MapError(OperationError):
    """An image's masks do not fit a 16-bit map; one line for the user (exit 1)."""


OVERLAP_RULE = "where masks overlap, the higher predicted_iou wins (ties: the higher mask_index)"
MAX_LABEL = np.iinfo(np.uint16).max


def image_names(images: list[dict[str, Any]]) -> dict[int, str]:
    """Each image's output name: its path below the common folder without the extension, or
    with it where two images would otherwise share a name (``a.jpg`` and ``a.png``)."""
    root = common_root([row["image_uri"] for row in images])
    relative = {row["image_id"]: row["image_uri"][len(root) :] for row in images}
    stems = {image_id: posixpath.splitext(path)[0] for image_id, path in relative.items()}
    taken: dict[str, int] = {}
    for stem in stems.values():
        taken[stem] = taken.get(stem, 0) + 1
    return {
        image_id: stems[image_id] if taken[stems[image_id]] == 1 else path
        for image_id, path in relative.items()
    }


def png_bytes(array: np.ndarray) -> bytes:
    """A PNG of a 2-d uint16 (16-bit grey), 2-d uint8 or (h, w, 4) uint8 (RGBA) array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def label_maps(
    image: dict[str, Any], rows: list[dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """One image's instance map, its category map (None when no mask has a category) and
    the JSON that maps the values back to the masks.

    Args:
        image: the image row (``width``/``height``: the masks' resolution when it has none).
        rows: its kept mask rows, in ``mask_index`` order.
    """
    if len(rows) > MAX_LABEL:
        raise MapError(
            f"{image['image_uri']}: {len(rows)} masks do not fit a 16-bit map (at most "
            f"{MAX_LABEL}); keep fewer with --top-k"
        )
    ids = [row["category_id"] for row in rows if row.get("category_id") is not None]
    if ids and not 0 < min(ids) <= max(ids) <= MAX_LABEL:
        raise MapError(
            f"{image['image_uri']}: category ids from {min(ids)} to {max(ids)} do not fit a "
            f"16-bit category map (1 to {MAX_LABEL})"
        )
    height, width = rows[0]["segmentation"]["size"] if rows else (image["height"], image["width"])
    instances = np.zeros((height, width), np.uint16)
    categorised = any(row.get("category_id") is not None for row in rows)
    categories = np.zeros((height, width), np.uint16) if categorised else None
    values = {str(value): row["mask_index"] for value, row in enumerate(rows, start=1)}
    painting = sorted(
        enumerate(rows, start=1), key=lambda item: (item[1]["predicted_iou"], item[0])
    )
    for value, row in painting:
        mask = rle.decode(row["segmentation"]).astype(bool)
        instances[mask] = value
        if categories is not None:
            categories[mask] = row.get("category_id") or 0
    index = {
        "image_id": image["image_id"],
        "image_uri": image["image_uri"],
        "size": [height, width],
        "background": 0,
        "overlap": OVERLAP_RULE,
        "mask_index": values,
    }
    if categories is not None:
        index["category_id"] = {
            str(value): row.get("category_id") for value, row in enumerate(rows, start=1)
        }
    return instances, categories, index


def png_shard(
    source: Location,
    shard: str,
    mask_filter: MaskFilter,
    out: Location,
    images: dict[int, dict],
    names: dict[int, str],
) -> tuple[list[int], int]:
    """Write the label maps of one shard's images that have kept masks; returns their ids
    and the masks drawn."""
    written, count = [], 0
    for image_id, rows in image_masks_of_shard(source, shard, mask_filter):
        if image_id in images:
            write_label_maps(out, names[image_id], images[image_id], rows)
            written.append(image_id)
            count += len(rows)
    return written, count


def write_label_maps(out: Location, name: str, image: dict[str, Any], rows: list[dict]) -> None:
    """``name.png``, ``name.json`` (and ``name.categories.png``) of one image."""
    instances, categories, index = label_maps(image, rows)
    payload = png_bytes(instances)
    out.join(f"{name}.png").write_atomic(lambda f: f.write(payload))
    if categories is not None:
        category_payload = png_bytes(categories)
        out.join(f"{name}.categories.png").write_atomic(lambda f: f.write(category_payload))
    document = json.dumps(index).encode()
    out.join(f"{name}.json").write_atomic(lambda f: f.write(document))


def export_png(
    source: Location,
    out: Location,
    mask_filter: MaskFilter | None = None,
    pool: ShardPool | None = None,
    partial: bool = False,
) -> dict[str, int]:
    """Write one instance label map (16-bit PNG) and its JSON per ok image into ``out``.

    Args:
        source: the run.
        out: the folder to write into.
        mask_filter: which masks to draw (default: all).
        pool: where the shards are written (default: this process; same files either way).
        partial: export an unfinished run's committed shards (default: refuse it).

    Returns:
        Counts of maps and masks written.
    """
    run, images, names = prepare(source, out, partial)
    mask_filter, pool = mask_filter or MaskFilter(), pool or ShardPool()
    shared_images, shared_names = pool.share(images), pool.share(names)
    tasks = (
        (run.location, shard, mask_filter, out, shared_images, shared_names) for shard in run.shards
    )
    written: set[int] = set()
    masks = 0
    for ids, count in pool.map(png_shard, tasks, len(run.shards), "export"):
        written.update(ids)
        masks += count
    for image_id, row in images.items():  # an image without kept masks: all background
        if image_id not in written:
            write_label_maps(out, names[image_id], row, [])
    return {"maps": len(images), "masks": masks}


def prepare(
    source: Location, out: Location, partial: bool
) -> tuple[Run, dict[int, dict], dict[int, str]]:
    """The run, its ok images by id and their output names; ``out`` made. An ``out`` that
    is the images' folder or above it is refused (a map named like its image would replace
    it), as is one where a file written would be an image of the run."""
    run = open_source_run(source, out, "--out", "export", partial)
    listed = ok_images(run)
    root = common_root([row["image_uri"] for row in listed])
    if root:
        check_apart(out, {"images' folder": source.at(root)}, inside_ok=True, flag="--out")
    names = image_names(listed)
    images = {row["image_uri"] for row in listed}
    for name in names.values():
        for suffix in (".png", ".json", ".categories.png"):
            if out.join(name + suffix).uri in images:
                raise OutputConflictError(
                    f"--out {out}: {name}{suffix} would replace an image of the run; write "
                    "to a folder of its own"
                )
    out.fs.makedirs(out.path, exist_ok=True)
    return run, {row["image_id"]: row for row in listed}, names


def cutout(pixels: np.ndarray, row: dict[str, Any]) -> np.ndarray:
    """One mask cut out of the image: RGBA over the mask's bounding box, transparent outside
    the mask.

    Args:
        pixels: the image (h, w, 3) at the masks' resolution.
        row: the mask row.
    """
    mask = rle.decode(row["segmentation"]).astype(bool)
    x, y, w, h = row["bbox"]
    left, top = int(math.floor(x)), int(math.floor(y))
    right, bottom = int(math.ceil(x + w)), int(math.ceil(y + h))
    rgba = np.zeros((bottom - top, right - left, 4), np.uint8)
    rgba[..., :3] = pixels[top:bottom, left:right]
    rgba[..., 3] = np.where(mask[top:bottom, left:right], 255, 0)
    return rgba


def cutouts_shard(
    source: Location,
    shard: str,
    mask_filter: MaskFilter,
    out: Location,
    images: dict[int, dict],
    names: dict[int, str],
    settings: dict[str, int],
) -> tuple[int, dict[str, str]]:
    """Write the cut-outs of one shard's kept masks; returns how many, and the images that
    could not be read (URI → reason)."""
    count, failed = 0, {}
    for image_id, rows in image_masks_of_shard(source, shard, mask_filter):
        image = images.get(image_id)
        if image is None or not rows:
            continue
        try:
            pixels = load_image(source.at(image["image_uri"]), **settings).pixels
        except ImageReadError as error:
            failed[image["image_uri"]] = str(error)
            continue
        size = list(rows[0]["segmentation"]["size"])
        if list(pixels.shape[:2]) != size:
            failed[image["image_uri"]] = (
                f"the image reads as {pixels.shape[0]}x{pixels.shape[1]}, its masks are "
                f"{size[0]}x{size[1]}: it changed since the run"
            )
            continue
        for row in rows:
            payload = png_bytes(cutout(pixels, row))
            name = f"{names[image_id]}.{row['mask_index']}.png"
            out.join(name).write_atomic(lambda f, payload=payload: f.write(payload))
            count += 1
    return count, failed


def export_cutouts(
    source: Location,
    out: Location,
    mask_filter: MaskFilter | None = None,
    pool: ShardPool | None = None,
    partial: bool = False,
) -> dict[str, Any]:
    """Write each kept mask as an RGBA PNG of its bounding box into ``out``.

    The images are read again (with the run's storage options, at the resolution the masks
    were made at); one that cannot be read any more is reported and the others written.

    Args:
        source: the run.
        out: the folder to write into.
        mask_filter: which masks to cut out (default: all; ``--top-k`` keeps the best few).
        pool: where the shards are written (default: this process; same files either way).
        partial: export an unfinished run's committed shards (default: refuse it).

    Returns:
        ``{"cutouts": n, "images": n, "failed": {uri: reason}}``.
    """
    run, images, names = prepare(source, out, partial)
    mask_filter, pool = mask_filter or MaskFilter(), pool or ShardPool()
    settings = run.manifest.get("config", {}).get("image", {})
    settings = {key: settings.get(key, 0) for key in ("max_short_side", "max_pixels")}
    shared_images, shared_names = pool.share(images), pool.share(names)
    tasks = (
        (run.location, shard, mask_filter, out, shared_images, shared_names, settings)
        for shard in run.shards
    )
    cutouts, failed = 0, {}
    for count, unread in pool.map(cutouts_shard, tasks, len(run.shards), "export"):
        cutouts += count
        failed |= unread
    return {"cutouts": cutouts, "images": len(images), "failed": failed}
