"""Commands answer in one line (issue 22): tried as a careless user would, each case ends in a
one-line message with exit code 2 (usage) or 1 (failure), or does its work around the one
broken part, never in a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.synthetic_run import write_synthetic_run
from pipeline.core.storage import Location
from tests.conftest import ROOT, autolabel

SCENES = ROOT / "samples" / "scenes" / "images"


def one_line(result: subprocess.CompletedProcess) -> str:
    """The command's only stderr line (fails when there are more, e.g. a traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture()
def scenes(tmp_path) -> Path:
    """Three of the shipped scenes in a folder of their own (tests may delete one)."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    for source in sorted(SCENES.glob("*.png"))[:3]:
        shutil.copy(source, folder / source.name)
    return folder


@pytest.fixture()
def small_run(tmp_path, scenes) -> Path:
    """A finished run (synthetic masks) over the three scenes."""
    out = tmp_path / "run"
    write_synthetic_run(str(out), images=3, masks_per_image=4, shard_size=2, scenes=scenes)
    return out


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("{not json", "is not JSON"),
        ("[1, 2]", "is not a COCO instances file"),
    ],
)
def test_eval_ground_truth_that_cannot_be_used(small_run, tmp_path, content, message):
    gt = tmp_path / "annotations.json"
    if content is not None:
        gt.write_text(content)
    result = autolabel("eval", str(small_run), "--gt", str(gt))
    assert result.returncode == 2
    assert message in one_line(result) and str(gt) in one_line(result)


@pytest.mark.parametrize(
    "text, message",
    [
        ("amg:\n  points_per_side: 8\n  points_per_side: 16\n", "line 3, column 3: found dup"),
        ("amg:\n  points_per_side: [8\n", "is not valid YAML at line 3"),
        ("- amg\n- model\n", "holds a list, not settings"),
    ],
)
def test_a_config_file_that_is_not_settings(tmp_path, text, message):
    preset = tmp_path / "mine.yaml"
    preset.write_text(text)
    for command in (["config"], ["run", "--input", str(SCENES), "--output", str(tmp_path / "o")]):
        result = autolabel(*command, "--config", str(preset))
        assert result.returncode == 2
        assert message in one_line(result)
    assert not (tmp_path / "o").exists()


def test_view_port_and_host_that_cannot_be_served(small_run):
    out_of_range = autolabel("view", str(small_run), "--port", "70000")
    assert out_of_range.returncode == 2
    assert "must be at most 65535, not 70000" in out_of_range.stderr.strip().splitlines()[-1]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        in_use = autolabel("view", str(small_run), "--port", str(port), timeout=300)
    assert in_use.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use; give another --port" in one_line(in_use)
    unknown = autolabel("view", str(small_run), "--host", "no-such-host.invalid", timeout=300)
    assert unknown.returncode == 1
    assert "--host no-such-host.invalid does not resolve" in one_line(unknown)


OTHER_USER = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]  # root drops to this


@pytest.fixture()
def shared_folder() -> Iterator[Path]:
    """A folder every user can read (the tests' own temporary folders are private to root).
    Skips when the other user cannot read this checkout's package (a clone inside a private
    folder, e.g. one made by ``mktemp -d``, mode 700): nothing could run as that user."""
    if os.geteuid() == 0:
        check = [*OTHER_USER, sys.executable, "-c", "import pipeline.cli"]
        if subprocess.run(check, cwd=ROOT, capture_output=True).returncode != 0:
            pytest.skip(f"another user cannot read this checkout ({ROOT}): clone it elsewhere")
    folder = Path(tempfile.mkdtemp(prefix="autolabel-ro-"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(folder)


def as_another_user(*args: str) -> subprocess.CompletedProcess:
    """``autolabel ARGS`` as a user who owns nothing here (root may write anywhere)."""
    prefix = OTHER_USER if os.geteuid() == 0 else []
    command = [*prefix, sys.executable, "-m", "pipeline.cli", *args]
    env = {**os.environ, "HOME": "/tmp", "MPLCONFIGDIR": tempfile.gettempdir()}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="needs setpriv")
def test_a_read_only_output_folder_is_refused_before_any_work(shared_folder):
    scenes = shared_folder / "scenes"
    scenes.mkdir()
    shutil.copy(sorted(SCENES.glob("*.png"))[0], scenes)
    run = shared_folder / "run"
    write_synthetic_run(str(run), images=2, masks_per_image=3, scenes=scenes)
    for path in [shared_folder, *shared_folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    locked = shared_folder / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    cases = [
        (["stats", str(run), "--out", str(locked / "stats")], "--out"),
        (["show", str(run), "--out", str(locked), "--sample", "1"], "--out"),
        (["export", str(run), "--format", "coco", "--out", str(locked / "c.json")], "--out"),
        (["run", "--input", str(scenes), "--output", str(locked / "run")], "--output"),
    ]
    for args, flag in cases:
        result = as_another_user(*args)
        assert result.returncode == 1, result.stderr[-2000:]
        assert f"{flag} {args[args.index(flag) + 1]}: cannot write in {locked}" in one_line(result)
    assert list(locked.iterdir()) == []


def test_show_draws_the_others_when_an_image_is_gone(small_run, scenes, tmp_path):
    gone = sorted(scenes.glob("*.png"))[1]
    gone.unlink()
    result = autolabel("show", str(small_run), "--out", str(tmp_path / "ov"), "--sample", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"not drawn: {gone}: cannot read file" in one_line(result)
    assert "wrote 2 overlays" in result.stdout
    drawn = sorted(p.name for p in (tmp_path / "ov").iterdir())
    assert drawn == ["0.png", "2.png"]  # image 1 points at the file that is gone
    for name in drawn:
        with Image.open(tmp_path / "ov" / name) as picture:
            assert picture.size == (256, 256)


@pytest.mark.parametrize(
    "image_id, message",
    [("7", "no image with id 7 in"), ("-1", "no image with id -1 in")],
)
def test_show_an_unknown_image_id(small_run, tmp_path, image_id, message):
    result = autolabel("show", str(small_run), "--image-id", image_id, "--out", str(tmp_path))
    assert result.returncode == 2
    line = one_line(result)
    assert message in line and "its ids run from 0 to 2" in line


def test_stats_of_a_run_killed_before_its_first_shard(tmp_path):
    """No shard was committed: the table (all counts 0) instead of a crash on NaN, and a
    stats.json that JSON readers load (null, not NaN)."""
    run = tmp_path / "run"
    write_synthetic_run(str(run), images=0)
    manifest = run / "_run.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "status": "running"}))
    result = autolabel("stats", str(run), "--out", str(tmp_path / "stats"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "images ok 0, error 0; masks 0" in result.stdout
    document = json.loads((tmp_path / "stats" / "stats.json").read_text(), parse_constant=list)
    assert document["masks"] == 0
    assert document["predicted_iou"]["p50"] is None


def wait_for(predicate, seconds: float, what: str) -> None:
    """Poll ``predicate`` until it is true (fails after ``seconds``)."""
    deadline = time.time() + seconds
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_says_how_to_resume_and_resumes(tmp_path, micro_overrides, stop, code):
    """Ctrl-C (SIGINT to the terminal's whole process group) or SIGTERM in the middle of a run:
    one line, no Ray stack, exit 130/143; the same command then finishes the run."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)).save(images / f"{i:02d}.png")
    out = tmp_path / "out"
    args = ["run", "--input", str(images), "--output", str(out), "--no-progress"]
    args += [*micro_overrides, "runtime.shard_size=2", "runtime.num_actors=1"]
    command = [sys.executable, "-m", "pipeline.cli", *args]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    markers = out / "_shards"
    wait_for(lambda: markers.exists() and any(markers.iterdir()), 240, "a first shard")
    if stop == signal.SIGINT:
        os.killpg(process.pid, stop)  # what Ctrl-C in a terminal does
    else:
        process.send_signal(stop)  # what a scheduler does
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "autolabel: interrupted; rerun the same command to resume (finished shards are kept)"
    )
    done_before = {p.name for p in markers.iterdir()}
    assert 0 < len(done_before) < 12
    again = autolabel(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list(markers.iterdir())) == 12
    from pipeline.results.dataset import open_run

    assert open_run(Location(str(out))).images.count_rows() == 24


@pytest.mark.slow
def test_ctrl_c_stops_view_in_one_line(small_run):
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "view", str(small_run)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert "http://" in process.stdout.readline()
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130
    assert stderr.strip().splitlines() == ["autolabel: interrupted"]
