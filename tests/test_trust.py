"""A run you can trust with your bucket: nothing destroys what it reads, no failure passes as
bad images, one writer per output. Every case here was first tried as a careless user would."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.dataset as ds
import pytest

from pipeline.core.config import load_config
from pipeline.core.guard import OutputConflictError
from pipeline.core.lease import LEASE_NAME, Lease, OutputBusyError
from pipeline.core.storage import Location
from pipeline.core.writer import RunLayout, remove_run
from pipeline.job.runner import execute, plan_run
from tests.conftest import ROOT, autolabel, make_scene

pytestmark = pytest.mark.usefixtures("ray_local")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def photos(folder: Path, count: int, broken: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        make_scene(56, 40, seed=300 + i).save(folder / f"photo_{i:02d}.png")
    for i in range(broken):
        (folder / f"broken_{i}.jpg").write_bytes(b"not an image at all")
    return folder


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, micro_overrides) -> Path:
    """A finished run of 8 images in 2 shards (copied by the tests that try to harm it)."""
    folder = photos(tmp_path_factory.mktemp("trust") / "images", 8)
    output = folder.parent / "run"
    job = load_config(None, [*micro_overrides, "runtime.shard_size=4"])
    summary = execute(plan_run(job, Location(str(folder)), Location(str(output))), False)
    assert summary.succeeded
    return output


@pytest.fixture()
def run_copy(good_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(good_run, copy)
    return copy


def cli_run(input_: Path | str, output: Path | str, *args: str, env=None, wait=True):
    command = [sys.executable, "-m", "pipeline.cli", "run", "--input", str(input_)]
    command += ["--output", str(output), "--no-progress", *args]
    environment = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600
    )


def error_line(result) -> str:
    """The one ``autolabel: error:`` line of a refused command (and there is exactly one)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("autolabel: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


# --- never destroy what you read ------------------------------------------------------------


def test_output_above_the_input_is_refused_before_anything_is_written(tmp_path, micro_overrides):
    dataset = tmp_path / "dataset"
    photos(dataset / "images", 3)
    before = snapshot(dataset)
    result = cli_run(dataset / "images", dataset, "--overwrite", *micro_overrides)
    assert result.returncode == 2
    assert "folder above it" in error_line(result)
    assert snapshot(dataset) == before  # not one file written, none removed
    job = load_config(None, micro_overrides)
    for output in (dataset, dataset / "images"):
        with pytest.raises(OutputConflictError, match="is the input or a folder above it"):
            plan_run(job, Location(str(dataset / "images")), Location(str(output)))
    assert snapshot(dataset) == before


def test_overwrite_with_an_unreadable_checkpoint_leaves_the_run_whole(
    run_copy, tmp_path, micro_overrides
):
    before = snapshot(run_copy)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04garbage that torch cannot unpickle")
    source = json.loads((run_copy / "_run.json").read_text())["input"]
    overrides = [*micro_overrides, "runtime.shard_size=4", f"model.checkpoint={bad}"]
    result = cli_run(source, run_copy, "--overwrite", *overrides)
    assert result.returncode == 2
    line = error_line(result)
    assert "cannot load checkpoint" in line and "UnpicklingError" in line
    assert snapshot(run_copy) == before


def test_overwrite_whose_workers_cannot_start_leaves_the_run_whole(run_copy, micro_overrides):
    before = snapshot(run_copy)
    source = json.loads((run_copy / "_run.json").read_text())["input"]
    overrides = [*micro_overrides, "amg.points_per_side=3", "runtime.shard_size=4"]
    result = cli_run(
        source, run_copy, "--overwrite", *overrides, env={"AUTOLABEL_TEST_FAULT": "load"}
    )
    assert result.returncode == 1, result.stderr[-2000:]
    failed = [line for line in result.stdout.splitlines() if line.startswith("failed: ")]
    assert failed == [
        "failed: a worker could not start: RuntimeError: injected model load fault "
        f"(AUTOLABEL_TEST_FAULT); the run at {run_copy} was left as it was"
    ]  # the cause in one line, not Ray's wrapping
    assert snapshot(run_copy) == before  # the old run, manifest included, as it was
    assert not (run_copy / LEASE_NAME).exists()


def test_a_file_the_tool_did_not_write_is_never_removed(run_copy, tmp_path, micro_overrides):
    photo = run_copy / "images" / "holiday.png"
    make_scene(40, 30, seed=1).save(photo)
    manifest = json.loads((run_copy / "_run.json").read_text())
    before = snapshot(run_copy)
    # A run (or its --overwrite) among the user's files is refused, naming them.
    result = cli_run(manifest["input"], run_copy, "--overwrite", *micro_overrides)
    assert result.returncode == 2
    assert "holiday.png" in error_line(result)
    assert snapshot(run_copy) == before
    # Removing the run file by file leaves the photo, and its folder, in place.
    removed = remove_run(RunLayout(Location(str(run_copy))))
    assert removed == 2 * 3 + 2  # masks, images and marker of 2 shards; listing; manifest
    left = sorted(str(p.relative_to(run_copy)) for p in run_copy.rglob("*") if p.is_file())
    assert left == ["images/holiday.png"]


def test_a_new_run_beside_a_datasets_own_masks_is_refused(tmp_path, micro_overrides):
    dataset = tmp_path / "seg"
    (dataset / "masks").mkdir(parents=True)
    (dataset / "masks" / "photo_00.png").write_bytes(b"ground truth")
    result = cli_run(photos(tmp_path / "photos", 2), dataset, *micro_overrides)
    assert result.returncode == 2
    assert "masks/photo_00.png" in error_line(result)
    assert sorted(p.name for p in dataset.rglob("*")) == ["masks", "photo_00.png"]


def test_what_a_run_writes_inside_its_input_is_never_input(tmp_path, micro_overrides):
    bucket = photos(tmp_path / "bucket", 3)
    output = bucket / "labels"
    job = load_config(None, micro_overrides)
    assert execute(plan_run(job, Location(str(bucket)), Location(str(output))), False).succeeded
    make_scene(40, 30, seed=2).save(output / "overlay.png")  # e.g. `autolabel show` output
    plan = plan_run(job, Location(str(bucket)), Location(str(output)), append=True)
    assert not plan.todo  # nothing new: the overlay is not an image of the input
    assert execute(plan, False).succeeded
    uris = ds.dataset(output / "images").to_table().column("image_uri").to_pylist()
    assert sorted(Path(u).name for u in uris) == ["photo_00.png", "photo_01.png", "photo_02.png"]


def test_filter_into_its_own_run_is_refused_and_the_run_untouched(run_copy):
    before = snapshot(run_copy)
    for out in (run_copy, run_copy / "filtered", run_copy.parent):
        result = autolabel("filter", str(run_copy), str(out), "--overwrite")
        assert result.returncode == 2, result.stderr[-2000:]
        error_line(result)
    assert snapshot(run_copy) == before


def test_export_into_the_run_is_refused(run_copy):
    before = snapshot(run_copy)
    result = autolabel("export", str(run_copy), "--format", "coco", "--out", f"{run_copy}/c.json")
    assert result.returncode == 2 and "inside the run" in error_line(result)
    assert snapshot(run_copy) == before


def test_an_export_that_fails_midway_leaves_the_previous_file(run_copy, tmp_path):
    labels = tmp_path / "labels.json"
    first = autolabel("export", str(run_copy), "--format", "coco", "--out", str(labels))
    assert first.returncode == 0, first.stderr[-2000:]
    before = labels.read_bytes()
    assert json.loads(before)["annotations"]
    # Damage the second shard: the export fails after the first one was written out.
    (run_copy / "masks" / "shard-00001.parquet").write_bytes(b"PAR1 truncated")
    second = autolabel("export", str(run_copy), "--format", "coco", "--out", str(labels))
    assert second.returncode != 0
    assert labels.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name != "run"] == ["labels.json"]


