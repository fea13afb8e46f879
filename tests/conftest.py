"""Shared fixtures: a micro SAM 2 with random weights, small generated images, a Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
TEST_BUCKET = "autolabel-tests"
MICRO_CONFIG = str(ROOT / "configs" / "models" / "sam2.1_hiera_micro.yaml")

# Settings that make a random-weight model keep many masks, so every test sees real RLEs.
PERMISSIVE = [
    "amg.points_per_side=4",
    "amg.pred_iou_thresh=0",
    "amg.stability_score_thresh=0",
    "amg.box_nms_thresh=1.0",
    "model.dtype=float32",
]


def autolabel(*args: str, timeout: int = 600):
    """Run the ``autolabel`` CLI in a subprocess from the project root; returns the result."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


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
    from pipeline.model.registry import save_random_checkpoint

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
def ray_local(s3_server):
    """One local Ray cluster for in-process pipeline tests (started after the S3 server, so
    its workers see the AWS_* variables, as a cluster's nodes would)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def free_port_pair() -> int:
    """A free port p whose p + 10000 is free too (SeaweedFS puts gRPC there)."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 29000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free ports")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server on loopback (SeaweedFS), with the standard AWS_* variables pointing at it.

    Yields the endpoint URL. The variables are set for this process and everything it starts
    afterwards (the Ray cluster of these tests included).
    """
    import shutil
    import subprocess
    import sys
    import time

    import s3fs

    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    data = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: free_port_pair() for name in ("s3", "master", "volume", "filer")}
    log = open(data / "weed.log", "wb")  # noqa: SIM115 (open while the server runs)
    server = subprocess.Popen(
        [
            weed,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            "-master.volumeSizeLimitMB=100",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "autolabel-test",
        "AWS_SECRET_ACCESS_KEY": "autolabel-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    deadline = time.time() + 90
    while True:
        try:
            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir(TEST_BUCKET)
            fs.pipe(f"{TEST_BUCKET}/ready", b"1")
            break
        except Exception:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError((data / "weed.log").read_text()[-2000:]) from None
            time.sleep(1)
    yield endpoint
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture()
def s3(s3_server):
    """An s3fs filesystem on the loopback server and a fresh ``bucket/prefix`` for the test.

    One bucket for the session: SeaweedFS allocates volumes per bucket, and a new bucket right
    after another can answer "internal error" while it does.
    """
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    return fs, f"{TEST_BUCKET}/t-{uuid.uuid4().hex[:10]}"
