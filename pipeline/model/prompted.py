"""Masks for prompts the user already has (boxes and clicks): one mask per prompt.

Each image is encoded once (``SAM2ImagePredictor.set_image``) and its prompts are decoded in
batches of the same shape (box or not, number of clicks): sam2's predictor transforms and
embeds them, ``pipeline.model.decoder`` decodes them (the image side shared, the per-prompt
products re-associated), and the predictor upscales the masks, so a prompt's mask and score
are what ``SAM2ImagePredictor.predict`` gives for it alone, to float rounding.
``multimask_output`` follows SAM's advice unless set: three masks for a single click (the one
with the highest predicted IoU is kept), one for a box or several clicks.

Small boxes are zoomed (``prompts.zoom_below``): a box under that many pixels at the model's
input is segmented on a square crop around it (``prompts.zoom_context`` times its longer side,
at least an eighth of the input size) that the model sees at its full input size, so that the
low-resolution mask, a quarter of the input size, has more cells on the object; its record's
``crop_box`` is that crop. Prompts on the same crop share its encoding. A mask that reaches
an inner edge of its crop (the object goes on outside) is decoded on the whole image instead.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np
import torch
from sam2.utils.amg import calculate_stability_score

from pipeline.core import rle
from pipeline.core.config import AMGConfig, PromptsConfig
from pipeline.core.prompt import Prompt
from pipeline.model import decoder
from pipeline.model.records import autocast, fill_holes_and_islands, fix_feature_sizes

# A prompt's result: its mask record, or the one-line reason it has none.
PromptResult = dict[str, Any] | str
# A prompt to decode: its index, the prompt (image pixels), its box (x0, y0, x1, y1) or None.
Member = tuple[int, Prompt, list[float] | None]


class PromptedGenerator:
    """Box and click prompts → one mask record per prompt.

    Args:
        model: a built SAM 2 model, in eval mode.
        amg: ``mask_threshold``, ``stability_score_offset`` and ``min_mask_region_area`` apply.
        dtype: ``float32``, ``bfloat16`` or ``float16`` (autocast).
        batch: prompts decoded together.
        multimask: force ``multimask_output`` (None: SAM's advice, see the module docstring).
        zoom: which boxes are segmented again on a crop (None: the defaults; see the module
            docstring).
    """

    def __init__(
        self,
        model: Any,
        amg: AMGConfig,
        dtype: str = "float32",
        batch: int = 64,
        multimask: bool | None = None,
        zoom: PromptsConfig | None = None,
    ) -> None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.settings, self.dtype, self.batch, self.multimask = amg, dtype, batch, multimask
        self.zoom = zoom or PromptsConfig()
        self.predictor = SAM2ImagePredictor(model, mask_threshold=amg.mask_threshold)
        fix_feature_sizes(self.predictor)
        self.input_size = int(model.image_size)
        self.device_type = next(model.parameters()).device.type

    @torch.inference_mode()
    def generate(self, image: np.ndarray, prompts: list[Prompt]) -> list[PromptResult]:
        """One result per prompt, in order.

        Args:
            image: (h, w, 3) uint8 RGB.
            prompts: what to segment.
        """
        height, width = image.shape[:2]
        results: list[PromptResult] = [""] * len(prompts)
        groups: dict[tuple[bool, int], list[Member]] = defaultdict(list)
        zoomed: dict[tuple[Window, int], list[Member]] = defaultdict(list)
        for index, prompt in enumerate(prompts):
            if (wrong := prompt.non_finite()) is not None:
                results[index] = f"a coordinate of the prompt is not a finite number: {wrong}"
                continue
            prompt = prompt.in_pixels(width, height)
            box = clipped_box(prompt.box, width, height) if prompt.box is not None else None
            if prompt.box is not None and box is None:
                results[index] = "the prompt's box has no area inside the image"
            elif prompt.box is None and not prompt.points:
                results[index] = "the prompt has neither a box nor points"
            elif box is not None and (window := self.zoom_window(box, prompt, width, height)):
                zoomed[(window, len(prompt.points))].append((index, prompt, box))
            else:
                groups[(box is not None, len(prompt.points))].append((index, prompt, box))
        with autocast(self.device_type, self.dtype):
            for (window, clicks), members in zoomed.items():
                for member, logits, iou in self.decode_on_crop(image, window, clicks, members):
                    if cut_by_crop(logits > self.settings.mask_threshold, window, width, height):
                        groups[(True, clicks)].append(member)  # its object leaves the crop
                    else:
                        results[member[0]] = self.record(
                            logits, iou, member[1], (height, width), window
                        )
            if groups:  # nothing to decode on the whole image: no need to encode it
                self.predictor.set_image(image)
            for (has_box, clicks), members in groups.items():
                for start in range(0, len(members), self.batch):
                    chunk = members[start : start + self.batch]
                    decoded = self.decode(chunk, has_box, clicks)
                    for (index, prompt, _), (logits, iou) in zip(chunk, decoded, strict=True):
                        results[index] = self.record(logits, iou, prompt, (height, width))
        return results

    def zoom_window(
        self, box: list[float], prompt: Prompt, width: int, height: int
    ) -> Window | None:
        """The square crop a box is segmented on, or None when it is not zoomed: a large box,
        zooming off, a crop that would be the whole image or could not hold the box (a long
        box in a narrow image), or a click of the prompt outside the crop.

        Args:
            box: (x0, y0, x1, y1) in image pixels, inside the image.
            prompt: the prompt, in image pixels (its clicks must fall inside the crop).
            width, height: the image's size.
        """
        longer = max(box[2] - box[0], box[3] - box[1])
        # sam2 resizes the image to a square input, each side by its own factor
        at_input = max((box[2] - box[0]) / width, (box[3] - box[1]) / height) * self.input_size
        if not self.zoom.zoom_below or at_input >= self.zoom.zoom_below:
            return None
        # a tiny box's crop is at least an eighth of the input size (in image pixels): it is
        # not blown up more than 8 times
        side = max(self.zoom.zoom_context * longer, self.input_size / 8)
        side = min(math.ceil(side), width, height)
        if side >= max(width, height):
            return None
        x0 = min(max(int(round((box[0] + box[2] - side) / 2)), 0), width - side)
        y0 = min(max(int(round((box[1] + box[3] - side) / 2)), 0), height - side)
        window = Window(x0, y0, side)
        corners = ((box[0], box[1]), (box[2] - 1e-6, box[3] - 1e-6))
        if not all(window.holds(x, y) for x, y in (*corners, *prompt.points)):
            return None
        return window

    def decode_on_crop(
        self, image: np.ndarray, window: Window, clicks: int, members: list[Member]
    ) -> Iterator[tuple[Member, np.ndarray, float]]:
        """Box prompts (with ``clicks`` clicks each) decoded on one crop of the image, the crop
        encoded once: each member with its mask logits at the crop's size and its predicted
        IoU."""
        x0, y0, side = window
        self.predictor.set_image(np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side]))
        shifted = [
            (
                index,
                replace(prompt, points=tuple((x - x0, y - y0) for x, y in prompt.points)),
                [box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0],
            )
            for index, prompt, box in members
        ]
        for start in range(0, len(members), self.batch):
            stop = start + self.batch
            decoded = self.decode(shifted[start:stop], True, clicks)
            for member, (logits, iou) in zip(members[start:stop], decoded, strict=True):
                yield member, logits, iou

    def decode(self, chunk: list, has_box: bool, clicks: int) -> list[tuple[np.ndarray, float]]:
        """Masks of prompts of one shape, decoded together: sam2's predictor's prompt
        transforms and encoder, then ``pipeline.model.decoder`` (the image side shared, the
        per-prompt products re-associated), then the predictor's upscaling to the image set.
        Each prompt's mask logits (at that image's size) and predicted IoU, best of the
        masks when several are decoded."""
        multimask = self.multimask
        if multimask is None:
            multimask = not has_box and clicks == 1
        coords = labels = boxes = None
        if clicks:
            coords = np.array([p.points for _, p, _ in chunk], dtype=np.float32)
            labels = np.array([p.point_labels for _, p, _ in chunk], dtype=np.int32)
        if has_box:
            boxes = np.array([box for _, _, box in chunk], dtype=np.float32)
        predictor, model = self.predictor, self.predictor.model
        _, coords, labels, boxes = predictor._prep_prompts(coords, labels, boxes, None, True)
        sparse, dense = model.sam_prompt_encoder(
            points=merged_points(coords, labels, boxes), boxes=None, masks=None
        )
        features = predictor._features
        low_res, iou, _ = decoder.decode(
            model.sam_mask_decoder,
            features["image_embed"],
            model.sam_prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            features["high_res_feats"],
            multimask,
        )
        low_res = low_res.view(len(chunk), -1, *low_res.shape[-2:])
        logits = predictor._transforms.postprocess_masks(low_res, predictor._orig_hw[-1])
        logits = logits.float().cpu().numpy()
        iou = iou.float().view(len(chunk), -1).cpu().numpy()
        best = iou.argmax(axis=1)
        return [(logits[i, best[i]], float(iou[i, best[i]])) for i in range(len(chunk))]

    def record(
        self,
        logits: np.ndarray,
        predicted_iou: float,
        prompt: Any,
        image_hw: tuple[int, int],
        window: Window | None = None,
    ) -> PromptResult:
        """A mask record from one mask's logits.

        Args:
            logits: at the image's size, or at the crop's when ``window`` is given.
            predicted_iou: the model's score for the mask.
            prompt: the prompt, in image pixels.
            image_hw: the image's (height, width).
            window: the crop the logits are on (a zoomed box), or None.
        """
        threshold, offset = self.settings.mask_threshold, self.settings.stability_score_offset
        mask = logits > threshold
        if self.settings.min_mask_region_area > 0:
            mask, _ = fill_holes_and_islands(mask, self.settings.min_mask_region_area)
        if not mask.any():
            return "the model found no mask for this prompt"
        height, width = image_hw
        crop_box = [0.0, 0.0, float(width), float(height)]
        if window is not None:
            x0, y0, side = window
            placed = np.zeros(image_hw, dtype=bool)
            placed[y0 : y0 + side, x0 : x0 + side] = mask
            mask, crop_box = placed, [float(x0), float(y0), float(side), float(side)]
        segmentation = rle.encode_mask(mask)
        return {
            "segmentation": segmentation,
            "area": rle.area(segmentation),
            "bbox": rle.bbox(segmentation),
            "predicted_iou": predicted_iou,
            "stability_score": float(
                calculate_stability_score(torch.from_numpy(logits), threshold, offset)
            ),
            "point_coords": [[float(x), float(y)] for x, y in prompt.points],
            "crop_box": crop_box,
        }


class Window(NamedTuple):
    """A square crop of the image: its top-left corner and side, in pixels."""

    x0: int
    y0: int
    side: int

    def holds(self, x: float, y: float) -> bool:
        """Whether the point (image pixels) lies inside the crop."""
        return self.x0 <= x < self.x0 + self.side and self.y0 <= y < self.y0 + self.side


def cut_by_crop(mask: np.ndarray, window: Window, width: int, height: int) -> bool:
    """Whether a crop's mask reaches an edge of the crop that is not an edge of the image:
    the object goes on outside the crop, so the mask would be cut there."""
    x0, y0, side = window
    return bool(
        (x0 > 0 and mask[:, 0].any())
        or (y0 > 0 and mask[0].any())
        or (x0 + side < width and mask[:, -1].any())
        or (y0 + side < height and mask[-1].any())
    )


def clipped_box(box: tuple, width: int, height: int) -> list[float] | None:
    """An (x, y, w, h) box as (x0, y0, x1, y1) clipped to the image; None when nothing is left."""
    x, y, w, h = box
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else None


def merged_points(
    coords: torch.Tensor | None, labels: torch.Tensor | None, boxes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes as two corner points (labels 2 and 3) before the clicks, as sam2's predictor
    gives them to the prompt encoder."""
    if boxes is None:
        return coords, labels
    corners = boxes.reshape(-1, 2, 2)
    corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device)
    corner_labels = corner_labels.repeat(boxes.size(0), 1)
    if coords is None:
        return corners, corner_labels
    return torch.cat([corners, coords], dim=1), torch.cat([corner_labels, labels], dim=1)
