"""The stock generator (``generator.impl=reference``): sam2's ``SAM2AutomaticMaskGenerator``
behind our record format. ``pipeline.model.fast`` gives the same masks faster and is the
default; ``pipeline.model.records`` holds what both add to sam2's output.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from pipeline.core import rle
from pipeline.core.config import AMGConfig
from pipeline.model.records import Outcome, autocast, fix_feature_sizes, mask_records

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


class MaskGenerator:
    """sam2's stock ``SAM2AutomaticMaskGenerator`` behind our record format
    (``generator.impl=reference``): slow, and the yardstick the fast generator is held to.

    Args:
        model: a built SAM 2 model (``pipeline.model.registry.build_model``), in eval mode.
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
