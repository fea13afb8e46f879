"""Image → mask records, with sam2's ``SAM2AutomaticMaskGenerator`` doing the model work.

On top of the stock generator this adds what SA-1B's automatic stage needs and sam2 1.1.0
does not do: hole and island removal at full resolution (``min_mask_region_area``, which the
stock generator only forwards to a low-resolution filter that needs sam2's optional CUDA
extension), dropping masks that cover too much of the image, and COCO boxes computed from the
RLE itself. Empty masks, which the stock generator keeps when its thresholds are 0 (tiny
images), are dropped.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from pipeline import rle
from pipeline.config import AMGConfig

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


def default_dtype(device: str) -> str:
    """bfloat16 on CUDA, float32 elsewhere."""
    return "bfloat16" if device.startswith("cuda") else "float32"


def fix_feature_sizes(predictor: Any) -> None:
    """Set the predictor's backbone feature sizes from the model's ``image_size``.

    ``SAM2ImagePredictor`` hard-codes them for 1024-px models; any other input size needs
    image_size / 4, / 8 and / 16.
    """
    size = int(predictor.model.image_size)
    predictor._bb_feat_sizes = [(size // s, size // s) for s in (4, 8, 16)]


class MaskGenerator:
    """Generates SA-1B style mask records for one image at a time.

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

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the chosen dtype, or nothing for float32."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=TORCH_DTYPES[self.dtype])

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
        with self.autocast():
            data = self.sam2_generator._generate_masks(image)
        if self.settings.min_mask_region_area > 0:
            nms = max(self.settings.box_nms_thresh, self.settings.crop_nms_thresh)
            data = self.sam2_generator.postprocess_small_regions(
                data, self.settings.min_mask_region_area, nms
            )
        return self.records(data, image.shape[0] * image.shape[1])

    def records(self, data: Any, image_area: int) -> list[dict[str, Any]]:
        """sam2's ``MaskData`` → mask records, dropping masks over the area fraction."""
        max_area = self.settings.max_mask_area_fraction * image_area
        records = []
        for i, uncompressed in enumerate(data["rles"]):
            segmentation = rle.compress(uncompressed)
            area = rle.area(segmentation)
            if area == 0 or area > max_area:  # an empty mask labels nothing
                continue
            x0, y0, x1, y1 = (float(v) for v in data["crop_boxes"][i])
            records.append(
                {
                    "segmentation": segmentation,
                    "area": area,
                    "bbox": rle.bbox(segmentation),
                    "predicted_iou": float(data["iou_preds"][i]),
                    "stability_score": float(data["stability_score"][i]),
                    "point_coords": [[float(v) for v in data["points"][i]]],
                    "crop_box": [x0, y0, x1 - x0, y1 - y0],
                }
            )
        return records
