"""One crop of one image → its masks, as sam2's generator makes them, on the device.

The crop's point grid is decoded in prompt batches (``pipeline.model.decoder``); masks are
dropped by predicted IoU at low resolution, before any upsampling; only the survivors are
upsampled, a chunk at a time, for sam2's stability and crop-edge filters and their boxes;
box NMS runs, and only its survivors are upsampled again to binary masks. Tensor maths only:
threads, grouping and the order of images are ``pipeline.model.fast``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sam2.utils.amg import batched_mask_to_box, calculate_stability_score, is_box_near_crop_edge
from torchvision.ops.boxes import batched_nms

from pipeline.core.config import AMGConfig
from pipeline.model.masks import MaskData
from pipeline.model.records import autocast

# Survivors of the predicted-IoU filter upsampled at once (bounds full-resolution memory).
UPSAMPLE_CHUNK = 64


class CropMasker:
    """A crop's point grid → its masks (``masks``), in sam2's order and with sam2's values.

    Args:
        model: a built SAM 2 model, in eval mode.
        amg: generator settings, as sam2 reads them.
        dtype: ``float32``, ``bfloat16`` or ``float16`` (autocast).
        points_per_batch: prompts decoded together.
        decode: ``pipeline.model.decoder.decode`` (or it with ``compiled=True``).
        method: the decoder's method (``reassociated`` or ``shared``).
        pad_batches: pad the last batch to ``points_per_batch`` (static shapes, compiled).
    """

    def __init__(
        self,
        model: Any,
        amg: AMGConfig,
        dtype: str,
        points_per_batch: int,
        decode: Callable[..., Any],
        method: str,
        pad_batches: bool = False,
    ) -> None:
        self.model, self.settings, self.dtype = model, amg, dtype
        self.points_per_batch, self.decode, self.method = points_per_batch, decode, method
        self.pad_batches = pad_batches
        self.device = next(model.parameters()).device
        self.resolution = int(model.image_size)

    @torch.inference_mode()
    def masks(
        self,
        features: list[torch.Tensor],
        grid: np.ndarray,
        crop_box: list[int],
        image_hw: tuple[int, int],
    ) -> MaskData:
        """One crop: decode its point grid, filter as sam2 does, NMS, back to the image frame.

        Args:
            features: the crop's feature levels (high resolution first, image embedding last).
            grid: the crop's points as fractions of its width and height (sam2's grid).
            crop_box: the crop, XYXY in the image.
            image_hw: the image's height and width.

        Returns:
            Columns ``masks`` (list of (h, w) booleans at the crop's size), ``boxes`` (XYXY,
            image frame), ``iou_preds``, ``stability``, ``points`` (image frame).
        """
        amg = self.settings
        x0, y0, x1, y1 = crop_box
        crop_hw = (y1 - y0, x1 - x0)
        points_np = grid * np.array(crop_hw)[None, ::-1]
        points = torch.as_tensor(points_np, dtype=torch.float32, device=self.device)
        low_res, iou_preds, point_of = self.decode_points(features, points, crop_hw)
        boxes, stability, rows = self.stable_boxes(low_res, crop_box, image_hw)
        iou_preds = iou_preds[rows]
        keep = batched_nms(
            boxes.float(), iou_preds, torch.zeros_like(boxes[:, 0]), amg.box_nms_thresh
        )
        offset = torch.tensor([x0, y0, x0, y0], device=self.device)
        return MaskData(
            # Only NMS's survivors are upsampled a second time (the same result as the first).
            masks=list(self.binary_masks(low_res[rows[keep]], crop_hw)),
            boxes=boxes[keep] + offset,
            iou_preds=iou_preds[keep],
            stability=stability[keep].float(),
            points=points[point_of[rows[keep]]] + offset[:2],
        )

    def upsampled(self, low_res: torch.Tensor, size: tuple[int, int]) -> Iterator[torch.Tensor]:
        """Full-resolution logits of ``low_res`` (sam2's ``postprocess_masks``), in chunks."""
        for start in range(0, len(low_res), UPSAMPLE_CHUNK):
            chunk = low_res[start : start + UPSAMPLE_CHUNK, None].float()
            yield F.interpolate(chunk, size, mode="bilinear", align_corners=False)[:, 0]

    def binary_masks(self, low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(n, h, w) boolean masks of ``low_res`` logits at ``size``."""
        threshold = self.settings.mask_threshold
        masks = [logits > threshold for logits in self.upsampled(low_res, size)]
        if not masks:
            return torch.zeros(0, *size, dtype=torch.bool, device=self.device)
        return torch.cat(masks)

    def stable_boxes(
        self, low_res: torch.Tensor, crop_box: list[int], image_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sam2's stability and crop-edge filters on the decoder's survivors at full
        resolution, a chunk at a time, keeping no full-resolution mask.

        Returns:
            The kept masks' XYXY boxes (crop frame), stability scores and rows in ``low_res``.
        """
        amg = self.settings
        x0, y0, x1, y1 = crop_box
        kept = [
            (
                torch.zeros(0, 4, dtype=torch.long, device=self.device),
                torch.zeros(0, device=self.device),
                torch.zeros(0, dtype=torch.long, device=self.device),
            )
        ]
        for start, logits in zip(
            range(0, len(low_res), UPSAMPLE_CHUNK),
            self.upsampled(low_res, (y1 - y0, x1 - x0)),
            strict=True,
        ):
            rows = torch.arange(start, start + len(logits), device=self.device)
            stability = calculate_stability_score(
                logits, amg.mask_threshold, amg.stability_score_offset
            )
            masks = logits > amg.mask_threshold
            if amg.stability_score_thresh > 0:
                stable = stability >= amg.stability_score_thresh
                masks, stability, rows = masks[stable], stability[stable], rows[stable]
            boxes = batched_mask_to_box(masks)
            frame = [0, 0, image_hw[1], image_hw[0]]
            inside = ~is_box_near_crop_edge(boxes, crop_box, frame)
            kept.append((boxes[inside], stability[inside], rows[inside]))
        boxes, stability, rows = (torch.cat(column) for column in zip(*kept, strict=True))
        return boxes, stability, rows

    def decode_points(
        self, features: list[torch.Tensor], points: torch.Tensor, crop_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All of a crop's prompts through the decoder, keeping masks above ``pred_iou_thresh``.

        Returns:
            Low-resolution logits (n, 4h, 4w) and predicted IoUs (n,) of the kept masks,
            and the index of the point each came from, in sam2's order.
        """
        scaled = points.clone()  # sam2's transform_coords, op for op
        scaled[:, 0] = scaled[:, 0] / crop_hw[1]
        scaled[:, 1] = scaled[:, 1] / crop_hw[0]
        scaled = scaled * self.resolution
        per_point = 3 if self.settings.multimask_output else 1
        kept_logits, kept_iou, kept_point = [], [], []
        for start in range(0, len(points), self.points_per_batch):
            batch = scaled[start : start + self.points_per_batch]
            if self.settings.use_m2m:
                logits, iou, rows = self.refined(features, batch)
            else:
                logits, iou, rows = self.predict_kept(features, batch)
            kept_logits.append(logits)
            kept_iou.append(iou.float())
            kept_point.append(start + torch.div(rows, per_point, rounding_mode="floor"))
        return torch.cat(kept_logits), torch.cat(kept_iou), torch.cat(kept_point)

    def predict_kept(
        self, features: list[torch.Tensor], coords: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode point prompts with ``decoder.decode`` (``method``), keeping the masks above
        ``pred_iou_thresh`` (only their prompts are upscaled).

        Returns:
            Kept logits (n, 4h, 4w), their IoUs (n,) and rows in sam2's (b * m) order.
        """
        model, n = self.model, len(coords)
        with autocast(self.device.type, self.dtype):
            sparse, dense = self.prompt_embeddings(self.padded(coords))
            return self.decode(
                model.sam_mask_decoder,
                features[-1],
                model.sam_prompt_encoder.get_dense_pe(),
                sparse,
                dense,
                features[:-1],
                self.settings.multimask_output,
                self.settings.pred_iou_thresh,
                n,
                self.method,
            )

    def padded(self, coords: torch.Tensor) -> torch.Tensor:
        """With ``pad_batches``: the last batch padded to ``points_per_batch`` (static shapes)."""
        missing = self.points_per_batch - len(coords)
        if not self.pad_batches or missing <= 0:
            return coords
        return torch.cat([coords, coords[-1:].expand(missing, 2)])

    def refined(
        self, features: list[torch.Tensor], coords: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sam2's ``use_m2m``: every mask refined by one more single-mask pass with itself as
        the mask prompt, then the predicted-IoU filter (as ``predict_kept`` returns)."""
        logits, _ = self.predict(features, coords, self.settings.multimask_output)
        per_point = logits.shape[1]
        coords = coords.repeat_interleave(per_point, dim=0)
        previous = torch.clamp(logits.flatten(0, 1), -32.0, 32.0)[:, None]
        step = self.points_per_batch
        refined = [
            self.predict(features, coords[s : s + step], False, previous[s : s + step])
            for s in range(0, len(coords), step)
        ]
        logits = torch.cat([r[0] for r in refined])[:, 0]
        iou = torch.cat([r[1] for r in refined])[:, 0]
        rows = torch.arange(len(iou), device=self.device)
        if self.settings.pred_iou_thresh > 0:
            keep = iou > self.settings.pred_iou_thresh
            logits, iou, rows = logits[keep], iou[keep], rows[keep]
        return logits, iou, rows

    def prompt_embeddings(
        self, coords: torch.Tensor, mask_input: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse and dense embeddings of one foreground point per prompt (and its mask)."""
        labels = torch.ones(len(coords), 1, dtype=torch.int, device=self.device)
        return self.model.sam_prompt_encoder(
            points=(coords[:, None, :], labels), boxes=None, masks=mask_input
        )

    @torch.inference_mode()
    def predict(
        self,
        features: list[torch.Tensor],
        coords: torch.Tensor,
        multimask: bool,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sam2's ``_predict`` through sam2's own decoder: logits (b, m, 4h, 4w), IoUs (b, m).

        Used where a mask is part of the prompt (``use_m2m``) and by the benchmark.
        """
        model = self.model
        with autocast(self.device.type, self.dtype):
            sparse, dense = self.prompt_embeddings(coords, mask_input)
            logits, iou, _, _ = model.sam_mask_decoder(
                image_embeddings=features[-1],
                image_pe=model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                repeat_image=len(coords) > 1,
                high_res_features=features[:-1] or None,
            )
        return logits, iou
