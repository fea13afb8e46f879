"""``autolabel compare`` (issue 23): two runs over the same images, matched mask by mask."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from benchmarks.synthetic_run import write_synthetic_run
from pipeline.core.executor import ShardPool
from pipeline.results.compare import compare_runs
from pipeline.results.dataset import open_run
from tests.conftest import autolabel

SUMMARY_KEYS = {"mean_iou", "matched", "only_a", "only_b", "count_mismatches", "images"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "run"
    write_synthetic_run(str(out), images=6, masks_per_image=8, shard_size=4, seed=3)
    return out


def test_a_run_compared_with_itself_agrees_everywhere(run, tmp_path):
    result = autolabel("compare", str(run), str(run), "--out", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mean IoU of matched pairs" in result.stdout and "1.0000" in result.stdout
    report = json.loads((tmp_path / "c" / "compare.json").read_text())
    masks = open_run(str(run)).masks.count_rows()
    assert SUMMARY_KEYS | {"settings_diff"} <= set(report)
    assert report["mean_iou"] == 1.0 and report["matched"] == masks == report["masks_a"]
    assert report["only_a"] == report["only_b"] == report["count_mismatches"] == 0
    assert report["images"] == 6 and report["settings_diff"] == {}
    per_image = pq.read_table(tmp_path / "c" / "images.parquet").to_pylist()
    assert len(per_image) == 6 and sum(row["matched"] for row in per_image) == masks
    assert (tmp_path / "c" / "iou.png").stat().st_size > 0
    missing = autolabel("compare", str(run), str(tmp_path / "nothing"))
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "no autolabel run" in missing.stderr


@pytest.mark.usefixtures("ray_local")
def test_a_filtered_copy_lacks_exactly_the_removed_masks(run, tmp_path):
    kept = tmp_path / "kept"
    done = autolabel("filter", str(run), str(kept), "--min-predicted-iou", "0.9", "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    before = open_run(str(run)).masks.to_table(columns=["image_id"]).column("image_id")
    after = open_run(str(kept)).masks.to_table(columns=["image_id"]).column("image_id")
    assert 0 < len(after) < len(before)
    here = compare_runs(str(run), str(kept))
    assert here.only_a == len(before) - len(after) and here.only_b == 0
    assert here.matched == len(after) and here.mean_iou == 1.0
    removed = {}
    for image_id in before.to_pylist():
        removed[image_id] = removed.get(image_id, 0) + 1
    for image_id in after.to_pylist():
        removed[image_id] -= 1
    assert {row["image_id"]: row["only_a"] for row in here.rows} == removed
    # Identical kept masks: an image's agreement is the share of its masks the filter kept.
    for row in here.rows:
        assert row["agreement"] == pytest.approx(row["masks_b"] / row["masks_a"])
    share = {row["image_id"]: row["masks_b"] / row["masks_a"] for row in here.rows}
    assert [row["image_id"] for row in here.worst] == sorted(share, key=lambda i: (share[i], i))
    on_ray = compare_runs(str(run), str(kept), pool=ShardPool(use_ray=True))
    assert on_ray.summary() == here.summary() and on_ray.rows == here.rows


@pytest.mark.slow
def test_fast_and_reference_generators_compared_show_the_parity(tmp_path):
    """``generator.impl=reference`` (sam2's own generator) against the fast one on unseen
    synthetic scenes, both through ``autolabel run``: the parity the parity tests assert, and
    the one setting that differs."""
    from pipeline.synthetic.scenes import write_dataset

    write_dataset(str(tmp_path / "scenes"), 2, seed=90_011)
    runs = {}
    for impl in ("fast", "reference"):
        runs[impl] = tmp_path / impl
        args = ["run", "--input", str(tmp_path / "scenes" / "images"), "--output", str(runs[impl])]
        args += ["--no-progress", "model.name=sam2-tiny-synthetic", "model.dtype=float32"]
        args += ["model.image_size=256"]  # parity does not depend on it; 512 is 2.5× slower
        done = autolabel(*args, f"generator.impl={impl}")
        assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "compared"
    result = autolabel("compare", str(runs["reference"]), str(runs["fast"]), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "compare.json").read_text())
    assert report["masks_a"] >= 4 and report["images"] == 2
    assert report["count_mismatches"] == report["only_a"] == report["only_b"] == 0
    assert report["mean_iou"] > 0.999
    assert report["max_predicted_iou_diff"] < 1e-4 and report["max_stability_diff"] < 1e-3
    assert report["settings_diff"] == {"config.generator.impl": ["reference", "fast"]}
    assert ds.dataset(out / "images.parquet").count_rows() == 2


def test_runs_of_other_masks_and_other_images_add_up(run, tmp_path):
    """B: other masks over the first 4 of A's 6 images and 3 more, sharded otherwise. Every
    mask is matched or counted as only in one run, pairs meet the bound, and the images in
    one run only are counted."""
    other = tmp_path / "other"
    write_synthetic_run(str(other), images=9, masks_per_image=8, shard_size=2, seed=4)
    ids_a = open_run(str(run)).images.to_table().column("image_id").to_pylist()
    ids_b = open_run(str(other)).images.to_table().column("image_id").to_pylist()
    assert len(set(ids_a) & set(ids_b)) == 6  # the synthetic runs number images 0, 1, 2 …
    comparison = compare_runs(str(run), str(other), iou=0.3)
    assert comparison.images == 6 and comparison.images_only_b == 3
    assert comparison.images_only_a == 0
    masks_b = sum(r["masks_b"] for r in comparison.rows)
    assert comparison.masks_a == open_run(str(run)).masks.count_rows()
    assert comparison.matched + comparison.only_a == comparison.masks_a
    assert comparison.matched + comparison.only_b == comparison.masks_b == masks_b
    assert 0 < comparison.matched < comparison.masks_a  # random masks: some pairs, not all
    assert 0.3 <= comparison.mean_iou < 1.0
    strict = compare_runs(str(run), str(other), iou=0.9)
    assert strict.matched < comparison.matched
    assert strict.mean_iou >= 0.9 if strict.matched else strict.mean_iou == 0.0
    swapped = compare_runs(str(other), str(run), iou=0.3)
    assert (swapped.only_a, swapped.only_b) == (comparison.only_b, comparison.only_a)
    assert swapped.images_only_a == 3 and swapped.images_only_b == 0


def test_runs_without_a_common_image_are_refused(run, tmp_path):
    other = tmp_path / "other"
    write_synthetic_run(str(other), images=2, masks_per_image=3, seed=9, first_id=1000)
    result = autolabel("compare", str(run), str(other), "--no-progress")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "have no labelled image in common (6 and 2 ok images" in line
    inside = autolabel("compare", str(run), str(other), "--out", str(run / "cmp"))
    assert inside.returncode == 2 and "lies inside the run A" in inside.stderr
