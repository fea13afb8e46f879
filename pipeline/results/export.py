"""Hand the pseudo-labels to other tools: one COCO instances JSON, or SA-1B's per-image JSONs.

Both stream: the COCO file is written object by object, shard by shard, and the SA-1B files one
image at a time, so a run larger than memory exports fine.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator
from typing import IO, Any

from pipeline.core.storage import Location
from pipeline.results.dataset import Run, open_run
from pipeline.results.filters import MaskFilter, filtered_shard

CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
EXTRA_FIELDS = ("predicted_iou", "stability_score", "point_coords", "crop_box")
# Prompted runs also carry where each mask came from.
PROMPT_FIELDS = ("source_id", "source_score", "box_iou", "prompt_box")


def common_root(uris: list[str]) -> str:
    """The longest folder prefix shared by all URIs ('' when there is none)."""
    if not uris:
        return ""
    prefix = os.path.commonprefix(uris)
    return prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""


def ok_images(run: Run) -> list[dict[str, Any]]:
    """The image rows with status ``ok``, sorted by URI."""
    table = run.images.to_table(
        columns=["image_id", "image_uri", "width", "height", "status"],
        filter=run.field("status") == "ok",
    )
    return sorted(table.to_pylist(), key=lambda row: row["image_uri"])


def masks_by_image(run: Run, mask_filter: MaskFilter) -> Iterator[tuple[int, list[dict]]]:
    """Each image's kept masks (sorted by ``mask_index``), shard by shard."""
    for shard in run.shards:
        masks, _ = filtered_shard(run, shard, mask_filter)
        grouped: dict[int, list[dict]] = {}
        for row in masks.to_pylist():
            grouped.setdefault(row["image_id"], []).append(row)
        for image_id, rows in grouped.items():
            rows.sort(key=lambda row: row["mask_index"])
            yield image_id, rows


def export_coco(
    source: Location, out: Location, mask_filter: MaskFilter | None = None
) -> dict[str, int]:
    """Write one class-agnostic COCO instances JSON.

    Images get ids 1..N (JSON tools lose precision on 63-bit ids; the run's ``image_id`` is
    kept as ``autolabel_image_id``, as a string). Annotations carry RLE segmentation, bbox,
    area, ``score`` (= predicted IoU), ``iscrowd`` 0, the single category ``object``, and the
    SA-1B extras (predicted_iou, stability_score, point_coords, crop_box).

    Args:
        source: the run.
        out: the JSON file to write.
        mask_filter: which masks to export (default: all).

    Returns:
        Counts of images and annotations written.
    """
    run = open_run(source)
    mask_filter = mask_filter or MaskFilter()
    images = ok_images(run)
    root = common_root([row["image_uri"] for row in images])
    coco_ids = {row["image_id"]: index for index, row in enumerate(images, start=1)}
    categories, keep_ids = source_categories(run)
    parent = posixpath.dirname(out.path)
    if parent:
        out.fs.makedirs(parent, exist_ok=True)
    annotations = 0
    with out.open("w") as f:
        f.write('{"info": ' + json.dumps(coco_info(run, mask_filter)))
        f.write(', "licenses": [], "categories": ' + json.dumps(categories))
        f.write(', "images": [')
        write_list(f, (coco_image(row, coco_ids[row["image_id"]], root) for row in images))
        f.write('], "annotations": [')
        for image_id, rows in masks_by_image(run, mask_filter):
            items = (
                coco_annotation(
                    row,
                    int(row["source_id"]) if keep_ids else annotations + i + 1,
                    coco_ids[image_id],
                )
                for i, row in enumerate(rows)
            )
            if annotations:
                f.write(", ")
            write_list(f, items)
            annotations += len(rows)
        f.write("]}\n")
    return {"images": len(images), "annotations": annotations}


def write_list(f: IO[str], items: Iterator[dict]) -> None:
    """Write JSON objects separated by commas (no brackets)."""
    for index, item in enumerate(items):
        if index:
            f.write(", ")
        f.write(json.dumps(item))


def coco_info(run: Run, mask_filter: MaskFilter) -> dict[str, Any]:
    """The ``info`` block: what made these labels."""
    model = run.manifest.get("model", {})
    return {
        "description": "autolabel pseudo-labels (SAM 2 automatic mask generator)",
        "version": run.manifest.get("format", ""),
        "model": model.get("name") or model.get("config"),
        "filter": mask_filter.describe(),
        "source_run": run.root,
    }


