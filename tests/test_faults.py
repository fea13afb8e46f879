"""Crashes and bad input lose nothing: killed drivers, killed actors, hostile files, load."""

import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.dataset as ds
import pytest
from PIL import Image

from pipeline.core.config import load_config
from pipeline.core.storage import Location, with_retries
from pipeline.job.runner import execute, plan_run
from tests.conftest import ROOT, make_scene

pytestmark = pytest.mark.usefixtures("ray_local")


def run(source, output, overrides, **kwargs):
    job = load_config(None, overrides)
    places = (Location(str(p), job.storage.options) for p in (source, output))
    plan = plan_run(job, *places, **kwargs)
    return execute(plan, show_progress=False)


def dataset(output: Path) -> tuple[list[dict], list[dict]]:
    """Image rows (without timings) and mask rows, in a canonical order."""
    images = ds.dataset(output / "images").to_table().drop_columns(["seconds"]).to_pylist()
    masks = ds.dataset(output / "masks").to_table().to_pylist()
    images.sort(key=lambda r: r["image_id"])
    masks.sort(key=lambda r: (r["image_id"], r["mask_index"]))
    return images, masks


def shard_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any("ShardWorker" in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def committed(output: Path) -> int:
    folder = output / "_shards"
    return len(list(folder.glob("*.json"))) if folder.exists() else 0


@pytest.fixture()
def many_images(tmp_path) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(12):
        make_scene(48, 40, seed=100 + i).save(folder / f"m{i:02d}.png")
    return folder


@pytest.mark.slow
def test_killed_driver_then_rerun_equals_clean_run(many_images, tmp_path, micro_overrides):
    # One image per shard: 12 shards, so the kill lands with most of them still to do.
    overrides = [*micro_overrides, "runtime.shard_size=1"]
    run(many_images, tmp_path / "clean", overrides)

    output = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        "--input",
        str(many_images),
        "--output",
        str(output),
        "--no-progress",
        *overrides,
    ]
    driver = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: committed(output) >= 1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # Workers of the dead driver may still finish the shard they hold; let them, so the files
    # we compare below are settled. Shards committed by then must stay exactly as they are.
    wait_for(lambda: not shard_workers(), 60)
    before = {
        p: p.stat().st_mtime_ns
        for p in (output / "masks").glob("shard-*.parquet")
        if (output / "_shards" / f"{p.stem}.json").exists()
    }
    markers_before = committed(output)
    assert 1 <= markers_before < 12
    lease = json.loads((output / "_lease.json").read_text())  # the dead driver's, left behind
    assert lease["pid"] == driver.pid

    # Rerun at once on the same host: the dead driver's lease is taken over, no waiting.
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (output / "_lease.json").exists()
    for path, mtime in before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path.name} was rewritten"
    assert committed(output) == 12
    assert dataset(output) == dataset(tmp_path / "clean")
    assert not [p for p in output.rglob("*") if p.name.endswith((".partial", ".tmp"))]


def test_killed_actor_costs_only_its_shard(many_images, tmp_path, micro_overrides):
    overrides = [*micro_overrides, "runtime.shard_size=2"]
    run(many_images, tmp_path / "clean", overrides)
    output = tmp_path / "out"
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(s=run(many_images, output, overrides)))
    thread.start()
    wait_for(lambda: committed(output) >= 1)
    victims = shard_workers()
    assert victims, "no worker process to kill"
    for proc in victims:
        proc.send_signal(signal.SIGKILL)
    thread.join(timeout=600)
    summary = outcome["s"]
    assert summary.succeeded and summary.retries >= 1
    assert summary.images == 12 and summary.shards_done == 6
    assert dataset(output) == dataset(tmp_path / "clean")


def test_shard_that_keeps_killing_its_actor_fails_for_good(tmp_path, micro_overrides):
    folder = tmp_path / "one"
    folder.mkdir()
    make_scene(48, 40, seed=1).save(folder / "a.png")
    output = tmp_path / "out"
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(s=run(folder, output, micro_overrides)), daemon=True
    )
    thread.start()
    while thread.is_alive():  # every worker that shows up dies, as if its GPU kept failing
        for proc in shard_workers():
            proc.send_signal(signal.SIGKILL)
        time.sleep(0.1)
    summary = outcome["s"]
    assert not summary.succeeded
    assert list(summary.failed_shards) == ["shard-00000"]
    assert "worker died" in summary.failed_shards["shard-00000"]
    import json

    manifest = json.loads((output / "_run.json").read_text())
    assert manifest["status"] == "failed" and "shard-00000" in manifest["failed_shards"]
    assert committed(output) == 0


