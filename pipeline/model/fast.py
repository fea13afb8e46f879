"""The stock generator's masks, several times faster: ``generator.impl=fast`` (the default).

Same parameters, same steps and the same order as sam2's ``SAM2AutomaticMaskGenerator``
(followed by ``pipeline.model.reference.MaskGenerator``'s clean-up), with the waste taken out.
The work is layered by granularity:

- images (here): a stream of images is grouped so that every crop of an image (and of the next
  images, up to ``encoder_batch``) goes through the image encoder in one batch, resized on the
  device; each image's crops are decoded, de-duplicated across crops and handed to a host
  thread (RLE strings, hole/island clean-up, records) while the device works on the next;
- crops (``pipeline.model.crops``): a crop's point grid → its masks, filtered as sam2 filters
  them, on the device, full-resolution work only for masks that pass the predicted-IoU filter;
- prompt batches (``pipeline.model.decoder``): the mask decoder with the image side computed
  once per crop and the per-prompt products re-associated.

Per-mask data travels in one container, ``pipeline.model.masks.MaskData``. Parity with the
stock class is tested in ``tests/test_fast_generator.py`` and measured by
``benchmarks/generator_bench.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from sam2.utils.amg import build_all_layer_point_grids, generate_crop_boxes, uncrop_masks
from torchvision.ops.boxes import batched_nms, box_area

from pipeline.core import rle
from pipeline.core.config import AMGConfig
from pipeline.model import decoder
from pipeline.model.crops import UPSAMPLE_CHUNK, CropMasker
from pipeline.model.masks import MaskData
from pipeline.model.records import (
    Outcome,
    autocast,
    fix_feature_sizes,
    mask_records,
    remove_small_regions_and_duplicates,
)


class FastMaskGenerator:
    """SA-1B style mask records, the stock generator's masks at a fraction of its cost.

    Args:
        model: a built SAM 2 model (``pipeline.model.registry.build_model``), in eval mode.
        amg: generator settings; every field of ``AMGConfig`` means what it means for sam2.
        dtype: ``float32`` (parity with the stock generator), ``bfloat16`` or ``float16``.
        points_per_batch: prompts decoded together (memory: about 12 MB each at 1024 px).
        encoder_batch: crops, from one image or several, encoded together.
        compile: compile the image encoder and the decoder's transformer with ``torch.compile``.
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

        self.settings = amg
        self.dtype = dtype
        self.model = model
        self.device = next(model.parameters()).device
        self.encoder_batch = encoder_batch
        # The predictor is kept for its transforms and feature sizes, exactly as sam2 uses them.
        self.predictor = SAM2ImagePredictor(model)
        fix_feature_sizes(self.predictor)
        self.point_grids = build_all_layer_point_grids(
            amg.points_per_side, amg.crop_n_layers, amg.crop_n_points_downscale_factor
        )
        self.encoder = torch.compile(model.forward_image) if compile else model.forward_image
        # Point prompts share the image side of the decoder; mask prompts (m2m) use sam2's.
        # With compile, batches are padded to one size (static shapes: no recompilation).
        self.crop = CropMasker(
            model,
            amg,
            dtype,
            points_per_batch,
            functools.partial(decoder.decode, compiled=True) if compile else decoder.decode,
            decoder_method,
            pad_batches=compile,
        )
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
                    found = self.image_masks(image, outcome)
                    host = self.to_host(found, outcome, image.shape[:2])
                    outcome = self.host.submit(self.host_stage, host, image.shape[:2])
                except Exception as error:
                    outcome = error
            out.append((key, outcome))
        return out

    @torch.inference_mode()
    def encode(self, images: list[np.ndarray]) -> list[list[Any]]:
        """Every crop of every image through the image encoder, ``encoder_batch`` at a time.

        Returns:
            Per image, per crop: ``(crop_box, layer, features)``, ``features`` the levels
            sam2's predictor keeps: the high-resolution ones (none for a model without them in
            its decoder) and the image embedding, last.
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
    def image_masks(self, image: np.ndarray, crops: list[Any]) -> MaskData:
        """Decode every crop of one image, de-duplicate across crops; all on the device.

        Returns:
            The crops' ``MaskData`` columns, plus ``crop_index`` (which of ``crops`` each
            mask came from).
        """
        height, width = image.shape[:2]
        per_crop = []
        for index, (box, layer, features) in enumerate(crops):
            found = self.crop.masks(features, self.point_grids[layer], box, (height, width))
            per_crop.append(found.with_columns(crop_index=torch.full((len(found),), index)))
        found = MaskData.cat(per_crop)
        if len(crops) > 1:  # duplicates between crops: prefer masks from smaller crops
            crop_boxes = torch.as_tensor([box for box, _, _ in crops], device=self.device)
            keep = batched_nms(
                found["boxes"].float(),
                1 / box_area(crop_boxes[found["crop_index"]]),
                torch.zeros_like(found["boxes"][:, 0]),
                iou_threshold=self.settings.crop_nms_thresh,
            )
            found = found.filter(keep)
        return found

    @torch.inference_mode()
    def to_host(self, found: MaskData, crops: list[Any], image_hw: tuple[int, int]) -> MaskData:
        """What the host needs of one image's masks, as NumPy columns: each mask's RLE change
        points (``first``, ``changes``), or the mask itself (``full``) when holes and islands
        must be removed (OpenCV works on the host), with its scores and crop box."""
        crop_index = found["crop_index"].numpy()
        shapes = self.full_frames(found, crops, crop_index, image_hw)
        crop_boxes = np.asarray([box for box, _, _ in crops], dtype=np.float64).reshape(-1, 4)
        return found.to_host("iou_preds", "stability", "points").with_columns(
            crop_boxes=crop_boxes[crop_index], **shapes
        )

    def full_frames(
        self,
        found: MaskData,
        crops: list[Any],
        crop_index: np.ndarray,
        image_hw: tuple[int, int],
    ) -> dict[str, list]:
        """Each mask padded to the whole image (sam2's ``uncrop_masks``), crop by crop in
        chunks: as change points, or as host arrays (``min_mask_region_area``)."""
        full = self.settings.min_mask_region_area > 0
        columns: dict[str, list] = (
            {"full": [None] * len(found)}
            if full
            else {"first": [None] * len(found), "changes": [None] * len(found)}
        )
        for crop in np.unique(crop_index):
            rows = np.flatnonzero(crop_index == crop)
            for start in range(0, len(rows), UPSAMPLE_CHUNK):
                chunk = rows[start : start + UPSAMPLE_CHUNK]
                stack = torch.stack([found["masks"][k] for k in chunk])
                masks = uncrop_masks(stack, crops[crop][0], *image_hw)
                if full:
                    for k, mask in zip(chunk, masks.cpu().numpy(), strict=True):
                        columns["full"][k] = mask
                    continue
                first, changes = rle.column_changes(masks)
                bounds = np.searchsorted(changes[:, 0], np.arange(len(chunk) + 1))
                for j, k in enumerate(chunk):
                    columns["first"][k] = bool(first[j])
                    columns["changes"][k] = changes[bounds[j] : bounds[j + 1], 1]
        return columns

    def host_stage(self, host: MaskData, image_hw: tuple[int, int]) -> list[dict[str, Any]]:
        """RLE strings, optional hole/island clean-up and records: host work, in a thread."""
        height, width = image_hw
        if "full" in host:
            masks = np.stack(host["full"]) if len(host) else np.zeros((0, height, width), bool)
            nms = max(self.settings.box_nms_thresh, self.settings.crop_nms_thresh)
            masks, keep = remove_small_regions_and_duplicates(
                masks, self.settings.min_mask_region_area, nms
            )
            host = host.filter(np.asarray(keep, dtype=np.int64))
            segmentations = [rle.encode_mask(mask) for mask in masks]
        else:
            changes = [
                np.stack([np.full(len(c), k), c], axis=1).reshape(-1, 2)
                for k, c in enumerate(host["changes"])
            ]
            segmentations = rle.from_changes(
                np.asarray(host["first"], dtype=bool),
                np.concatenate(changes) if changes else np.zeros((0, 2), np.int64),
                height,
                width,
            )
        return mask_records(
            segmentations,
            host["iou_preds"],
            host["stability"],
            host["points"],
            host["crop_boxes"],
            self.settings.max_mask_area_fraction * height * width,
        )


def settle(key: Any, outcome: Future | BaseException) -> tuple[Any, Outcome]:
    """Wait for an image's host work; its exception becomes its outcome."""
    if isinstance(outcome, BaseException):
        return key, outcome
    try:
        return key, outcome.result()
    except Exception as error:
        return key, error
