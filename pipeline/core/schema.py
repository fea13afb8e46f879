"""The one place that knows the output's Arrow schemas: mask rows and image rows."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

SEGMENTATION = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])

MASK_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("mask_index", pa.int32()),
        ("segmentation", SEGMENTATION),
        ("area", pa.int64()),
        ("bbox", pa.list_(pa.float64())),
        ("predicted_iou", pa.float32()),
        ("stability_score", pa.float32()),
        ("point_coords", pa.list_(pa.list_(pa.float64()))),
        ("crop_box", pa.list_(pa.float64())),
        # Prompted runs (``autolabel run --prompts``) only; null in automatic runs.
        ("prompt_box", pa.list_(pa.float64())),  # XYWH, in the mask's pixels
        ("prompt_points", pa.list_(pa.list_(pa.float64()))),
        ("prompt_labels", pa.list_(pa.int32())),
        ("category_id", pa.int64()),
        ("category_name", pa.string()),
        ("source_id", pa.string()),
        ("source_score", pa.float32()),
        ("box_iou", pa.float32()),  # the mask's box against the prompt's box
    ]
)

IMAGE_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("num_masks", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("shard", pa.string()),
        ("seconds", pa.float32()),
        # Prompted runs only: prompts of the image, and why each failed one has no mask.
        ("num_prompts", pa.int32()),
        ("prompt_errors", pa.list_(pa.string())),
        # Error rows: ``read`` (the image could not be used) or ``generation`` (masks failed).
        ("error_kind", pa.string()),
    ]
)


def mask_rows(image_id: int, image_uri: str, records: list[dict[str, Any]]) -> pa.Table:
    """The mask rows of one image as an Arrow table.

    Args:
        image_id: the image's stable id.
        image_uri: where the image was read from.
        records: mask records from ``MaskGenerator.generate``.
    """
    columns: dict[str, list[Any]] = {name: [] for name in MASK_SCHEMA.names}
    for index, record in enumerate(records):
        columns["image_id"].append(image_id)
        columns["image_uri"].append(image_uri)
        columns["mask_index"].append(index)
        for name in MASK_SCHEMA.names[3:]:
            columns[name].append(record.get(name))
    return pa.Table.from_pydict(columns, schema=MASK_SCHEMA)


def image_row(
    image_id: int,
    image_uri: str,
    shard: str,
    *,
    width: int | None = None,
    height: int | None = None,
    original_width: int | None = None,
    original_height: int | None = None,
    num_masks: int = 0,
    error: str | None = None,
    error_kind: str | None = None,
    seconds: float = 0.0,
    num_prompts: int | None = None,
    prompt_errors: list[str] | None = None,
) -> dict[str, Any]:
    """One image row; ``status`` is ``error`` exactly when ``error`` is given."""
    return {
        "image_id": image_id,
        "image_uri": image_uri,
        "width": width,
        "height": height,
        "original_width": original_width,
        "original_height": original_height,
        "num_masks": num_masks,
        "status": "error" if error else "ok",
        "error": error,
        "shard": shard,
        "seconds": seconds,
        "num_prompts": num_prompts,
        "prompt_errors": prompt_errors,
        "error_kind": error_kind if error else None,
    }


def image_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Image rows → Arrow table."""
    return pa.Table.from_pylist(rows, schema=IMAGE_SCHEMA)
