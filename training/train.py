"""Train sam2-tiny-synthetic: a small SAM 2 that follows its prompt, on synthetic scenes.

Recipe (SAM's, scaled down, plus what made the prompt matter here):

- each step encodes a few scenes once and decodes many single-point prompts per scene (points
  on the objects, some on the background) and, optionally, jittered box prompts;
- mask loss: focal + dice on the best of the three multimask outputs and on the single-mask
  output (boxes: the single output only), with the IoU head regressed to each output's true
  IoU so ``predicted_iou`` and ``stability_score`` keep their meaning;
- **click losses** on all four outputs' low-resolution logits, sampled at the clicks: each
  output must be positive at its own click and negative at the other prompts' clicks (and at
  extra sampled pixels) that lie outside its target. A point-independent answer ("cover the
  salient objects", which a best-of-three mask loss alone rewards) cannot satisfy them;
- **q/k init** of the decoder's cross-attentions (``W_q = W_k = scale * Q``, Q with orthonormal
  rows, zero biases), which gives the click's position a path to its image tokens from the
  first step; without it the click losses cannot be satisfied either;
- optionally, a training-only instance head on the image embedding (pixels of one object close,
  of different objects far); it is not part of the saved model.

The learning rate warms up, stays at its peak and decays (cosine to 5 %) from ``decay_from`` to
``steps``. With ``--minutes`` both are chosen while training (decay starts at 70 % of the time
budget, the end is projected from the measured step rate) and written to ``run.json``, so
``--steps N --decay-from D`` replays the same schedule. Batches depend only on
``(seed, step)``, whatever the number of data workers, so a run resumes (from ``state.pt`` in
``--out``) on the same stream.

Run: ``python -m training.train --out runs/train --steps 600``; ``training/reproduce.sh``
holds the commands that made the shipped checkpoint, ``training/README.md`` what they gave.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from collections import deque
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.model.prompted import merged_points
from pipeline.model.registry import build_model, resolve_model
from pipeline.synthetic.scenes import Scene, make_scene

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
HELD_OUT_SEED = 7_777  # scenes never used for training
DEFAULT_CONFIG = "configs/models/sam2_tiny_synthetic.yaml"


@dataclass
class Recipe:
    """Everything that shapes a training run besides its length.

    Attributes:
        scenes_per_step: scenes encoded per step.
        prompts_per_scene: single-point prompts per scene (they share the scene's encoding).
        boxes_per_scene: jittered box prompts per scene (0: points only).
        tight_boxes: share of the box prompts given tight, without SAM's jitter (a detector's
            boxes are close to tight; 0 keeps the stream of earlier recipes unchanged).
        pixels_per_scene: extra random pixels per scene, used as negative clicks for the
            prompts whose target they are not in, and by the instance head.
        background: share of point prompts on the background (target: everything else).
        size: scene side in pixels.
        input_size: the model's input size (0: the config's ``image_size``); scenes are
            resized to it as sam2's predictor resizes images, prompts scaled with them, and
            masks compared at ``loss_size`` over the scene (a 512-px model looking at 256-px
            scenes draws its masks on a 128×128 grid, two scene pixels per cell).
        loss_size: masks are compared at this resolution.
        peak_lr: AdamW learning rate after warm-up.
        warmup: warm-up steps.
        curriculum_steps: steps over which the scenes' maximum difficulty rises to 1.
        min_difficulty: scenes' difficulty is drawn from [min_difficulty, maximum]; harder
            scenes have more, smaller and thinner shapes (the held-out and evaluation scenes
            are all at difficulty 1), so a floor puts more small objects into training.
        focal_weight, dice_weight, iou_weight: mask and IoU-head loss weights.
        small_iou_weight: extra IoU-head weight on prompts whose object is small (COCO's
            rule, under 32² pixels), whose IoU the head under-rates (0: all alike).
        stability_weight: weight of a soft stability loss, 1 - area(logit > 1) / area(logit
            > -1) with sigmoid edges, on the chosen and single-mask outputs: the generator's
            stability filter drops small masks whose logits are soft at the edge (0: off).
        click_weight: weight of "positive at the own click".
        other_click_weight: weight of "negative at clicks outside the target".
        instance_weight: weight of the training-only instance-embedding loss (0: no head).
        qk_init_scale: scale of the decoder's q/k init (0: sam2's default init).
        freeze_encoder: train the prompt encoder and mask decoder only; the image encoder
            (Hiera and FPN neck) keeps its weights and runs without gradients (at a 512-px
            input this saved only an eighth of a CPU step: the decoder's per-prompt work
            dominates).
    """

    scenes_per_step: int = 4
    prompts_per_scene: int = 16
    boxes_per_scene: int = 0
    tight_boxes: float = 0.0
    pixels_per_scene: int = 0
    background: float = 0.2
    size: int = 256
    input_size: int = 0
    loss_size: int = 128
    peak_lr: float = 3e-4
    warmup: int = 50
    curriculum_steps: int = 300
    min_difficulty: float = 0.0
    focal_weight: float = 1.0
    dice_weight: float = 5.0
    iou_weight: float = 1.0
    small_iou_weight: float = 0.0
    stability_weight: float = 0.0
    click_weight: float = 1.0
    other_click_weight: float = 1.0
    instance_weight: float = 0.0
    qk_init_scale: float = 2.0
    freeze_encoder: bool = False


# ----------------------------------------------------------------------------- data


def owner_map(scene: Scene) -> np.ndarray:
    """(h, w) int16: the index of the object each pixel shows, -1 on the background."""
    owners = np.full(scene.image.shape[:2], -1, np.int16)
    for index, mask in enumerate(scene.masks):
        owners[mask] = index
    return owners


def random_pixel(rng: np.random.Generator, mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of a uniformly chosen pixel of ``mask``."""
    ys, xs = np.nonzero(mask)
    pick = int(rng.integers(len(xs)))
    return int(xs[pick]), int(ys[pick])


