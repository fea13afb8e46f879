"""Shared fixtures: a micro SAM 2 with random weights, small generated images, a Ray cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from pipeline.core.prompt import Prompt
from pipeline.core.storage import Location
from pipeline.job.prompt_plan import plan_prompts
from pipeline.job.sources import ImageRef, Tally, sorted_listing

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


@dataclass
class MatchedPrompts:
    """Prompts by image URI, and what could not be matched (``read_prompts``)."""

    by_uri: dict[str, list[Prompt]]
    unmatched: int
    unmatched_examples: list[str]
    unknown_categories: Tally
    names_file: str | None

    @property
    def count(self) -> int:
        return sum(len(prompts) for prompts in self.by_uri.values())


def read_prompts(source: Location, images: list[ImageRef], shard_size: int = 64) -> MatchedPrompts:
    """Plan a prompts file over the listed images (``plan_prompts``, as a run does) and read
    the planned prompt files back, by image URI."""
    listing = sorted_listing(pa.array([ref.uri for ref in images], pa.string()))
    uris = [uri for chunk in listing.chunks() for uri in chunk.to_pylist()]
    by_uri: dict[str, list[Prompt]] = {}
    with plan_prompts(source, listing, shard_size) as planned:
        for path in sorted(planned.scratch.glob("prompts-*.parquet")):
            for row in pq.read_table(path).to_pylist():
                uri = uris[row["shard"] * shard_size + row["position"]]
                by_uri.setdefault(uri, []).append(Prompt.from_record(row))
        info = planned.info
    return MatchedPrompts(
        by_uri,
        info["unmatched"],
        info["unmatched_examples"],
        Tally(**info["unknown_categories"]),
        info["names_file"],
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


class SeaweedFS:
    """A SeaweedFS server (master, volume, filer, S3) on loopback that can be stopped and
    started again on the same ports and data."""

    KEYS = {"key": "autolabel-test", "secret": "autolabel-test-secret"}

    def __init__(self, data: Path) -> None:
        import shutil
        import sys

        self.weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        self.data = data
        self.ports = {name: free_port_pair() for name in ("s3", "master", "volume", "filer")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.server = None

    def start(self, bucket: str = TEST_BUCKET) -> None:
        """Start the server and wait until ``bucket`` takes writes."""
        import subprocess
        import time

        import s3fs

        self.log = open(self.data / "weed.log", "ab")  # noqa: SIM115 (open while it runs)
        ports = self.ports
        self.server = subprocess.Popen(
            [
                self.weed,
                "server",
                f"-dir={self.data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-s3",
                f"-s3.port={ports['s3']}",
                f"-master.port={ports['master']}",
                f"-volume.port={ports['volume']}",
                f"-filer.port={ports['filer']}",
                "-master.volumeSizeLimitMB=100",
                # no Iceberg or Lance listeners: their fixed ports clash between servers
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 90
        while True:
            try:
                fs = s3fs.S3FileSystem(
                    endpoint_url=self.endpoint, skip_instance_cache=True, **self.KEYS
                )
                if not fs.exists(bucket):
                    fs.mkdir(bucket)
                fs.pipe(f"{bucket}/ready", b"1")
                return
            except Exception:
                if time.time() > deadline or self.server.poll() is not None:
                    self.stop()
                    raise RuntimeError((self.data / "weed.log").read_text()[-2000:]) from None
                time.sleep(1)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL: after SIGTERM its filer is gone at once,
        while master and volume keep retrying the filer for 20 s and more; what they wrote is
        in their files, which the next start reads)."""
        import subprocess

        if self.server is None:
            return
        self.server.terminate()
        try:
            self.server.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.server = None
        self.log.close()

    def environment(self) -> dict[str, str]:
        """The standard AWS_* variables pointing at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.KEYS["key"],
            "AWS_SECRET_ACCESS_KEY": self.KEYS["secret"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server on loopback (SeaweedFS), with the standard AWS_* variables pointing at it.

    Yields the endpoint URL. The variables are set for this process and everything it starts
    afterwards (the Ray cluster of these tests included).
    """
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    env = server.environment()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    server.start()
    yield server.endpoint
    server.stop()
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
