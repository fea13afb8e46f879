"""What both mask generators share: mask records, full-resolution clean-up, dtypes.

On top of sam2's generator both implementations add what SA-1B's automatic stage needs and
sam2 1.1.0 does not do: hole and island removal at full resolution (``min_mask_region_area``,
which the stock generator only forwards to a low-resolution filter that needs sam2's optional
CUDA extension), dropping masks that cover too much of the image, and COCO boxes computed from
the RLE itself. Empty masks, which the stock generator keeps when its thresholds are 0 (tiny
images), are dropped.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from pipeline.core import rle

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# What a generator gives for one image: its mask records, or why it failed.
Outcome = list[dict[str, Any]] | BaseException


def default_dtype(device: str) -> str:
    """bfloat16 on CUDA, float32 elsewhere."""
    return "bfloat16" if device.startswith("cuda") else "float32"


def autocast(device_type: str, dtype: str) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device_type`` (``cuda``, ``cpu``), or nothing for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=TORCH_DTYPES[dtype])


def fix_feature_sizes(predictor: Any) -> None:
    """Set the predictor's backbone feature sizes from the model's ``image_size``.

    ``SAM2ImagePredictor`` hard-codes them for 1024-px models; any other input size needs
    image_size / 4, / 8 and / 16.
    """
    size = int(predictor.model.image_size)
    predictor._bb_feat_sizes = [(size // s, size // s) for s in (4, 8, 16)]


def mask_records(
    segmentations: list[dict[str, Any]],
    iou_preds: Any,
    stability: Any,
    points: Any,
    crop_boxes: Any,
    max_area: float,
) -> list[dict[str, Any]]:
    """Per-mask arrays → mask records, dropping empty masks and those over ``max_area``.

    Args:
        segmentations: COCO compressed RLEs.
        iou_preds, stability: (k,) scores.
        points: (k, 2) the prompt of each mask, image frame.
        crop_boxes: (k, 4) the crop (XYXY) each mask came from.
        max_area: masks with more pixels than this are dropped.
    """
    areas, boxes = rle.areas_and_boxes(segmentations)
    records = []
    for i, segmentation in enumerate(segmentations):
        if areas[i] == 0 or areas[i] > max_area:  # an empty mask labels nothing
            continue
        x0, y0, x1, y1 = (float(v) for v in crop_boxes[i])
        records.append(
            {
                "segmentation": segmentation,
                "area": int(areas[i]),
                "bbox": [float(v) for v in boxes[i]],
                "predicted_iou": float(iou_preds[i]),
                "stability_score": float(stability[i]),
                "point_coords": [[float(v) for v in points[i]]],
                "crop_box": [x0, y0, x1 - x0, y1 - y0],
            }
        )
    return records


def fill_holes_and_islands(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """sam2's ``remove_small_regions`` for holes, then islands, under ``min_area`` pixels.

    Returns:
        The cleaned mask, and whether anything changed.
    """
    from sam2.utils.amg import remove_small_regions

    mask, holes_changed = remove_small_regions(mask, min_area, mode="holes")
    mask, islands_changed = remove_small_regions(mask, min_area, mode="islands")
    return mask, holes_changed or islands_changed


def remove_small_regions_and_duplicates(
    masks: np.ndarray, min_area: int, nms_thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """sam2's ``postprocess_small_regions`` on full-resolution masks: fill holes and remove
    islands under ``min_area`` pixels, then drop new duplicates by box NMS, preferring masks
    that needed no change.

    Args:
        masks: (k, h, w) bool.
        min_area: regions smaller than this many pixels are removed.
        nms_thresh: box IoU above which the lower-scored mask is dropped.

    Returns:
        The kept masks (cleaned) and their indices into ``masks``, in NMS order.
    """
    from sam2.utils.amg import batched_mask_to_box
    from torchvision.ops.boxes import batched_nms

    if len(masks) == 0:
        return masks, np.zeros(0, dtype=np.int64)
    cleaned, scores = [], []
    for mask in masks:
        mask, changed = fill_holes_and_islands(mask, min_area)
        cleaned.append(mask)
        scores.append(float(not changed))
    stack = torch.as_tensor(np.stack(cleaned))
    boxes = batched_mask_to_box(stack)
    keep = batched_nms(
        boxes.float(), torch.as_tensor(scores), torch.zeros_like(boxes[:, 0]), nms_thresh
    ).numpy()
    return stack.numpy()[keep], keep