def point_prompts(rng: np.random.Generator, owners: np.ndarray, count: int, background: float):
    """``count`` single-point prompts: (x, y) points and the object each targets (-1: background).

    Prompts go round the scene's objects in turn (a share to the background), so one encoding
    carries several different targets.
    """
    objects = int(owners.max()) + 1
    order = rng.permutation(objects)
    points, targets = [], []
    for index in range(count):
        target = -1 if objects == 0 or rng.random() < background else int(order[index % objects])
        if target == -1 and not (owners == -1).any():
            target = int(order[index % objects])
        points.append(random_pixel(rng, owners == target))
        targets.append(target)
    return np.array(points, np.float32), np.array(targets, np.int64)


def box_prompts(rng: np.random.Generator, owners: np.ndarray, count: int, tight: float = 0.0):
    """``count`` box prompts (x0, y0, x1, y1) around objects, and the object each targets.

    Each box is jittered as SAM does (noise of std 10 % of the side, at most 20 px), except a
    share ``tight`` of them (drawn per box), which are left tight.
    """
    objects = int(owners.max()) + 1
    if objects == 0 or count == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    h, w = owners.shape
    boxes, targets = [], []
    for index in rng.permutation(np.arange(count) % objects):
        box = np.array(mask_box(owners == index), np.float32)
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float32)
        if not (tight and rng.random() < tight):
            box += np.clip(rng.normal(0, 0.1 * side), -20, 20)
        boxes.append(np.clip(box, 0, [w, h, w, h]))
        targets.append(int(index))
    return np.stack(boxes).astype(np.float32), np.array(targets, np.int64)


def difficulty_at(step: int, recipe: Recipe) -> float:
    """The scenes' maximum difficulty at ``step`` (the curriculum)."""
    return min(1.0, 0.15 + step / max(1, recipe.curriculum_steps))


def make_batch(recipe: Recipe, seed: int, step: int) -> dict[str, np.ndarray]:
    """The batch of ``step``: a pure function of ``(recipe, seed, step)``.

    Returns numpy arrays: ``images`` (S, h, w, 3) uint8, ``owners`` (S, h, w) int16,
    ``points`` (S, P, 2) and ``point_targets`` (S, P), ``boxes`` (S, B, 4) and ``box_targets``
    (S, B), ``pixels`` (S, K, 2).
    """
    rng = np.random.default_rng([seed, step])
    top = difficulty_at(step, recipe)
    batch: dict[str, list] = {key: [] for key in BATCH_KEYS}
    for _ in range(recipe.scenes_per_step):
        difficulty = float(rng.uniform(min(recipe.min_difficulty, top), top))
        scene = make_scene(int(rng.integers(2**31)), recipe.size, difficulty, 4)
        owners = owner_map(scene)
        points, point_targets = point_prompts(
            rng, owners, recipe.prompts_per_scene, recipe.background
        )
        boxes, box_targets = box_prompts(rng, owners, recipe.boxes_per_scene, recipe.tight_boxes)
        if len(boxes) < recipe.boxes_per_scene:  # no object: dummy boxes whose target is no pixel
            boxes = np.zeros((recipe.boxes_per_scene, 4), np.float32)
            box_targets = np.full(recipe.boxes_per_scene, -2, np.int64)  # matches no pixel
        pixels = rng.integers(0, recipe.size, (recipe.pixels_per_scene, 2))
        for key, value in zip(
            BATCH_KEYS,
            (scene.image, owners, points, point_targets, boxes, box_targets, pixels),
            strict=True,
        ):
            batch[key].append(value)
    return {key: np.stack(values) for key, values in batch.items()}


BATCH_KEYS = ("images", "owners", "points", "point_targets", "boxes", "box_targets", "pixels")


class BatchStream:
    """Batches for consecutive steps, made ahead by worker processes (or inline with 0)."""

    def __init__(self, recipe: Recipe, seed: int, start: int, workers: int, ahead: int = 8):
        self.recipe, self.seed, self.next = recipe, seed, start
        self.pool = multiprocessing.get_context("spawn").Pool(workers) if workers else None
        self.pending: deque = deque()
        self.ahead = ahead if workers else 0

    def get(self) -> dict[str, np.ndarray]:
        """The next step's batch."""
        if self.pool is None:
            self.next += 1
            return make_batch(self.recipe, self.seed, self.next - 1)
        while len(self.pending) <= self.ahead:
            args = (self.recipe, self.seed, self.next)
            self.pending.append(self.pool.apply_async(make_batch, args))
            self.next += 1
        return self.pending.popleft().get()

    def close(self) -> None:
        """Stop the workers."""
        if self.pool is not None:
            self.pool.terminate()


# ----------------------------------------------------------------------------- model


def to_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w, 3) uint8 scenes → the normalised (B, 3, size, size) batch SAM 2 expects,
    resized (bilinear) as ``SAM2ImagePredictor`` resizes an image to the model's input size."""
    batch = images.permute(0, 3, 1, 2).float() / 255.0
    batch = (batch - MEAN.to(batch.device)) / STD.to(batch.device)
    if batch.shape[-1] != size:
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
    return batch


def encode(model, images: torch.Tensor):
    """Image embedding, high-res features and the scale from scene pixels to the model's
    input frame (prompts are multiplied by it) of a batch of (B, h, w, 3) uint8 scenes."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"scenes must be square to be scaled to the input, got {images.shape}")
    embed, high_res = image_features(model, to_input(images, model.image_size))
    return embed, high_res, model.image_size / images.shape[2]


def image_features(model, images: torch.Tensor):
    """Image embedding and high-res features, exactly as SAM2ImagePredictor.set_image makes them."""
    backbone_out = model.forward_image(images)
    _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    batch = images.shape[0]
    feats = [
        feat.permute(1, 2, 0).reshape(batch, -1, *size)
        for feat, size in zip(vision_feats, feat_sizes, strict=True)
    ]
    return feats[-1], feats[:-1]


def decode(model, embed, high_res, owners: torch.Tensor, points=None, boxes=None):
    """All four masks (low-res logits) and IoU predictions per prompt.

    Output 0 is the single-mask output, outputs 1-3 the multimask ones the generator uses
    (``multimask_output=True`` returns ``[:, 1:]`` of these).

    Args:
        embed, high_res: from ``image_features``.
        owners: (N,) index of each prompt's image in the batch.
        points: (N, 2) single positive clicks in the model's input frame, or None.
        boxes: (N, 4) boxes (x0, y0, x1, y1) in the model's input frame, or None.
    """
    coords = labels = None
    if points is not None:
        coords = points[:, None, :]
        labels = torch.ones(points.shape[0], 1, dtype=torch.int, device=points.device)
    # boxes as run --prompts gives them (corner points labelled 2 and 3); boxes=None below:
    # the prompt encoder pads the points with a not-a-point token, as sam2's predictor does
    coords, labels = merged_points(coords, labels, boxes)
    sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    masks, iou, _, _ = model.sam_mask_decoder.predict_masks(
        image_embeddings=embed[owners],
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        repeat_image=False,
        high_res_features=[level[owners] for level in high_res],
    )
    return masks, iou


def init_cross_attention(model, scale: float, generator: torch.Generator) -> None:
    """Set q and k of the decoder's cross-attentions to the same ``scale`` x orthonormal rows.

    Token→image and image→token in every two-way block, and the final token→image: with
    ``W_q = W_k`` a query meets keys that look like itself, so the click's (position-encoded)
    token attends to the image tokens at its position from the first step.
    """
    transformer = model.sam_mask_decoder.transformer
    attentions = [transformer.final_attn_token_to_image]
    for layer in transformer.layers:
        attentions += [layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
    with torch.no_grad():
        for attention in attentions:
            inner, width = attention.q_proj.weight.shape
            if attention.k_proj.weight.shape != (inner, width):
                continue
            basis = torch.linalg.qr(torch.randn(width, inner, generator=generator))[0].T
            attention.q_proj.weight.copy_(scale * basis)
            attention.k_proj.weight.copy_(scale * basis)
            attention.q_proj.bias.zero_()
            attention.k_proj.bias.zero_()


class InstanceHead(torch.nn.Module):
    """Training-only: per-pixel embeddings from the image embedding, for the instance loss."""

    def __init__(self, channels: int, dim: int = 32):
        super().__init__()
        self.project = torch.nn.Sequential(
            torch.nn.Conv2d(channels, channels, 1),
            torch.nn.GELU(),
            torch.nn.Conv2d(channels, dim, 1),
        )

    def forward(self, embed: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) image embedding → (B, dim, h, w) unit-length pixel embeddings."""
        return F.normalize(self.project(embed), dim=1)


# ----------------------------------------------------------------------------- losses


def sample_at(maps: torch.Tensor, xy: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear samples of (N, C, h, w) ``maps`` at (N, M, 2) pixel positions of a ``size``-px
    image the maps cover → (N, C, M)."""
    grid = (xy + 0.5) / size * 2 - 1
    return F.grid_sample(maps, grid[:, :, None, :], align_corners=False)[..., 0]


def mask_losses(logits: torch.Tensor, targets: torch.Tensor, recipe: Recipe):
    """Focal + dice per mask, and each mask's true IoU.

    Args:
        logits: (N, O, s, s) mask logits at the loss size.
        targets: (N, s, s) float ground truth.
    """
    t = targets[:, None].expand_as(logits)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = prob * t + (1 - prob) * (1 - t)
    focal = (ce * (1 - p_t) ** 2 * (0.25 * t + 0.75 * (1 - t))).mean(dim=(2, 3))
    dice = 1 - (2 * (prob * t).sum((2, 3)) + 1) / (prob.sum((2, 3)) + t.sum((2, 3)) + 1)
    with torch.no_grad():
        binary = (logits > 0).float()
        inter = (binary * t).sum((2, 3))
        union = (binary + t).clamp(max=1).sum((2, 3))
        true_iou = inter / union.clamp(min=1)
    return recipe.focal_weight * focal + recipe.dice_weight * dice, true_iou


def iou_head_loss(
    iou_pred: torch.Tensor, true_iou: torch.Tensor, targets: torch.Tensor, recipe: Recipe
) -> torch.Tensor:
    """MSE of the IoU head against each output's true IoU, prompts on small objects (under
    32² pixels of the scene) weighted ``1 + small_iou_weight``."""
    squared = (iou_pred - true_iou) ** 2
    if not recipe.small_iou_weight:
        return squared.mean()
    scale = (recipe.size / recipe.loss_size) ** 2
    small = (targets.sum((1, 2)) * scale < 32**2) & (targets.sum((1, 2)) > 0)
    weight = 1 + recipe.small_iou_weight * small.float()
    return (squared * weight[:, None]).sum() / (weight.sum() * squared.shape[1])


def stability_loss(logits: torch.Tensor, targets: torch.Tensor, edge: float = 4.0) -> torch.Tensor:
    """1 - soft stability of each mask with an object: area(logit > 1) / area(logit > -1),
    the steps made sigmoids of slope ``edge`` (the generator keeps stability ≥ 0.95).

    Args:
        logits: (N, O, s, s) logits at the loss size.
        targets: (N, s, s) the prompts' objects (empty ones are left out).
    """
    high = torch.sigmoid(edge * (logits - 1)).sum((2, 3))
    low = torch.sigmoid(edge * (logits + 1)).sum((2, 3))
    stability = (high + 1) / (low + 1)
    present = targets.sum((1, 2)) > 0
    return (1 - stability[present]).mean() if present.any() else logits.sum() * 0


def click_losses(low_res: torch.Tensor, clicks: torch.Tensor, inside: torch.Tensor, size: int):
    """ "Positive at the own click, negative at clicks outside the target", on every output.

    Args:
        low_res: (N, O, h, w) low-resolution logits.
        clicks: (N, M, 2) candidate pixels per prompt; column 0 is the prompt's own click.
        inside: (N, M) bool, whether each candidate lies in the prompt's target.
        size: image side in pixels.
    """
    values = sample_at(low_res, clicks, size)  # (N, O, M)
    own = F.softplus(-values[:, :, 0]).mean()
    outside = (~inside).float()[:, None, :]
    other = (F.softplus(values) * outside).sum() / (outside.sum() * values.shape[1]).clamp(min=1)
    return own, other


def instance_loss(embeddings: torch.Tensor, pixels: torch.Tensor, labels: torch.Tensor, size: int):
    """Supervised contrastive loss over sampled pixels of each scene (same object: positives).

    Args:
        embeddings: (S, D, h, w) unit pixel embeddings.
        pixels: (S, K, 2) pixel positions; labels: (S, K) their object (-1 background).
        size: image side in pixels.
    """
    vectors = F.normalize(sample_at(embeddings, pixels.float(), size), dim=1)  # (S, D, K)
    similarity = torch.einsum("sdk,sdl->skl", vectors, vectors) / 0.1
    eye = torch.eye(labels.shape[1], dtype=torch.bool, device=labels.device)
    positive = (labels[:, :, None] == labels[:, None, :]) & ~eye
    log_prob = similarity.masked_fill(eye, -1e9).log_softmax(dim=-1)
    per_pixel = -(log_prob * positive).sum(-1) / positive.sum(-1).clamp(min=1)
    return per_pixel[positive.any(-1)].mean()


def targets_of(owners: torch.Tensor, scene: torch.Tensor, target: torch.Tensor, size: int):
    """(N, s, s) float masks of each prompt's target object at the loss size ``size``."""
    full = (owners[scene] == target[:, None, None]).float()[:, None]
    return (F.interpolate(full, size=(size, size), mode="area")[:, 0] > 0.5).float()


