"""Masks ↔ COCO compressed RLE: the one place that knows RLE runs go down columns.

A stored segmentation is ``{"size": [h, w], "counts": str}``, which
``pycocotools.mask.decode`` takes as it is (it accepts ``counts`` as str or bytes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils

if TYPE_CHECKING:
    import torch


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Binary (h, w) mask → COCO compressed RLE with ``counts`` as an ASCII string."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def compress(uncompressed: dict[str, Any]) -> dict[str, Any]:
    """sam2's uncompressed RLE (column-major run lengths) → COCO compressed RLE."""
    h, w = uncompressed["size"]
    rle = mask_utils.frPyObjects(uncompressed, h, w)
    return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}


def column_changes(masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Where each mask's column-major pixel run changes value, found on the masks' device.

    Only these change points travel to the host, not the masks.

    Args:
        masks: (k, h, w) boolean masks on any device.

    Returns:
        ``first`` (k,) bool, each mask's top-left pixel, and ``changes`` (m, 2) int64 rows
        ``(mask index, position before the change)`` in column-major order, sorted by mask.
    """
    flat = masks.transpose(1, 2).reshape(masks.shape[0], -1)
    changes = (flat[:, 1:] != flat[:, :-1]).nonzero()
    return flat[:, 0].cpu().numpy(), changes.cpu().numpy()


def from_changes(first: np.ndarray, changes: np.ndarray, h: int, w: int) -> list[dict[str, Any]]:
    """Change points from ``column_changes`` → COCO compressed RLEs (``counts`` str).

    Args:
        first: (k,) each mask's first pixel.
        changes: (m, 2) change points sorted by mask.
        h, w: the masks' height and width.
    """
    if len(first) == 0:
        return []
    positions = changes[:, 1] + 1
    bounds = np.searchsorted(changes[:, 0], np.arange(len(first) + 1))
    edges_end = np.array([h * w])
    uncompressed = []
    for k, starts_on in enumerate(first):
        edges = np.concatenate(([0], positions[bounds[k] : bounds[k + 1]], edges_end))
        counts = np.diff(edges)
        if starts_on:  # COCO runs start with background
            counts = np.concatenate(([0], counts))
        uncompressed.append({"size": [h, w], "counts": counts})
    return [
        {"size": [h, w], "counts": encoded["counts"].decode("ascii")}
        for encoded in mask_utils.frPyObjects(uncompressed, h, w)
    ]


def areas_and_boxes(rles: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Foreground pixels (k,) and COCO boxes (k, 4) of many RLEs in one pycocotools call."""
    coco = [as_pycocotools(r) for r in rles]
    # pycocotools' area() sizes its output with a uint8 under NumPy 2: at most 255 per call.
    chunks = [coco[i : i + 255] for i in range(0, len(coco), 255)]
    areas = [mask_utils.area(chunk).astype(np.int64) for chunk in chunks]
    boxes = [mask_utils.toBbox(chunk) for chunk in chunks]
    if not chunks:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4))
    return np.concatenate(areas), np.concatenate(boxes)


def decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO compressed RLE (``counts`` str or bytes) → binary (h, w) uint8 mask."""
    return mask_utils.decode(as_pycocotools(rle))


def area(rle: dict[str, Any]) -> int:
    """Number of foreground pixels, computed on the RLE without decoding."""
    return int(mask_utils.area(as_pycocotools(rle)))


def bbox(rle: dict[str, Any]) -> list[float]:
    """COCO box ``[x, y, width, height]`` of the foreground (width counts both end pixels)."""
    return [float(v) for v in mask_utils.toBbox(as_pycocotools(rle))]


def as_pycocotools(rle: dict[str, Any]) -> dict[str, Any]:
    """The dict pycocotools wants: ``size`` as a list, ``counts`` as bytes."""
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }
