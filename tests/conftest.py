"""Shared fixtures: a micro SAM 2 with random weights, small generated images, a Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
MICRO_CONFIG = str(ROOT / "configs" / "models" / "sam2.1_hiera_micro.yaml")

# Settings that make a random-weight model keep many masks, so every test sees real RLEs.
PERMISSIVE = [
    "amg.points_per_side=4",
    "amg.pred_iou_thresh=0",
    "amg.stability_score_thresh=0",
    "amg.box_nms_thresh=1.0",
    "model.dtype=float32",
]


def make_scene(width: int, height: int, seed: int) -> Image.Image:
    """A small image of flat shapes on a gradient: cheap, varied, deterministic."""
    rng = np.random.RandomState(seed)
    x = np.arange(width)[None, :, None]
    base = rng.randint(40, 200, 3)
    pixels = np.clip(base + x / width * 60 + rng.randn(height, width, 1) * 6, 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 6)):
        colour = tuple(int(v) for v in rng.randint(0, 255, 3))
        x0, y0 = rng.randint(0, width - 10), rng.randint(0, height - 10)
        x1, y1 = x0 + rng.randint(8, width // 2), y0 + rng.randint(8, height // 2)
        if rng.randint(2):
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
    return image


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory) -> str:
    """A random-weight micro SAM 2.1 checkpoint in the official layout."""
    from pipeline.models import save_random_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "micro.pt"
    return save_random_checkpoint(MICRO_CONFIG, str(path), seed=0)


@pytest.fixture(scope="session")
def micro_overrides(micro_checkpoint) -> list[str]:
    """Config overrides selecting the micro model and permissive thresholds."""
    return [f"model.config={MICRO_CONFIG}", f"model.checkpoint={micro_checkpoint}", *PERMISSIVE]


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    """Seven small images (JPEG and PNG, one in a subfolder) and one corrupt file."""
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    for i in range(6):
        make_scene(64 + 8 * i, 48 + 4 * i, seed=i).save(folder / f"img_{i}.png")
    make_scene(80, 60, seed=9).save(folder / "nested" / "deep.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    return folder


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for in-process pipeline tests."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