def step_loss(model, head, batch: dict[str, torch.Tensor], recipe: Recipe):
    """The whole loss of one batch, and its parts for the log."""
    images, owners = batch["images"], batch["owners"]
    count, prompts = batch["points"].shape[:2]
    device = images.device
    embed, high_res, scale = encode(model, images)
    scene = torch.arange(count, device=device).repeat_interleave(prompts)
    points, target = batch["points"].reshape(-1, 2), batch["point_targets"].reshape(-1)
    low_res, iou_pred = decode(model, embed, high_res, scene, points=points * scale)
    logits = F.interpolate(
        low_res, size=(recipe.loss_size,) * 2, mode="bilinear", align_corners=False
    )
    targets = targets_of(owners, scene, target, recipe.loss_size)
    per_mask, true_iou = mask_losses(logits, targets, recipe)
    best = per_mask[:, 1:].argmin(dim=1) + 1
    rows = torch.arange(len(best), device=device)
    mask_loss = per_mask[rows, best].mean() + per_mask[:, 0].mean()
    iou_loss = iou_head_loss(iou_pred, true_iou, targets, recipe)
    if recipe.stability_weight:
        chosen = torch.stack([logits[rows, best], logits[:, 0]], dim=1)
        mask_loss = mask_loss + recipe.stability_weight * stability_loss(chosen, targets)
    # candidates: the own click, the scene's other clicks, the scene's sampled pixels
    scene_clicks = torch.cat([batch["points"], batch["pixels"].float()], dim=1)[scene]
    clicks = torch.cat([points[:, None], scene_clicks], dim=1)
    xy = clicks.long().clamp(0, recipe.size - 1)
    owner_at = owners[scene[:, None], xy[..., 1], xy[..., 0]]
    inside = owner_at == target[:, None]
    own, other = click_losses(low_res, clicks, inside, recipe.size)
    total = mask_loss + recipe.iou_weight * iou_loss
    total = total + recipe.click_weight * own + recipe.other_click_weight * other
    parts = {
        "mask": per_mask[rows, best].mean().item(),
        "iou_head": iou_loss.item(),
        "click": own.item(),
        "other_click": other.item(),
        "best_iou": true_iou[rows, best].mean().item(),
        "single_iou": true_iou[:, 0].mean().item(),
    }
    if recipe.boxes_per_scene:
        total = total + box_loss(model, embed, high_res, scale, batch, recipe, parts)
    if head is not None:
        pixels = batch["pixels"]
        labels = owners[torch.arange(count, device=device)[:, None], pixels[..., 1], pixels[..., 0]]
        inst = instance_loss(head(embed), pixels, labels, recipe.size)
        total = total + recipe.instance_weight * inst
        parts["instance"] = inst.item()
    return total, parts


def box_loss(
    model, embed, high_res, scale: float, batch, recipe: Recipe, parts: dict
) -> torch.Tensor:
    """Mask and IoU loss of the single-mask output for the batch's box prompts (``scale``:
    scene pixels to the model's input frame)."""
    count, per_scene = batch["boxes"].shape[:2]
    scene = torch.arange(count, device=embed.device).repeat_interleave(per_scene)
    target = batch["box_targets"].reshape(-1)
    boxes = batch["boxes"].reshape(-1, 4) * scale
    low_res, iou_pred = decode(model, embed, high_res, scene, boxes=boxes)
    logits = F.interpolate(
        low_res[:, :1], size=(recipe.loss_size,) * 2, mode="bilinear", align_corners=False
    )
    targets = targets_of(batch["owners"], scene, target, recipe.loss_size)
    per_mask, true_iou = mask_losses(logits, targets, recipe)
    parts["box_iou"] = true_iou[:, 0].mean().item()
    return per_mask.mean() + recipe.iou_weight * F.mse_loss(iou_pred[:, :1], true_iou)


# ----------------------------------------------------------------------------- held-out