def save(image: Image.Image, path: Path, **kwargs) -> None:
    image.save(path, **kwargs)


def test_hostile_files_each_get_their_row(tmp_path, micro_overrides):
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("I am a text file with an image extension\n")
    buffer = io.BytesIO()
    make_scene(64, 64, 3).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    save(make_scene(300, 200, 4), folder / "bomb.png")  # over the pixel limit set below
    save(Image.new("RGB", (1, 1), (9, 9, 9)), folder / "one.png")
    save(Image.new("RGB", (2, 3), (9, 9, 9)), folder / "two_by_three.png")
    save(make_scene(40, 30, 5).convert("L"), folder / "gray.png")
    save(make_scene(40, 30, 6).convert("CMYK"), folder / "cmyk.jpg")
    save(make_scene(40, 30, 7).convert("RGBA"), folder / "rgba.png")
    save(
        Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50), folder / "deep.png"
    )
    frames = [make_scene(40, 30, s).convert("P") for s in (8, 9)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    rotated = make_scene(40, 30, 10)
    exif = rotated.getexif()
    exif[0x0112] = 8
    rotated.save(folder / "rotated.jpg", exif=exif)

    summary = run(folder, tmp_path / "out", [*micro_overrides, "image.max_pixels=20000"])
    images = {Path(r["image_uri"]).name: r for r in dataset(tmp_path / "out")[0]}
    assert summary.images == len(images) == 13
    errors = {name: row["error"] for name, row in images.items() if row["status"] == "error"}
    assert set(errors) == {"corrupt.jpg", "empty.png", "notes.png", "truncated.jpg", "bomb.png"}
    assert errors["empty.png"] == "empty file"
    assert "too many pixels" in errors["bomb.png"]
    assert all("\n" not in reason and reason for reason in errors.values())
    for name in (
        "one.png",
        "two_by_three.png",
        "gray.png",
        "cmyk.jpg",
        "rgba.png",
        "deep.png",
        "anim.gif",
        "rotated.jpg",
    ):
        assert images[name]["status"] == "ok", (name, images[name]["error"])
    assert (images["rotated.jpg"]["width"], images["rotated.jpg"]["height"]) == (30, 40)
    assert (images["two_by_three.png"]["width"], images["two_by_three.png"]["height"]) == (2, 3)
    assert images["gray.png"]["num_masks"] > 0


def test_five_hundred_images_each_accounted_for_once(tmp_path, micro_checkpoint):
    folder = tmp_path / "load"
    for i in range(500):
        sub = folder / f"part{i % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        make_scene(24, 24, seed=i).save(sub / f"{i:04d}.png")
    overrides = [
        f"model.config={ROOT}/configs/models/sam2.1_hiera_micro.yaml",
        f"model.checkpoint={micro_checkpoint}",
        "amg.points_per_side=2",
        "amg.pred_iou_thresh=0",
        "amg.stability_score_thresh=0",
        "runtime.shard_size=50",
    ]
    summary = run(folder, tmp_path / "out", overrides)
    assert summary.succeeded and summary.shards_done == 10
    images, masks = dataset(tmp_path / "out")
    uris = [r["image_uri"] for r in images]
    assert len(uris) == len(set(uris)) == 500
    assert sorted(uris) == sorted(str(p) for p in folder.rglob("*.png"))
    assert all(r["status"] == "ok" for r in images)
    per_image = {}
    for row in masks:
        per_image[row["image_id"]] = per_image.get(row["image_id"], 0) + 1
    assert all(per_image.get(r["image_id"], 0) == r["num_masks"] for r in images)


def test_transient_storage_errors_are_retried_and_permanent_ones_are_not():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return "data"

    assert with_retries(flaky, first_delay=0.01) == "data" and len(calls) == 3

    def missing():
        calls.append(1)
        raise FileNotFoundError("s3://bucket/nope.png")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        with_retries(missing, first_delay=0.01)
    assert len(calls) == 1
