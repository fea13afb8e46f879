"""Masks ↔ COCO compressed RLE: the one place that knows RLE runs go down columns.

A stored segmentation is ``{"size": [h, w], "counts": str}``, which
``pycocotools.mask.decode`` takes as it is (it accepts ``counts`` as str or bytes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Binary (h, w) mask → COCO compressed RLE with ``counts`` as an ASCII string."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def compress(uncompressed: dict[str, Any]) -> dict[str, Any]:
    """sam2's uncompressed RLE (column-major run lengths) → COCO compressed RLE."""
    h, w = uncompressed["size"]
    rle = mask_utils.frPyObjects(uncompressed, h, w)
    return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}


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