@torch.no_grad()
def point_conditioning(model, scenes: list[Scene], device: str = "cpu") -> dict[str, float]:
    """On held-out scenes: does the mask follow the prompt, and would the generator keep it?

    One prompt per object (a random pixel of it). ``prompted`` is the IoU of the mask the IoU
    head ranks first with the prompted object; ``other`` its best IoU with another object of
    the same scene; ``best_of_3`` the best of the three masks with the prompted object;
    ``kept`` the share of chosen masks that pass predicted IoU ≥ 0.8 and stability ≥ 0.95
    (the default preset's thresholds); ``kept_good`` the share that pass and have IoU ≥ 0.5
    with the prompted object; ``iou_error`` the mean |predicted - true IoU| of chosen masks.
    """
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(0)
    rows: list[tuple[float, ...]] = []
    for scene in scenes:
        if len(scene.masks) < 2:
            continue
        images = torch.from_numpy(scene.image[None]).to(device)
        embed, high_res, scale = encode(model, images)
        points = torch.tensor([random_pixel(rng, m) for m in scene.masks], dtype=torch.float32)
        owners = torch.zeros(len(points), dtype=torch.long, device=device)
        logits, iou = decode(model, embed, high_res, owners, points=points.to(device) * scale)
        logits, iou = logits[:, 1:], iou[:, 1:]  # the multimask outputs the generator uses
        size = scene.image.shape[0]
        full = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        gts = torch.from_numpy(np.stack(scene.masks)).to(device)
        for i in range(len(points)):
            k = int(iou[i].argmax())
            ious = masks_iou(full[i] > 0, gts)  # (3, objects)
            high, low = (full[i, k] > 1).sum().item(), (full[i, k] > -1).sum().item()
            stability = high / low if low else 0.0
            kept = float(iou[i, k]) >= 0.8 and stability >= 0.95
            rows.append(
                (
                    ious[k, i].item(),
                    torch.cat([ious[k, :i], ious[k, i + 1 :]]).max().item(),
                    ious[:, i].max().item(),
                    float(kept),
                    float(kept and ious[k, i].item() >= 0.5),
                    abs(float(iou[i, k]) - ious[k, i].item()),
                )
            )
    model.train(was_training)
    names = ("prompted", "other", "best_of_3", "kept", "kept_good", "iou_error")
    return {name: float(value) for name, value in zip(names, np.mean(rows, axis=0), strict=True)}


@torch.no_grad()
def box_conditioning(model, scenes: list[Scene], device: str = "cpu") -> dict[str, float]:
    """On held-out scenes: the mask a box prompt gives, as ``autolabel run --prompts`` takes it
    with zooming off (``prompts.zoom_below=0``: the single-mask output on the whole image,
    replaced by the most stable multimask one where sam2 does so).

    ``box_tight`` is the mean IoU with the object of its tight box's mask; ``box_jittered``
    the same for the box jittered by SAM's rule (``box_prompts``: noise of std 10 % of the
    side, at most 20 px).
    """
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(1)
    decoder = model.sam_mask_decoder
    scores: dict[str, list[float]] = {"box_tight": [], "box_jittered": []}
    for scene in scenes:
        if not scene.masks:
            continue
        owners = owner_map(scene)
        tight = np.array([mask_box(mask) for mask in scene.masks], np.float32)
        jittered, targets = box_prompts(rng, owners, len(scene.masks))
        jittered = jittered[np.argsort(targets)]  # one box per object, in the objects' order
        images = torch.from_numpy(scene.image[None]).to(device)
        embed, high_res, scale = encode(model, images)
        index = torch.zeros(len(tight), dtype=torch.long, device=device)
        gts = torch.from_numpy(np.stack(scene.masks)).to(device)
        size = scene.image.shape[0]
        for name, boxes in (("box_tight", tight), ("box_jittered", jittered)):
            prompts = torch.from_numpy(boxes).to(device) * scale
            masks, iou = decode(model, embed, high_res, index, boxes=prompts)
            single = masks[:, :1]
            if decoder.dynamic_multimask_via_stability:
                single, _ = decoder._dynamic_multimask_via_stability(masks, iou)
            full = F.interpolate(single, size=(size, size), mode="bilinear", align_corners=False)
            ious = masks_iou(full[:, 0] > 0, gts)  # (objects, objects)
            scores[name] += ious.diagonal().tolist()
    model.train(was_training)
    return {name: float(np.mean(values)) for name, values in scores.items()}