def coco_image(row: dict[str, Any], coco_id: int, root: str) -> dict[str, Any]:
    """One COCO image entry."""
    return {
        "id": coco_id,
        "file_name": row["image_uri"][len(root) :],
        "width": row["width"],
        "height": row["height"],
        "coco_url": row["image_uri"],
        "autolabel_image_id": str(row["image_id"]),
    }


def source_categories(run: Run) -> tuple[list[dict[str, Any]], bool]:
    """A prompted run's categories (from its prompts), and whether the prompts' own ids can be
    the annotation ids (all integers, none twice); an automatic run: one ``object`` category."""
    if not run.manifest.get("prompts"):
        return [CATEGORY], False
    table = run.masks.to_table(columns=["category_id", "category_name", "source_id"])
    pairs = {
        (row["category_id"], row["category_name"])
        for row in table.select(["category_id", "category_name"]).to_pylist()
        if row["category_id"] is not None
    }
    names: dict[int, str] = {}
    for category_id, name in sorted(pairs, key=lambda pair: (pair[0], pair[1] or "")):
        names.setdefault(category_id, name or str(category_id))
    categories = [{"id": i, "name": n, "supercategory": "object"} for i, n in names.items()]
    ids = table.column("source_id").to_pylist()
    keep_ids = all(i is not None and i.isdigit() for i in ids) and len(set(ids)) == len(ids)
    return categories or [CATEGORY], keep_ids


def coco_annotation(row: dict[str, Any], ann_id: int, image_id: int) -> dict[str, Any]:
    """One COCO annotation from a mask row (a prompted run's keeps its prompt's category)."""
    category = row.get("category_id")
    prompted = {name: row[name] for name in PROMPT_FIELDS if row.get(name) is not None}
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category if category is not None else CATEGORY["id"],
        "segmentation": row["segmentation"],
        "area": row["area"],
        "bbox": row["bbox"],
        "iscrowd": 0,
        "score": row["predicted_iou"],
        **{name: row[name] for name in EXTRA_FIELDS},
        **prompted,
    }


def export_sa1b(
    source: Location, out: Location, mask_filter: MaskFilter | None = None
) -> dict[str, int]:
    """Write one SA-1B style JSON per ok image into the folder ``out``.

    Each file is ``sa_<image_id>.json``: ``{"image": {image_id, width, height, file_name},
    "annotations": [{id, segmentation, bbox, area, predicted_iou, stability_score,
    point_coords, crop_box}]}``. Images whose masks were all filtered out still get a file.

    Args:
        source: the run.
        out: the folder to write into.
        mask_filter: which masks to export (default: all).

    Returns:
        Counts of files and annotations written.
    """
    run = open_run(source)
    mask_filter = mask_filter or MaskFilter()
    images = {row["image_id"]: row for row in ok_images(run)}
    root = common_root([row["image_uri"] for row in images.values()])
    out.fs.makedirs(out.path, exist_ok=True)
    written: set[int] = set()
    annotations = 0
    for image_id, rows in masks_by_image(run, mask_filter):
        if image_id in images:
            write_sa1b_file(out, images[image_id], rows, root, first_id=annotations + 1)
            written.add(image_id)
            annotations += len(rows)
    for image_id, row in images.items():
        if image_id not in written:
            write_sa1b_file(out, row, [], root, first_id=annotations + 1)
    return {"files": len(images), "annotations": annotations}


def write_sa1b_file(
    folder: Location, image: dict, rows: list[dict], root: str, first_id: int
) -> None:
    """One image's SA-1B JSON; annotation ids run on from ``first_id`` (unique in the export)."""
    document = {
        "image": {
            "image_id": image["image_id"],
            "width": image["width"],
            "height": image["height"],
            "file_name": image["image_uri"][len(root) :],
        },
        "annotations": [
            {
                "id": first_id + index,
                "segmentation": row["segmentation"],
                "bbox": row["bbox"],
                "area": row["area"],
                **{name: row[name] for name in EXTRA_FIELDS},
            }
            for index, row in enumerate(rows)
        ],
    }
    with folder.join(f"sa_{image['image_id']}.json").open("w") as f:
        json.dump(document, f)