# --- unfinished runs say so ----------------------------------------------------------------


def interrupt(run: Path) -> None:
    """Make ``run`` what a driver killed after one of two shards leaves behind."""
    manifest = json.loads((run / "_run.json").read_text())
    manifest["status"] = "running"
    (run / "_run.json").write_text(json.dumps(manifest))
    (run / "_shards" / "shard-00001.json").unlink()


def test_stats_and_exports_of_an_interrupted_run(run_copy, tmp_path):
    interrupt(run_copy)
    stats = autolabel("stats", str(run_copy), "--out", str(tmp_path / "stats"))
    assert stats.returncode == 0, stats.stderr[-2000:]
    assert "interrupted: 1 of 2 shards committed" in stats.stderr
    document = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert document["state"] == "interrupted"
    assert document["shards"] == {"planned": 2, "committed": 1}
    out = str(tmp_path / "labels.json")
    refused = autolabel("export", str(run_copy), "--format", "coco", "--out", out)
    assert refused.returncode == 2
    assert "interrupted: 1 of 2 shards committed" in error_line(refused)
    assert not Path(out).exists()
    partial = autolabel("export", str(run_copy), "--format", "coco", "--out", out, "--partial")
    assert partial.returncode == 0, partial.stderr[-2000:]
    images = {row["autolabel_image_id"] for row in json.loads(Path(out).read_text())["images"]}
    assert len(images) == 4  # the committed shard's images


