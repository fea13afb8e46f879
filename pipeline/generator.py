"""Image → mask records: the stock generator (``generator.impl=reference``) and what both
implementations share.

``MaskGenerator`` runs sam2's ``SAM2AutomaticMaskGenerator``; ``pipeline.fast_generator``
gives the same masks faster and is the default. On top of the stock generator both add what
SA-1B's automatic stage needs and sam2 1.1.0 does not do: hole and island removal at full
resolution (``min_mask_region_area``, which the stock generator only forwards to a
low-resolution filter that needs sam2's optional CUDA extension), dropping masks that cover
too much of the image, and COCO boxes computed from the RLE itself. Empty masks, which the
stock generator keeps when its thresholds are 0 (tiny images), are dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from pipeline import rle
from pipeline.config import AMGConfig, GeneratorConfig

# Arguments of SAM2AutomaticMaskGenerator that we pass through unchanged.
SAM2_ARGUMENTS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "mask_threshold",
    "box_nms_thresh",
    "crop_n_layers",
    "crop_nms_thresh",
    "crop_overlap_ratio",
    "crop_n_points_downscale_factor",
    "use_m2m",
    "multimask_output",
)

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


def make_generator(
    model: Any, amg: AMGConfig, generator: GeneratorConfig, dtype: str, device: str
) -> MaskGenerator | Any:
    """The generator a job asks for (``generator.impl``), built on ``model``.

    Args:
        model: a built SAM 2 model, on ``device``.
        amg: the mask generator settings.
        generator: which implementation, and the fast one's batch sizes and compilation.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device: ``cpu`` or ``cuda`` (picks the automatic encoder batch).
    """
    if generator.impl == "reference":
        return MaskGenerator(model, amg, dtype=dtype)
    from pipeline.fast_generator import FastMaskGenerator

    cuda = device.startswith("cuda")
    return FastMaskGenerator(
        model,
        amg,
        dtype=dtype,
        points_per_batch=generator.points_per_batch or (256 if cuda else 32),
        encoder_batch=generator.encoder_batch or (8 if cuda else 1),
        compile=generator.compile,
        tf32=generator.tf32,
    )


class MaskGenerator:
    """sam2's stock ``SAM2AutomaticMaskGenerator`` behind our record format
    (``generator.impl=reference``): slow, and the yardstick the fast generator is held to.

    Args:
        model: a built SAM 2 model (``pipeline.models.build_model``), in eval mode.
        amg: generator settings; every field of ``AMGConfig``.
        dtype: ``float32``, ``bfloat16`` or ``float16``; lower precision runs under autocast.
    """

    def __init__(self, model: Any, amg: AMGConfig, dtype: str = "float32") -> None:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        self.settings = amg
        self.dtype = dtype
        self.device_type = next(model.parameters()).device.type
        # min_mask_region_area=0 here: we clean masks at full resolution ourselves.
        self.sam2_generator = SAM2AutomaticMaskGenerator(
            model,
            min_mask_region_area=0,
            output_mode="uncompressed_rle",
            **{name: getattr(amg, name) for name in SAM2_ARGUMENTS},
        )
        fix_feature_sizes(self.sam2_generator.predictor)

    @torch.inference_mode()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks for one image.

        Args:
            image: (h, w, 3) uint8 RGB.

        Returns:
            One dict per mask: ``segmentation`` (COCO compressed RLE, ``counts`` a str),
            ``area``, ``bbox`` (XYWH, COCO convention), ``predicted_iou``,
            ``stability_score``, ``point_coords`` ([[x, y]]) and ``crop_box`` (XYWH).
        """
        try:
            with autocast(self.device_type, self.dtype):
                data = self.sam2_generator._generate_masks(image)
        except IndexError as error:
            # sam2 1.1.0's cross-crop NMS indexes an empty tensor when no crop kept a mask.
            if self.settings.crop_n_layers > 0 and "with size 0" in str(error):
                return []
            raise
        if self.settings.min_mask_region_area > 0:
            nms = max(self.settings.box_nms_thresh, self.settings.crop_nms_thresh)
            data = self.sam2_generator.postprocess_small_regions(
                data, self.settings.min_mask_region_area, nms
            )
        return mask_records(
            [rle.compress(uncompressed) for uncompressed in data["rles"]],
            data["iou_preds"],
            data["stability_score"],
            data["points"],
            data["crop_boxes"],
            self.settings.max_mask_area_fraction * image.shape[0] * image.shape[1],
        )

    def generate_many(self, items: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Outcome]]:
        """``generate`` over ``(key, image)`` pairs, one at a time; see
        ``FastMaskGenerator.generate_many`` for the contract."""
        for key, image in items:
            if isinstance(image, BaseException):
                yield key, image
                continue
            try:
                yield key, self.generate(image)
            except Exception as error:
                yield key, error


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
    from sam2.utils.amg import batched_mask_to_box, remove_small_regions
    from torchvision.ops.boxes import batched_nms

    if len(masks) == 0:
        return masks, np.zeros(0, dtype=np.int64)
    cleaned, scores = [], []
    for mask in masks:
        mask, holes_changed = remove_small_regions(mask, min_area, mode="holes")
        mask, islands_changed = remove_small_regions(mask, min_area, mode="islands")
        cleaned.append(mask)
        scores.append(float(not (holes_changed or islands_changed)))
    stack = torch.as_tensor(np.stack(cleaned))
    boxes = batched_mask_to_box(stack)
    keep = batched_nms(
        boxes.float(), torch.as_tensor(scores), torch.zeros_like(boxes[:, 0]), nms_thresh
    ).numpy()
    return stack.numpy()[keep], keep
