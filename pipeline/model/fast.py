"""The stock generator's masks, several times faster: ``generator.impl=fast`` (the default).

Same parameters, same steps and the same order as sam2's ``SAM2AutomaticMaskGenerator``
(followed by ``pipeline.model.reference.MaskGenerator``'s clean-up), with the waste taken out:

- every crop of an image (and of the next images, up to ``encoder_batch``) goes through the
  image encoder in one batch, resized on the device;
- prompts are decoded in large batches (``points_per_batch``), the image side of the
  decoder computed once per crop instead of once per prompt (``pipeline.model.decoder``);
- masks are dropped by predicted IoU at low resolution, before any upsampling; only the
  survivors are upsampled, in chunks, to compute stability and boxes;
- everything stays on the device (tensors, not lists of dicts, no deep copies) until the
  final masks, whose RLE change points are found on the device in one pass;
- the host work for one image (RLE strings, hole/island clean-up, records) runs in a thread
  while the device works on the next image.

Parity with the stock class is tested in ``tests/test_fast_generator.py`` and measured by
``benchmarks/generator_bench.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sam2.utils.amg import (
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    uncrop_masks,
)
from torchvision.ops.boxes import batched_nms, box_area

from pipeline.core import rle
from pipeline.core.config import AMGConfig
from pipeline.model import decoder
from pipeline.model.records import (
    Outcome,
    autocast,
    fix_feature_sizes,
    mask_records,
    remove_small_regions_and_duplicates,
)

# Survivors of the predicted-IoU filter upsampled at once (bounds full-resolution memory).
UPSAMPLE_CHUNK = 64


@dataclass
class ImageMasks:
    """One image's masks after every device-side filter, before RLE.

    ``masks`` holds each kept mask at its crop's resolution; ``crop_index`` says which of
    ``crop_boxes`` (XYXY, image frame) it came from. Scores and boxes are per mask.
    """

    masks: list[torch.Tensor]
    crop_boxes: list[list[int]]
    crop_index: torch.Tensor
    iou_preds: torch.Tensor
    stability: torch.Tensor
    points: torch.Tensor
    boxes: torch.Tensor


class FastMaskGenerator:
    """SA-1B style mask records, the stock generator's masks at a fraction of its cost.

    Args:
        model: a built SAM 2 model (``pipeline.model.registry.build_model``), in eval mode.
        amg: generator settings; every field of ``AMGConfig`` means what it means for sam2.
        dtype: ``float32`` (parity with the stock generator), ``bfloat16`` or ``float16``.
        points_per_batch: prompts decoded together (memory: about 12 MB each at 1024 px).
        encoder_batch: crops, from one image or several, encoded together.
        compile: compile the image encoder and mask decoder with ``torch.compile``.
        tf32: let CUDA float32 matrix products use TensorFloat-32 (faster, less exact).
        decoder_method: ``reassociated`` or ``shared`` (``pipeline.model.decoder``).
    """

    def __init__(
        self,
        model: Any,
        amg: AMGConfig,
        dtype: str = "float32",
        points_per_batch: int = 256,
        encoder_batch: int = 1,
        compile: bool = False,
        tf32: bool = False,
        decoder_method: str = "reassociated",
    ) -> None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        if decoder_method not in decoder.METHODS:
            raise ValueError(
                f"generator.decoder={decoder_method!r} is not one of {sorted(decoder.METHODS)}"
            )
        self.decoder_method = decoder_method

        self.settings = amg
        self.dtype = dtype
        self.model = model
        self.device = next(model.parameters()).device
        self.points_per_batch = points_per_batch
        self.encoder_batch = encoder_batch
        # The predictor is kept for its transforms and feature sizes, exactly as sam2 uses them.
        self.predictor = SAM2ImagePredictor(model)
        fix_feature_sizes(self.predictor)
        self.resolution = int(model.image_size)
        self.point_grids = build_all_layer_point_grids(
            amg.points_per_side, amg.crop_n_layers, amg.crop_n_points_downscale_factor
        )
        self.encoder = torch.compile(model.forward_image) if compile else model.forward_image
        # Point prompts share the image side of the decoder; mask prompts (m2m) use sam2's.
        self.shared_decoder = torch.compile(decoder.decode) if compile else decoder.decode
        self.pad_batches = compile  # static shapes: no recompilation for the last batch
        self.tf32 = tf32
        self.host = ThreadPoolExecutor(1, thread_name_prefix="masks-host")

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks for one image: (h, w, 3) uint8 RGB → records as ``MaskGenerator.generate``."""
        ((_, outcome),) = list(self.generate_many([(None, image)]))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def generate_many(self, items: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Outcome]]:
        """Masks for a stream of images, the device and the host working in parallel.

        Args:
            items: ``(key, image)`` pairs; ``image`` is (h, w, 3) uint8 RGB, or an exception
                (a failed decode), which is passed through in its place.

        Yields:
            ``(key, records)`` in input order; ``records`` is an exception where that image
            failed (the caller decides whether it is the image's fault or the device's).
        """
        pending: list[tuple[Any, Future | BaseException]] = []
        for group in self.groups(items):
            for key, outcome in self.device_stage(group):
                pending.append((key, outcome))
            while len(pending) > len(group):  # keep one group's host work in flight
                yield settle(*pending.pop(0))
        for key, outcome in pending:
            yield settle(key, outcome)

    def groups(self, items: Iterable[tuple[Any, Any]]) -> Iterator[list[tuple[Any, Any]]]:
        """Consecutive items whose crops fill one encoder batch."""
        group: list[tuple[Any, Any]] = []
        crops = 0
        for key, image in items:
            group.append((key, image))
            if not isinstance(image, BaseException):
                crops += self.crop_count(image)
            if crops >= self.encoder_batch:
                yield group
                group, crops = [], 0
        if group:
            yield group

    def crops(self, image: Any) -> list[tuple[list[int], int]]:
        """sam2's crops of this image: ``(box XYXY, layer)``, the whole image first."""
        boxes, layers = generate_crop_boxes(
            image.shape[:2], self.settings.crop_n_layers, self.settings.crop_overlap_ratio
        )
        return list(zip(boxes, layers, strict=True))

    def crop_count(self, image: Any) -> int:
        """How many crops sam2 makes of this image (1 for an image it cannot crop: that
        image's own generation reports the problem)."""
        try:
            return len(self.crops(image))
        except Exception:
            return 1

    def device_stage(self, group: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        """Encode a group's images together, then decode each; hand the rest to the host."""
        matmul = torch.backends.cuda.matmul
        before, matmul.allow_tf32 = matmul.allow_tf32, self.tf32 or matmul.allow_tf32
        try:
            return self.device_work(group)
        finally:
            matmul.allow_tf32 = before

    def device_work(self, group: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        """``device_stage``'s work."""
        images = [(k, im) for k, im in group if not isinstance(im, BaseException)]
        try:
            features = self.encode([im for _, im in images]) if images else []
        except Exception as error:
            if len(images) <= 1:
                features = [error] * len(images)
            else:  # find the image at fault: encode them one by one
                return [out for item in group for out in self.device_work([item])]
        feature_of = {id(im): f for (_, im), f in zip(images, features, strict=True)}
        out: list[tuple[Any, Any]] = []
        for key, image in group:
            if isinstance(image, BaseException):
                out.append((key, image))
                continue
            outcome = feature_of[id(image)]
            if not isinstance(outcome, BaseException):
                try:
                    host = self.to_host(self.image_masks(image, outcome), image.shape[:2])
                    outcome = self.host.submit(self.host_stage, host)
                except Exception as error:
                    outcome = error
            out.append((key, outcome))
        return out

    @torch.inference_mode()
    def encode(self, images: list[np.ndarray]) -> list[list[Any]]:
        """Every crop of every image through the image encoder, ``encoder_batch`` at a time.

        Returns:
            Per image, per crop: ``(crop_box, layer, features)``, ``features`` as sam2's
            predictor keeps them (``image_embed`` and the two high-resolution levels).
        """
        crops = [
            (index, box, layer)
            for index, image in enumerate(images)
            for box, layer in self.crops(image)
        ]
        per_image: list[list[Any]] = [[] for _ in images]
        for start in range(0, len(crops), self.encoder_batch):
            chunk = crops[start : start + self.encoder_batch]
            pixels = [images[i][box[1] : box[3], box[0] : box[2]] for i, box, _ in chunk]
            levels = self.encode_crops(pixels)
            for row, (index, box, layer) in enumerate(chunk):
                features = [level[row : row + 1] for level in levels]
                per_image[index].append((box, layer, features))
        return per_image

    def encode_crops(self, crops: list[np.ndarray]) -> list[torch.Tensor]:
        """Crops → the model's feature levels, batched (sam2's ``set_image``, on the device)."""
        transform = self.predictor._transforms.transforms  # resize + normalise, as sam2 does
        batch = torch.stack(
            [
                transform(
                    torch.from_numpy(np.ascontiguousarray(crop))
                    .to(self.device)
                    .permute(2, 0, 1)
                    .float()
                    .div(255.0)
                )
                for crop in crops
            ]
        )
        with autocast(self.device.type, self.dtype):
            backbone = self.encoder(batch)
            _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone)
            if self.model.directly_add_no_mem_embed:
                vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        n = len(crops)
        # Paired from the lowest resolution up, as sam2's predictor pairs them: a model without
        # high-resolution features in its decoder has one level, the image embedding.
        sizes = self.predictor._bb_feat_sizes[::-1]
        levels = [
            feat.permute(1, 2, 0).reshape(n, -1, *size)
            for feat, size in zip(vision_feats[::-1], sizes, strict=False)
        ]
        return levels[::-1]

    @torch.inference_mode()
    def image_masks(self, image: np.ndarray, crops: list[Any]) -> ImageMasks:
        """Decode every crop of one image, filter, de-duplicate; all on the device."""
        height, width = image.shape[:2]
        per_crop = [
            self.crop_masks(features, box, layer, (height, width)) for box, layer, features in crops
        ]
        found = ImageMasks(
            masks=[c["masks"] for c in per_crop],
            crop_boxes=[box for box, _, _ in crops],
            crop_index=torch.cat(
                [torch.full((len(c["iou_preds"]),), i) for i, c in enumerate(per_crop)]
            ),
            iou_preds=torch.cat([c["iou_preds"] for c in per_crop]),
            stability=torch.cat([c["stability"] for c in per_crop]),
            points=torch.cat([c["points"] for c in per_crop]),
            boxes=torch.cat([c["boxes"] for c in per_crop]),
        )
        if len(crops) > 1:  # duplicates between crops: prefer masks from smaller crops
            crop_boxes = torch.as_tensor(found.crop_boxes, device=self.device)[found.crop_index]
            keep = batched_nms(
                found.boxes.float(),
                1 / box_area(crop_boxes),
                torch.zeros_like(found.boxes[:, 0]),
                iou_threshold=self.settings.crop_nms_thresh,
            )
            found = select(found, keep.cpu())
        return found

    def crop_masks(
        self, features: list[torch.Tensor], crop_box: list[int], layer: int, orig: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """One crop: decode its point grid, filter as sam2 does, NMS, back to the image frame."""
        amg = self.settings
        x0, y0, x1, y1 = crop_box
        crop_hw = (y1 - y0, x1 - x0)
        points_np = self.point_grids[layer] * np.array(crop_hw)[None, ::-1]
        points = torch.as_tensor(points_np, dtype=torch.float32, device=self.device)
        low_res, iou_preds, point_of = self.decode_points(features, points, crop_hw)
        boxes, stability, rows = self.stable_boxes(low_res, crop_box, orig)
        iou_preds = iou_preds[rows]
        keep = batched_nms(
            boxes.float(), iou_preds, torch.zeros_like(boxes[:, 0]), amg.box_nms_thresh
        )
        offset = torch.tensor([x0, y0, x0, y0], device=self.device)
        return {
            # Only NMS's survivors are upsampled a second time (the same result as the first).
            "masks": self.binary_masks(low_res[rows[keep]], crop_hw),
            "boxes": boxes[keep] + offset,
            "iou_preds": iou_preds[keep],
            "stability": stability[keep].float(),
            "points": points[point_of[rows[keep]]] + offset[:2],
        }

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
        self, low_res: torch.Tensor, crop_box: list[int], orig: tuple[int, int]
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
            inside = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig[1], orig[0]])
            kept.append((boxes[inside], stability[inside], rows[inside]))
        boxes, stability, rows = (torch.cat(column) for column in zip(*kept, strict=True))
        return boxes, stability, rows

    def decode_points(
        self, features: list[torch.Tensor], points: torch.Tensor, crop_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All of a crop's prompts through the decoder, keeping masks above ``pred_iou_thresh``.

        Returns:
            Low-resolution logits (n, 256, 256) and predicted IoUs (n,) of the kept masks,
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
        """Decode point prompts with the shared-image decoder, keeping the masks above
        ``pred_iou_thresh`` (only their prompts are upscaled).

        Returns:
            Kept logits (n, 256, 256), their IoUs (n,) and rows in sam2's (b * m) order.
        """
        model, n = self.model, len(coords)
        with autocast(self.device.type, self.dtype):
            sparse, dense = self.prompt_embeddings(self.padded(coords))
            return self.shared_decoder(
                model.sam_mask_decoder,
                features[-1],
                model.sam_prompt_encoder.get_dense_pe(),
                sparse,
                dense,
                features[:-1],
                self.settings.multimask_output,
                self.settings.pred_iou_thresh,
                n,
                self.decoder_method,
            )

    def padded(self, coords: torch.Tensor) -> torch.Tensor:
        """With ``compile``: the last batch padded to ``points_per_batch`` (static shapes)."""
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
        """sam2's ``_predict`` through sam2's own decoder: logits (b, m, 256, 256), IoUs (b, m).

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

    @torch.inference_mode()
    def to_host(self, found: ImageMasks, image_hw: tuple[int, int]) -> HostMasks:
        """What the host needs of one image's masks: RLE change points, or the masks themselves
        when holes and islands must be removed (OpenCV works on the host)."""
        height, width = image_hw
        runs: list[list[tuple[np.ndarray, np.ndarray]]] = []
        full: list[list[np.ndarray]] = []
        for crop in range(len(found.masks)):
            chunks = list(self.full_frames(found, crop, image_hw))
            if self.settings.min_mask_region_area > 0:
                full.append([mask for chunk in chunks for mask in chunk.cpu().numpy()])
            else:
                runs.append([rle.column_changes(chunk) for chunk in chunks])
        crop_index = found.crop_index.numpy()
        return HostMasks(
            height=height,
            width=width,
            crop_index=crop_index,
            iou_preds=found.iou_preds.cpu().numpy(),
            stability=found.stability.cpu().numpy(),
            points=found.points.cpu().numpy(),
            crop_boxes=np.asarray(found.crop_boxes, dtype=np.float64)[crop_index],
            runs=runs,
            masks=np.stack(in_order(crop_index, full)) if any(full) else None,
        )

    def full_frames(
        self, found: ImageMasks, crop: int, image_hw: tuple[int, int]
    ) -> Iterator[torch.Tensor]:
        """One crop's kept masks, padded to the whole image (sam2's ``uncrop_masks``), in chunks."""
        for start in range(0, len(found.masks[crop]), UPSAMPLE_CHUNK):
            chunk = found.masks[crop][start : start + UPSAMPLE_CHUNK]
            yield uncrop_masks(chunk, found.crop_boxes[crop], *image_hw)

    def host_stage(self, host: HostMasks) -> list[dict[str, Any]]:
        """RLE strings, optional hole/island clean-up and records: host work, in a thread."""
        if self.settings.min_mask_region_area > 0:
            masks = host.masks
            if masks is None:
                masks = np.zeros((0, host.height, host.width), dtype=bool)
            nms = max(self.settings.box_nms_thresh, self.settings.crop_nms_thresh)
            masks, keep = remove_small_regions_and_duplicates(
                masks, self.settings.min_mask_region_area, nms
            )
            host = host.select(keep)
            segmentations = [rle.encode_mask(mask) for mask in masks]
        else:
            per_crop = [
                [
                    r
                    for first, changes in chunks
                    for r in rle.from_changes(first, changes, host.height, host.width)
                ]
                for chunks in host.runs
            ]
            segmentations = in_order(host.crop_index, per_crop)
        return mask_records(
            segmentations,
            host.iou_preds,
            host.stability,
            host.points,
            host.crop_boxes,
            self.settings.max_mask_area_fraction * host.height * host.width,
        )


@dataclass
class HostMasks:
    """One image's kept masks on the host: scores per mask, and either the RLE change points
    per crop (``runs``, chunks as ``rle.column_changes`` returns them) or full-frame masks."""

    height: int
    width: int
    crop_index: np.ndarray
    iou_preds: np.ndarray
    stability: np.ndarray
    points: np.ndarray
    crop_boxes: np.ndarray
    runs: list[list[tuple[np.ndarray, np.ndarray]]]
    masks: np.ndarray | None

    def select(self, keep: np.ndarray) -> HostMasks:
        """The scores of the masks at ``keep``, in that order (masks and runs are dropped)."""
        return HostMasks(
            height=self.height,
            width=self.width,
            crop_index=self.crop_index[keep],
            iou_preds=self.iou_preds[keep],
            stability=self.stability[keep],
            points=self.points[keep],
            crop_boxes=self.crop_boxes[keep],
            runs=[],
            masks=None,
        )


def in_order(crop_index: np.ndarray, per_crop: list[list[Any]]) -> list[Any]:
    """Items listed crop by crop → the order of ``crop_index`` (each crop's items in turn)."""
    cursor = [0] * len(per_crop)
    ordered = []
    for crop in crop_index.tolist():
        ordered.append(per_crop[crop][cursor[crop]])
        cursor[crop] += 1
    return ordered


def select(found: ImageMasks, keep: torch.Tensor) -> ImageMasks:
    """The masks at ``keep`` (indices into ``found``), in that order."""
    keep = keep.to(torch.long).cpu()
    crop_index = found.crop_index[keep]
    masks = []
    for crop, stack in enumerate(found.masks):
        positions = (found.crop_index == crop).nonzero()[:, 0]
        local = torch.full((len(found.crop_index),), -1, dtype=torch.long)
        local[positions] = torch.arange(len(positions))
        # each crop's stack in the order its masks now appear
        masks.append(stack[local[keep[crop_index == crop]].to(stack.device)])
    on_device = keep.to(found.iou_preds.device)
    return ImageMasks(
        masks=masks,
        crop_boxes=found.crop_boxes,
        crop_index=crop_index,
        iou_preds=found.iou_preds[on_device],
        stability=found.stability[on_device],
        points=found.points[on_device],
        boxes=found.boxes[on_device],
    )


def settle(key: Any, outcome: Future | BaseException) -> tuple[Any, Outcome]:
    """Wait for an image's host work; its exception becomes its outcome."""
    if isinstance(outcome, BaseException):
        return key, outcome
    try:
        return key, outcome.result()
    except Exception as error:
        return key, error