def mask_box(mask: np.ndarray) -> list[float]:
    """The tight XYXY box of a boolean mask (pixel edges: the last pixel's far side)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def masks_iou(masks: torch.Tensor, gts: torch.Tensor) -> torch.Tensor:
    """(A, h, w) and (B, h, w) boolean masks → (A, B) IoU."""
    a, b = masks.flatten(1).float(), gts.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return inter / union.clamp(min=1)


def held_out_scenes(size: int, count: int = 24) -> list[Scene]:
    """Hard scenes from a seed never used in training."""
    return [make_scene(HELD_OUT_SEED * 1_000_003 + i, size, 1.0) for i in range(count)]


# ----------------------------------------------------------------------------- schedule


@dataclass
class Schedule:
    """Warm-up, a plateau at the peak, cosine decay to 5 % from ``decay_from`` to ``steps``."""

    peak: float
    warmup: int
    steps: int | None  # None while a time budget still decides it
    decay_from: int | None

    def rate(self, step: int) -> float:
        """The learning rate at ``step``."""
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if self.steps is None or self.decay_from is None or step < self.decay_from:
            return self.peak
        progress = (step - self.decay_from) / max(1, self.steps - self.decay_from)
        return self.peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def plan_decay(schedule: Schedule, step: int, elapsed: float, budget: float, done: int) -> bool:
    """In a time-budgeted run, fix ``decay_from``/``steps`` once 70 % of the budget is spent.

    Args:
        schedule: the run's schedule (changed in place).
        step: the current step; elapsed: seconds spent; budget: seconds in all.
        done: steps run in ``elapsed`` (for the step rate).
    """
    if schedule.steps is not None or elapsed < 0.7 * budget:
        return False
    rate = done / max(elapsed, 1e-6)
    schedule.decay_from = step
    schedule.steps = step + max(1, int(rate * (budget - elapsed)))
    return True


# ----------------------------------------------------------------------------- loop


def train(
    out: str,
    recipe: Recipe,
    steps: int | None = None,
    minutes: float | None = None,
    decay_from: int | None = None,
    config: str = DEFAULT_CONFIG,
    seed: int = 0,
    device: str = "cpu",
    workers: int = 0,
    eval_every: int = 100,
    save_every_s: float = 120.0,
    export: str | None = None,
    init: str | None = None,
) -> Path:
    """Train from scratch, or from ``init``'s weights (or resume from ``out``), and write
    checkpoints and a metrics log.

    Args:
        out: folder for ``last.pt`` (official layout ``{"model": state_dict}``), ``state.pt``
            (optimizer, step and schedule, for resuming), ``run.json`` and ``metrics.jsonl``.
        recipe: batch shape, losses and learning rate.
        steps: optimizer steps in all (or None with ``minutes``).
        minutes: a time budget instead of ``steps``: the schedule's end is projected from the
            measured step rate and written to ``run.json``.
        decay_from: the step where the decay starts (default: right after warm-up).
        config: the sam2 model yaml.
        seed: seeds torch (initial weights) and the scene stream.
        device: ``"cpu"`` or ``"cuda"``.
        workers: processes making batches ahead (0: inline).
        eval_every: steps between held-out measurements.
        save_every_s: seconds between checkpoints (and one at every held-out measurement).
        export: also write the model here in float16 at every save (a compact copy).
        init: start from this checkpoint (official layout, e.g. the shipped model's ``.pt``),
            loaded by sam2's own loader, instead of a fresh initialisation (no q/k init).
    """
    if steps is None and minutes is None:
        raise ValueError("give steps or minutes")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    asked_size = recipe.input_size
    model = build_model(resolve_model(None, config, init, asked_size or None), "cpu").train()
    recipe = replace(recipe, input_size=int(model.image_size))  # run.json records the size
    if recipe.qk_init_scale and init is None:
        init_cross_attention(model, recipe.qk_init_scale, torch.Generator().manual_seed(seed))
    head = InstanceHead(model.sam_mask_decoder.transformer_dim) if recipe.instance_weight else None
    model.to(device)
    if recipe.freeze_encoder:
        model.image_encoder.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    trained += list(head.to(device).parameters()) if head else []
    optimizer = torch.optim.AdamW(trained, lr=recipe.peak_lr, weight_decay=0.01)
    schedule = Schedule(recipe.peak_lr, recipe.warmup, steps, decay_from or recipe.warmup)
    if minutes is not None and steps is None:
        schedule.decay_from = None
    start = resume(folder, model, head, optimizer, schedule, asked_size)
    write_run(folder, recipe, schedule, seed, config, minutes, init)
    held_out = held_out_scenes(recipe.size)
    stream = BatchStream(recipe, seed, start, workers)
    log = (folder / "metrics.jsonl").open("a")
    began, saved, step = time.time(), time.time(), start
    try:
        while schedule.steps is None or step < schedule.steps:
            batch = {k: torch.from_numpy(v).to(device) for k, v in stream.get().items()}
            for group in optimizer.param_groups:
                group["lr"] = schedule.rate(step)
            loss, parts = step_loss(model, head, batch, recipe)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            step += 1
            elapsed = time.time() - began
            if minutes is not None and plan_decay(
                schedule, step, elapsed, minutes * 60, step - start
            ):
                write_run(folder, recipe, schedule, seed, config, minutes, init)
            record = {"step": step, "loss": loss.item(), "lr": schedule.rate(step - 1)}
            record |= {"difficulty": difficulty_at(step - 1, recipe), "seconds": elapsed, **parts}
            last = schedule.steps is not None and step >= schedule.steps
            if step % eval_every == 0 or last:
                record["held_out"] = point_conditioning(model, held_out, device)
                record["held_out"] |= box_conditioning(model, held_out, device)
                print(json.dumps({"step": step, "seconds": round(elapsed), **record["held_out"]}))
            log.write(json.dumps(record) + "\n")
            log.flush()
            if "held_out" in record or time.time() - saved > save_every_s:
                save(folder, model, head, optimizer, schedule, step, export)
                saved = time.time()
    finally:
        stream.close()
        log.close()
    return folder / "last.pt"


def resume(folder: Path, model, head, optimizer, schedule: Schedule, asked_size: int = 0) -> int:
    """Load ``state.pt`` from ``folder`` when there is one; return the step to start at.

    A state is resumed at the input size it was trained at: one saved at another size is
    refused, and so is one saved before states recorded their size (runs then took the
    config's, 256 for sam2-tiny-synthetic until it became 512) unless ``asked_size`` (the
    ``--input-size`` given, 0 for none) says which.
    """
    path = folder / "state.pt"
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state.get("input_size")
    if saved is None and not asked_size:
        raise SystemExit(
            f"{path} does not record its input size (saved before --input-size existed, at "
            f"the config's size then): pass --input-size (256 for the runs of training/runs/) "
            f"to resume it"
        )
    if saved is not None and saved != model.image_size:
        raise SystemExit(
            f"{path} was trained at {saved}-px input, this run is at "
            f"{model.image_size}: pass --input-size {saved} to resume it"
        )
    model.load_state_dict(state["model"])
    if head is not None and state.get("head"):
        head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    if schedule.steps is None:  # a time-budgeted run keeps the plan it made
        schedule.steps, schedule.decay_from = state["schedule"]
    return state["step"]


def write_run(
    folder: Path, recipe: Recipe, schedule: Schedule, seed, config, minutes, init=None
) -> None:
    """``run.json``: the recipe, the schedule and the starting weights, enough to replay the
    run with ``--steps`` (and ``--init``)."""
    run = {
        "recipe": asdict(recipe),
        "steps": schedule.steps,
        "decay_from": schedule.decay_from,
        "seed": seed,
        "config": config,
        "minutes": minutes,
        "init": init,
    }
    (folder / "run.json").write_text(json.dumps(run, indent=2))


def save(folder: Path, model, head, optimizer, schedule: Schedule, step: int, export) -> None:
    """The model in the official checkpoint layout, and the full state for resuming."""
    write_checkpoint(folder / "last.pt", model.state_dict())
    if export:
        half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        write_checkpoint(Path(export), half)
    state = {
        "model": model.state_dict(),
        "head": head.state_dict() if head is not None else None,
        "optimizer": optimizer.state_dict(),
        "step": step,
        "schedule": (schedule.steps, schedule.decay_from),
        "input_size": int(model.image_size),
    }
    torch.save(state, folder / "state.pt.tmp")
    (folder / "state.pt.tmp").replace(folder / "state.pt")


def write_checkpoint(path: Path, state_dict: dict) -> None:
    """``{"model": state_dict}`` written atomically (tensors moved to the CPU)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().cpu() for k, v in state_dict.items()}
    torch.save({"model": cpu}, str(path) + ".tmp")
    Path(str(path) + ".tmp").replace(path)


def yes_or_no(text: str) -> bool:
    """A boolean option's value: true/yes/1 or false/no/0 (any case); anything else is an
    argparse error."""
    answers = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in answers:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return answers[text.lower()]


def main(argv: list[str] | None = None) -> None:
    """Command line of the training script (every ``Recipe`` field is an option)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--decay-from", type=int)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--save-every", type=float, default=120.0)
    parser.add_argument("--export")
    parser.add_argument("--init", help="start from this checkpoint (e.g. the shipped model)")
    parser.add_argument("--threads", type=int)
    for field in fields(Recipe):
        kind = type(field.default)
        parse = yes_or_no if kind is bool else kind
        parser.add_argument("--" + field.name.replace("_", "-"), type=parse)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    given = {f.name: getattr(args, f.name) for f in fields(Recipe)}
    recipe = Recipe(**{k: v for k, v in given.items() if v is not None})
    train(
        args.out,
        recipe,
        steps=args.steps,
        minutes=args.minutes,
        decay_from=args.decay_from,
        config=args.config,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        eval_every=args.eval_every,
        save_every_s=args.save_every,
        export=args.export,
        init=args.init,
    )


if __name__ == "__main__":
    main()