# --- faults are classified; the error budget -------------------------------------------------


@pytest.mark.slow
def test_a_generation_fault_on_every_image_fails_shards_not_images(tmp_path, micro_overrides):
    folder = photos(tmp_path / "in", 2)
    output = tmp_path / "out"
    result = cli_run(
        folder, output, *micro_overrides, "runtime.shard_size=2", "runtime.num_actors=1",
        env={"AUTOLABEL_TEST_FAULT": "generation"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    manifest = json.loads((output / "_run.json").read_text())
    assert manifest["status"] == "failed"
    assert sorted(manifest["failed_shards"]) == ["shard-00000"]
    attempts = manifest["shard_attempts"]["shard-00000"]
    assert [attempt["attempt"] for attempt in attempts] == [1, 2, 3]
    for attempt in attempts:
        assert attempt["error"].startswith("SystematicFaultError: mask generation failed on all 2")
        assert "RuntimeError: injected generation fault" in attempt["error"]
    assert "failed: shard-00000: SystematicFaultError: mask generation" in result.stdout
    assert not list((output / "_shards").glob("*.json"))  # no image passed as a bad one


def test_an_unreadable_image_is_a_read_error_row(tmp_path, micro_overrides):
    """The kind of each error row is recorded, per row and in the run's counts."""
    folder = photos(tmp_path / "in", 3, broken=1)
    output = tmp_path / "out"
    job = load_config(None, [*micro_overrides, "runtime.shard_size=4"])
    summary = execute(plan_run(job, Location(str(folder)), Location(str(output))), False)
    assert summary.succeeded and summary.error_kinds == {"read": 1}
    rows = ds.dataset(output / "images").to_table().to_pylist()
    kinds = {Path(r["image_uri"]).name: (r["status"], r["error_kind"]) for r in rows}
    assert kinds["broken_0.jpg"] == ("error", "read")
    assert kinds["photo_00.png"] == ("ok", None)


def test_all_broken_input_fails_the_run_unless_the_budget_allows(tmp_path, micro_overrides):
    folder = photos(tmp_path / "in", 0, broken=6)
    job = load_config(None, [*micro_overrides, "runtime.shard_size=3"])
    strict = execute(plan_run(job, Location(str(folder)), Location(str(tmp_path / "no"))), False)
    assert not strict.succeeded and not strict.failed_shards  # the CLI's exit code is 1
    manifest = json.loads((tmp_path / "no" / "_run.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["reason"] == strict.over_budget
    assert manifest["reason"].startswith("6 of 6 images failed to read: ")
    assert "(6)" in manifest["reason"]  # like reasons counted together
    job = load_config(None, [*micro_overrides, "runtime.max_error_fraction=1.0"])
    lenient = execute(plan_run(job, Location(str(folder)), Location(str(tmp_path / "ok"))), False)
    assert lenient.succeeded and lenient.errors == 6
    assert json.loads((tmp_path / "ok" / "_run.json").read_text())["status"] == "complete"


# --- one writer per output -----------------------------------------------------------------


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def two_drivers(input_: str, output: str, exists, overrides: list[str]) -> None:
    """Start a driver, start a second on the same output while the first runs: the second
    is refused at once, naming the first; the first ends with every image once."""
    first = cli_run(input_, output, *overrides, wait=False)
    wait_for(lambda: exists(f"{output}/_run.json"), 120)
    second = cli_run(input_, output, *overrides)
    assert second.returncode == 2
    line = error_line(second)
    assert f"{socket.gethostname()} pid {first.pid} (autolabel run)" in line
    assert "being written by another command" in line
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]


def test_two_drivers_on_one_local_output(tmp_path, micro_overrides):
    folder = photos(tmp_path / "in", 8)
    output = tmp_path / "out"
    overrides = [*micro_overrides, "runtime.shard_size=1", "runtime.num_actors=1"]
    two_drivers(str(folder), str(output), os.path.exists, overrides)
    uris = ds.dataset(output / "images").to_table().column("image_uri").to_pylist()
    assert sorted(uris) == sorted(str(p) for p in folder.iterdir())
    assert not (output / LEASE_NAME).exists()  # released


@pytest.mark.slow
def test_two_drivers_on_one_s3_output(s3, tmp_path, micro_overrides):
    fs, prefix = s3
    for path in photos(tmp_path / "in", 6).iterdir():
        fs.put(str(path), f"{prefix}/in/{path.name}")
    overrides = [*micro_overrides, "runtime.shard_size=1", "runtime.num_actors=1"]
    output = f"s3://{prefix}/out"

    def exists(uri: str) -> bool:
        fs.invalidate_cache()
        return fs.exists(uri)

    two_drivers(f"s3://{prefix}/in", output, exists, overrides)
    fs.invalidate_cache()
    with fs.open(f"{prefix}/out/_run.json") as f:
        assert json.load(f)["counts"]["images"] == 6
    table = ds.dataset(f"{prefix}/out/images", filesystem=fs).to_table()
    assert sorted(table.column("image_uri").to_pylist()) == [
        f"s3://{prefix}/in/photo_{i:02d}.png" for i in range(6)
    ]
    assert not fs.exists(f"{prefix}/out/{LEASE_NAME}")


def test_a_stale_lease_from_another_host_is_taken_over_a_fresh_one_refused(tmp_path):
    output = Location(str(tmp_path / "out"))
    record = {
        "id": "elsewhere",
        "host": "other-host.example",
        "pid": 4242,
        "command": "autolabel run",
        "started_at": time.time() - 3600,
        "heartbeat_at": time.time(),
    }
    output.join(LEASE_NAME).write_json_atomic(record)
    with pytest.raises(OutputBusyError, match=r"other-host\.example pid 4242 \(autolabel run\)"):
        Lease(output, "autolabel run").acquire()
    # On this host the holder's process decides, whatever its heartbeat: a running one (with
    # its start time) holds the lease; a pid now used by another process does not.
    parent = psutil.Process(os.getppid())
    here = {**record, "host": socket.gethostname(), "heartbeat_at": time.time() - 600}
    output.join(LEASE_NAME).write_json_atomic(
        {**here, "pid": parent.pid, "pid_started": parent.create_time()}
    )
    with pytest.raises(OutputBusyError, match=f"pid {parent.pid} "):
        Lease(output, "autolabel run").acquire()
    output.join(LEASE_NAME).write_json_atomic(
        {**here, "pid": parent.pid, "pid_started": parent.create_time() - 1000}
    )
    Lease(output, "autolabel run").acquire().release()  # the pid was reused: taken over
    output.join(LEASE_NAME).write_json_atomic({**record, "heartbeat_at": time.time() - 600})
    lease = Lease(output, "autolabel run").acquire()
    try:
        assert lease.took_over is not None and lease.took_over.host == "other-host.example"
        held = json.loads(Path(tmp_path / "out" / LEASE_NAME).read_text())
        assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
        with pytest.raises(OutputBusyError):  # this process's own live lease
            Lease(output, "autolabel filter").acquire()
    finally:
        lease.release()
    assert not (tmp_path / "out" / LEASE_NAME).exists()


def test_a_killed_filter_resumes_to_the_same_result(tmp_path):
    from benchmarks.synthetic_run import write_synthetic_run

    source = tmp_path / "big"
    write_synthetic_run(str(source), images=6000, masks_per_image=30, shard_size=25)
    flags = ["--min-predicted-iou", "0.5", "--top-k", "12"]
    clean = autolabel("filter", str(source), str(tmp_path / "clean"), *flags)
    assert clean.returncode == 0, clean.stderr[-2000:]
    output = tmp_path / "killed"
    command = [sys.executable, "-m", "pipeline.cli", "filter", str(source), str(output), *flags]
    killed = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: len(list((output / "_shards").glob("*.json"))) >= 5, 120)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done = len(list((output / "_shards").glob("*.json")))
    assert 5 <= done < 240, "the kill came too late to test a resume"
    stats = autolabel("stats", str(output))
    assert re.search(r"interrupted: \d+ of 240 shards committed", stats.stderr), stats.stderr
    again = autolabel("filter", str(source), str(output), *flags)  # same command, no flags
    assert again.returncode == 0, again.stderr[-2000:]
    manifest = json.loads((output / "_run.json").read_text())
    assert manifest["status"] == "complete" and manifest["resumed_shards"] >= done

    def rows(run: Path):
        table = ds.dataset(run / "masks").to_table().drop_columns(["segmentation"])
        return sorted(map(str, table.to_pylist()))

    assert rows(output) == rows(tmp_path / "clean")


# --- the pages check Host --------------------------------------------------------------------


def serve_view(run: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """Start ``autolabel view`` and return it with the URL it printed."""
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "view", str(run), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline()
    return server, re.search(r"http://\S+", line).group(0)


def request(port: int, path: str, host: str, cookie: str | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Host": host, **({"Cookie": cookie} if cookie else {})}
    connection.request("GET", path, headers=headers)
    return connection.getresponse()


def test_the_view_page_refuses_a_foreign_host_and_needs_a_token_off_loopback(good_run):
    server, url = serve_view(good_run)
    try:
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/$", url).group(1))
        assert request(port, "/api/summary", f"127.0.0.1:{port}").status == 200
        assert request(port, "/api/summary", f"localhost:{port}").status == 200
        assert request(port, "/api/summary", f"attacker.example:{port}").status == 421
        assert request(port, "/", "attacker.example").status == 421
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    server, url = serve_view(good_run, "--host", "0.0.0.0")
    try:
        match = re.search(r"http://0\.0\.0\.0:(\d+)/\?token=(\S+)$", url)
        port, token = int(match.group(1)), match.group(2)
        assert request(port, "/api/summary", f"labelbox.lan:{port}").status == 403
        assert request(port, "/api/summary?token=wrong", f"labelbox.lan:{port}").status == 403
        first = request(port, f"/?token={token}", f"labelbox.lan:{port}")
        assert first.status == 200
        cookie = first.getheader("set-cookie").split(";")[0]
        assert request(port, "/api/summary", f"labelbox.lan:{port}", cookie).status == 200
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
