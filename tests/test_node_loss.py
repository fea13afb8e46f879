"""A cluster that loses a node mid-run: a real two-node Ray cluster on this machine (a head on
127.0.0.1 and a worker node on 127.0.0.2, both loopback), the job's driver on the head, and the
worker node stopped by the pids of its raylet and the processes under it while it holds shards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pipeline.results.dataset import open_run
from tests.conftest import MICRO_CONFIG, ROOT, make_scene

WORKER_IP = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A head and one worker node started with ``ray start``; stopped by pid."""

    def __init__(self, head_cpus: int) -> None:
        # Ray's socket paths must stay under 108 bytes: a short folder of its own.
        self.temp = Path(tempfile.mkdtemp(prefix="al-ray-", dir="/tmp"))
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.port = free_port()
        ray = str(Path(sys.executable).parent / "ray")
        common = ["--num-gpus=0", "--disable-usage-stats", f"--temp-dir={self.temp}"]
        self.start(
            [ray, "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
             f"--num-cpus={head_cpus}", "--include-dashboard=false",
             f"--ray-client-server-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", *common]
        )  # fmt: skip
        self.start(
            [ray, "start", f"--address=127.0.0.1:{self.port}", f"--node-ip-address={WORKER_IP}",
             "--num-cpus=1", f"--dashboard-agent-listen-port={free_port()}", *common]
        )  # fmt: skip

    def start(self, command: list[str]) -> None:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

    def processes(self, worker_node_only: bool) -> list[psutil.Process]:
        """This cluster's processes (those naming its temp dir or port, and their children);
        with ``worker_node_only``, the worker node's raylet and everything under it."""
        found = {}
        for proc in psutil.process_iter(["cmdline"]):
            args = " ".join(proc.info["cmdline"] or [])
            ours = str(self.temp) in args or f":{self.port}" in args
            if not ours or (worker_node_only and not is_worker_raylet(args)):
                continue
            for member in (proc, *proc.children(recursive=True)):
                found[member.pid] = member
        return [p for p in found.values() if p.pid != os.getpid()]

    def lose_worker_node(self) -> list[int]:
        """SIGKILL the worker node's raylet and its processes; returns their pids."""
        doomed = self.processes(worker_node_only=True)
        assert doomed, "no raylet of the worker node found"
        for proc in doomed:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        _, alive = psutil.wait_procs(doomed, timeout=15)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
        return [p.pid for p in doomed]

    def stop(self) -> None:
        for proc in self.processes(worker_node_only=False):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def is_worker_raylet(args: str) -> bool:
    return "raylet" in args.split(" ")[0] and f"--node_ip_address={WORKER_IP}" in args


@pytest.fixture()
def scenes(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(14):
        make_scene(160, 120, seed=500 + i).save(folder / f"scene_{i:02d}.png")
    return folder


def start_run(scenes: Path, output: Path, cluster: Cluster, micro_checkpoint: str):
    """``autolabel run`` as a driver on the head, one image a shard, 1 CPU per worker."""
    command = [
        sys.executable, "-m", "pipeline.cli", "run", "--input", str(scenes),
        "--output", str(output), "--no-progress",
        f"model.config={MICRO_CONFIG}", f"model.checkpoint={micro_checkpoint}",
        "amg.points_per_side=12", "amg.pred_iou_thresh=0", "amg.stability_score_thresh=0",
        "runtime.shard_size=1", "runtime.cpus_per_actor=1", "runtime.placement_timeout_s=20",
        f"runtime.address=127.0.0.1:{cluster.port}",
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def wait_for_worker_node_shard(output: Path, driver: subprocess.Popen) -> str:
    """Wait until the worker node committed a shard (while others are left); its node id."""
    deadline = time.time() + 240
    while time.time() < deadline:
        assert driver.poll() is None, driver.communicate()
        markers = [json.loads(p.read_text()) for p in (output / "_shards").glob("*.json")]
        nodes = {m["node"] for m in markers}
        if len(nodes) == 2 and len(markers) <= 10:  # both nodes at work, shards left
            head = json.loads((output / "_run.json").read_text())  # written by the driver
            assert head["status"] == "running"
            return next(iter(nodes))
        time.sleep(0.2)
    raise AssertionError("the worker node never committed a shard")


@pytest.fixture()
def cluster(tmp_path, request):
    made: list[Cluster] = []

    def make(head_cpus: int) -> Cluster:
        made.append(Cluster(head_cpus))
        return made[-1]

    yield make
    for each in made:
        each.stop()
        shutil.rmtree(each.temp, ignore_errors=True)


@pytest.mark.slow
def test_losing_a_node_finishes_on_the_head_with_every_image_once(
    scenes, tmp_path, cluster, micro_checkpoint
):
    head = cluster(head_cpus=1)
    output = tmp_path / "out"
    driver = start_run(scenes, output, head, micro_checkpoint)
    wait_for_worker_node_shard(output, driver)
    assert head.lose_worker_node()
    stdout, stderr = driver.communicate(timeout=400)
    assert driver.returncode == 0, stderr[-3000:]

    run = open_run(str(output))
    rows = run.images.to_table(columns=["image_uri", "image_id", "shard"]).to_pylist()
    assert sorted(r["image_uri"] for r in rows) == sorted(str(p) for p in scenes.iterdir())
    assert len({r["image_id"] for r in rows}) == 14, "every image exactly once"
    attempts = run.manifest["shard_attempts"]
    assert attempts and all("worker died" in a[0]["error"] for a in attempts.values())
    assert run.manifest["status"] == "complete" and run.manifest["counts"]["images"] == 14


@pytest.mark.slow
def test_a_run_with_no_node_left_for_workers_fails_with_a_reason(
    scenes, tmp_path, cluster, micro_checkpoint
):
    only_worker_node = cluster(head_cpus=0)
    output = tmp_path / "out"
    driver = start_run(scenes, output, only_worker_node, micro_checkpoint)
    deadline = time.time() + 240
    while not list((output / "_shards").glob("*.json")):
        assert time.time() < deadline and driver.poll() is None
        time.sleep(0.2)
    only_worker_node.lose_worker_node()
    stdout, stderr = driver.communicate(timeout=400)
    assert driver.returncode == 1, stderr[-3000:]
    assert "no node can hold a worker any more" in stdout + stderr
    manifest = json.loads((output / "_run.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed_shards"]
    committed = len(list((output / "_shards").glob("*.json")))
    assert committed + len(manifest["failed_shards"]) == 14
    assert not list(output.rglob("*.partial"))
