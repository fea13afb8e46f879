"""Hand the pseudo-labels to other tools: one COCO instances JSON, or SA-1B's per-image JSONs.

Both stream: the COCO file is written object by object, shard by shard, and the SA-1B files one
image at a time, so a run larger than memory exports fine.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from itertools import accumulate
from typing import IO, Any

from pipeline.core.executor import ShardPool
from pipeline.core.storage import Location
from pipeline.results.dataset import Run, masks_by_image, open_source_run
from pipeline.results.filters import MaskFilter, filtered_shard, shard_kept_count

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


def image_masks_of_shard(
    source: Location, shard: str, mask_filter: MaskFilter
) -> list[tuple[int, list[dict]]]:
    """Each image's kept masks in one shard (sorted by ``mask_index``)."""
    masks, _ = filtered_shard(source, shard, mask_filter)
    return list(masks_by_image(masks).items())


def first_ids(run: Run, mask_filter: MaskFilter, pool: ShardPool) -> list[int] | None:
    """On a cluster, each shard's first annotation id (a counting pass over score columns, so
    the shards can be written at once); None in this process, where ids simply run on."""
    if not pool.use_ray:
        return None
    tasks = ((run.location, shard, mask_filter) for shard in run.shards)
    counts = pool.map(shard_kept_count, tasks, len(run.shards), "count")
    return list(accumulate(counts, initial=1))[:-1]


def shard_tasks(run: Run, starts: list[int] | None, state: dict[str, int], *args: Any):
    """``(source, shard, *args, first_id)`` per shard; without ``starts`` the first id is
    read from ``state`` when the task is taken, after the shard before it was written."""
    for index, shard in enumerate(run.shards):
        yield (run.location, shard, *args, starts[index] if starts else state["next_id"])


def coco_shard(
    source: Location,
    shard: str,
    mask_filter: MaskFilter,
    coco_ids: dict[int, int],
    keep_ids: bool,
    first_id: int,
) -> tuple[str, int]:
    """One shard's COCO annotations as JSON text (comma-separated objects) and their count."""
    parts, count = [], 0
    for image_id, rows in image_masks_of_shard(source, shard, mask_filter):
        parts.append(
            ", ".join(
                json.dumps(
                    coco_annotation(
                        row,
                        int(row["source_id"]) if keep_ids else first_id + count + i,
                        coco_ids[image_id],
                    )
                )
                for i, row in enumerate(rows)
            )
        )
        count += len(rows)
    return ", ".join(parts), count


def export_coco(
    source: Location,
    out: Location,
    mask_filter: MaskFilter | None = None,
    pool: ShardPool | None = None,
    partial: bool = False,
) -> dict[str, int]:
    """Write one class-agnostic COCO instances JSON, whole or not at all (a failed or
    interrupted export leaves the previous file as it was).

    Images get ids 1..N (JSON tools lose precision on 63-bit ids; the run's ``image_id`` is
    kept as ``autolabel_image_id``, as a string). Annotations carry RLE segmentation, bbox,
    area, ``score`` (= predicted IoU), ``iscrowd`` 0, the single category ``object``, and the
    SA-1B extras (predicted_iou, stability_score, point_coords, crop_box).

    Args:
        source: the run.
        out: the JSON file to write.
        mask_filter: which masks to export (default: all).
        pool: where the shards are turned into JSON (default: this process; the file is
            byte for byte the same either way).
        partial: export an unfinished run's committed shards (default: refuse it).

    Returns:
        Counts of images and annotations written.
    """
    run = open_source_run(source, out, "--out", "export", partial)
    mask_filter = mask_filter or MaskFilter()
    pool = pool or ShardPool()
    images = ok_images(run)
    root = common_root([row["image_uri"] for row in images])
    coco_ids = {row["image_id"]: index for index, row in enumerate(images, start=1)}
    categories, keep_ids = source_categories(run)
    starts = first_ids(run, mask_filter, pool)
    state = {"next_id": 1, "annotations": 0}
    tasks = shard_tasks(run, starts, state, mask_filter, pool.share(coco_ids), keep_ids)

    def write(binary: IO[bytes]) -> None:
        f = io.TextIOWrapper(binary, encoding="utf-8")
        f.write('{"info": ' + json.dumps(coco_info(run, mask_filter)))
        f.write(', "licenses": [], "categories": ' + json.dumps(categories))
        f.write(', "images": [')
        write_list(f, (coco_image(row, coco_ids[row["image_id"]], root) for row in images))
        f.write('], "annotations": [')
        for text, count in pool.map(coco_shard, tasks, len(run.shards), "export"):
            if text:
                f.write((", " if state["annotations"] else "") + text)
            state["annotations"] += count
            state["next_id"] = state["annotations"] + 1
        f.write("]}\n")
        f.flush()
        f.detach()

    out.write_atomic(write, stream=True)
    return {"images": len(images), "annotations": state["annotations"]}


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


def sa1b_shard(
    source: Location,
    shard: str,
    mask_filter: MaskFilter,
    out: Location,
    images: dict[int, dict],
    root: str,
    first_id: int,
) -> tuple[list[int], int]:
    """Write the SA-1B files of one shard's images that have kept masks; returns their ids
    and the annotations written."""
    written, count = [], 0
    for image_id, rows in image_masks_of_shard(source, shard, mask_filter):
        if image_id in images:
            write_sa1b_file(out, images[image_id], rows, root, first_id=first_id + count)
            written.append(image_id)
            count += len(rows)
    return written, count


def export_sa1b(
    source: Location,
    out: Location,
    mask_filter: MaskFilter | None = None,
    pool: ShardPool | None = None,
    partial: bool = False,
) -> dict[str, int]:
    """Write one SA-1B style JSON per ok image into the folder ``out`` (each file whole or
    not at all).

    Each file is ``sa_<image_id>.json``: ``{"image": {image_id, width, height, file_name},
    "annotations": [{id, segmentation, bbox, area, predicted_iou, stability_score,
    point_coords, crop_box}]}``. Images whose masks were all filtered out still get a file.

    Args:
        source: the run.
        out: the folder to write into.
        mask_filter: which masks to export (default: all).
        pool: where the shards are written (default: this process; same files either way).
        partial: export an unfinished run's committed shards (default: refuse it).

    Returns:
        Counts of files and annotations written.
    """
    run = open_source_run(source, out, "--out", "export", partial)
    mask_filter = mask_filter or MaskFilter()
    pool = pool or ShardPool()
    images = {row["image_id"]: row for row in ok_images(run)}
    root = common_root([row["image_uri"] for row in images.values()])
    out.fs.makedirs(out.path, exist_ok=True)
    starts = first_ids(run, mask_filter, pool)
    state = {"next_id": 1}
    tasks = shard_tasks(run, starts, state, mask_filter, out, pool.share(images), root)
    written: set[int] = set()
    annotations = 0
    for ids, count in pool.map(sa1b_shard, tasks, len(run.shards), "export"):
        written.update(ids)
        annotations += count
        state["next_id"] = annotations + 1
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
    payload = json.dumps(document).encode()
    folder.join(f"sa_{image['image_id']}.json").write_atomic(lambda f: f.write(payload))
