"""Installed as users install it: a wheel, away from the checkout (issue 22).

The wheel is built from the repository, installed with ``pip install --no-deps --target`` (the
project's environment supplies the dependencies) and run from another folder with that target
first on ``PYTHONPATH``, so the checkout cannot be what is imported.
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.synthetic.scenes import write_dataset

ROOT = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from the repository."""
    work = tmp_path_factory.mktemp("wheel")
    build = [*PIP, "wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(work)]
    subprocess.run(build, check=True, cwd=work, capture_output=True)
    [built] = work.glob("autolabel-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a folder of its own (dependencies: this environment's)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([*PIP, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return target


def cli(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``autolabel ARGS`` with the installed package first on the path, run from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(target)}
    command = [sys.executable, "-m", "pipeline.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_carries_the_presets_and_the_shipped_model(wheel):
    """The files themselves, not links to the checkout."""
    with zipfile.ZipFile(wheel) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    for name in ("default.yaml", "sa1b.yaml", "models/sam2_tiny_synthetic.yaml"):
        assert sizes.get(f"pipeline/configs/{name}", 0) > 100, name
    shipped = ROOT / "configs/models/sam2_tiny_synthetic.pt"
    assert sizes["pipeline/configs/models/sam2_tiny_synthetic.pt"] == shipped.stat().st_size


def test_an_installed_wheel_finds_its_presets_and_model_from_anywhere(installed, tmp_path):
    """``autolabel config --config sa1b`` and a small run of the shipped model, from a folder
    that is not the checkout, with the wheel's copy of the package."""
    where = cli(installed, tmp_path, "config", "--config", "sa1b")
    assert where.returncode == 0, where.stderr
    assert "crop_n_layers: 2" in where.stdout
    env = {**os.environ, "PYTHONPATH": str(installed)}
    origin = subprocess.run(
        [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(origin.strip()).is_relative_to(installed)
    write_dataset(str(tmp_path / "scenes"), 2, seed=31)
    run = cli(
        installed,
        tmp_path,
        "run",
        "--input",
        "scenes/images",
        "--output",
        "out",
        "--no-progress",
        "model.name=sam2-tiny-synthetic",
        "amg.points_per_side=8",
    )
    assert run.returncode == 0, run.stderr
    manifest = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert str(installed) in json.dumps(manifest["model"]), manifest["model"]
    assert len(list((tmp_path / "out" / "images").glob("*.parquet"))) >= 1
    # the same run resumed with the checkout's copy of the package: the shipped model is
    # known by its name and weights, not by where the package was installed
    again = [sys.executable, "-m", "pipeline.cli", *run.args[3:]]
    resumed = subprocess.run(again, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "already committed" in resumed.stdout + resumed.stderr
