"""``autolabel run --dry-run`` (issue 24): the plan a run would execute, printed, with nothing
written anywhere, and the same refusal (exit 2, one line) where the run would be refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.lease import Lease
from pipeline.core.storage import Location
from tests.conftest import autolabel, make_scene
from tests.test_pipeline import run


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``folder``: size and modification time."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def dry_run(source: Path, output: Path, *args: str):
    return autolabel("run", "--input", str(source), "--output", str(output), "--dry-run", *args)


def test_a_dry_run_on_a_new_output_plans_the_images_and_creates_nothing(
    image_folder, tmp_path, micro_overrides
):
    output = tmp_path / "out" / "run"
    done = dry_run(image_folder, output, *micro_overrides, "runtime.shard_size=3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "out").exists(), "not even the output folder"
    lines = done.stdout.splitlines()
    assert lines[0].startswith("dry run: nothing was written")
    assert f"output:  {output}: a new run" in lines
    # 7 images and one file that will fail to decode (an error row): 8 listed, 3 shards.
    assert "images:  8 in 3 shards of up to 3" in lines
    assert "to do:   3 shard(s), 8 images; 0 shard(s) already committed" in lines

    coco = {
        "images": [
            {"id": 1, "file_name": "img_0.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "nested/deep.jpg", "width": 80, "height": 60},
            {"id": 3, "file_name": "not_in_the_input.png", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [2, 2, 20, 20], "category_id": 1},
            {"id": 2, "image_id": 1, "bbox": [30, 10, 20, 20], "category_id": 1},
            {"id": 3, "image_id": 2, "bbox": [5, 5, 30, 30], "category_id": 1},
            {"id": 4, "image_id": 3, "bbox": [5, 5, 30, 30], "category_id": 1},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(coco))
    done = dry_run(image_folder, output, "--prompts", str(boxes), *micro_overrides)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "prompts: 3 matched to input images, 1 not (e.g. not_in_the_input.png)" in done.stdout
    assert not (tmp_path / "out").exists()

    missing = [*micro_overrides, f"model.checkpoint={tmp_path / 'gone.pt'}"]
    bad = dry_run(image_folder, output, *missing)
    real = autolabel("run", "--input", str(image_folder), "--output", str(output), *missing)
    assert bad.returncode == real.returncode == 2 and "checkpoint not found" in real.stderr
    assert bad.stderr == real.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("ray_local")
def test_a_dry_run_over_a_run_says_what_a_resume_or_an_append_would_do(
    image_folder, tmp_path, micro_overrides
):
    output = tmp_path / "out"
    overrides = [*micro_overrides, "runtime.shard_size=3"]
    run(image_folder, output, overrides)
    before = files_of(output)

    same = dry_run(image_folder, output, *overrides)
    assert same.returncode == 0, same.stderr[-2000:]
    assert "resumes the run there" in same.stdout
    assert "to do:   0 shard(s), 0 images; 3 shard(s) already committed" in same.stdout

    for i in range(4):
        make_scene(60, 40, seed=100 + i).save(image_folder / f"new_{i}.png")
    (image_folder / "img_0.png").unlink()
    refused = dry_run(image_folder, output, *overrides)
    real = autolabel("run", "--input", str(image_folder), "--output", str(output), *overrides)
    assert refused.returncode == real.returncode == 2
    assert refused.stderr == real.stderr and "4 new image(s), 1 image(s) of the run" in real.stderr

    grown = dry_run(image_folder, output, "--append", *overrides)
    assert grown.returncode == 0, grown.stderr[-2000:]
    lines = grown.stdout.splitlines()
    assert "append:  4 new image(s) in 2 new shard(s)" in lines
    assert any(line.startswith("removed: 1 image(s)") and "img_0.png" in line for line in lines)
    assert "images:  12 in 5 shards of up to 3" in lines
    assert "to do:   2 shard(s), 4 images; 3 shard(s) already committed" in lines

    other = dry_run(image_folder, output, "--append", *overrides, "amg.points_per_side=6")
    real = autolabel(
        "run", "--input", str(image_folder), "--output", str(output), "--append", *overrides,
        "amg.points_per_side=6",
    )  # fmt: skip
    assert other.returncode == real.returncode == 2 and other.stderr == real.stderr

    with Lease(Location(str(output)), "another autolabel run"):
        busy = dry_run(image_folder, output, "--append", *overrides)
    assert busy.returncode == 2 and "another autolabel run" in busy.stderr, busy.stderr

    # --overwrite with other settings: the plan replaces the run, which stays as it is.
    replaced = dry_run(image_folder, output, "--overwrite", *overrides, "amg.points_per_side=6")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert "replaces the run there (--overwrite" in replaced.stdout
    assert "to do:   4 shard(s), 11 images; 0 shard(s) already committed" in replaced.stdout
    assert files_of(output) == before, "the dry runs wrote nothing"

    plan, summary = run(image_folder, output, overrides, append=True)
    assert summary.succeeded and [s.size for s in plan.todo] == [3, 1]


def test_a_dry_run_takes_no_lease(image_folder, tmp_path, micro_overrides, monkeypatch, capsys):
    """In process, with taking a lease made to fail: the dry run never tries."""
    from pipeline.cli import main

    def taken(self):
        raise AssertionError("a dry run took the lease")

    monkeypatch.setattr(Lease, "acquire", taken)
    args = ["run", "--input", str(image_folder), "--output", str(tmp_path / "out"), "--dry-run"]
    assert main([*args, *micro_overrides]) == 0
    assert "a new run" in capsys.readouterr().out and not (tmp_path / "out").exists()
