"""Losing the object store mid-run: a SeaweedFS server of this test's own, stopped while the
job works and started again on the same data. The shard that met the outage fails whole, the
run says so (exit 1), and a rerun completes to exactly the clean run's dataset."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline.results.dataset import open_run
from tests.conftest import MICRO_CONFIG, ROOT, SeaweedFS, make_scene

BUCKET = "store-loss"


@pytest.fixture()
def store(tmp_path):
    server = SeaweedFS(tmp_path / "weed")
    (tmp_path / "weed").mkdir()
    server.start(BUCKET)
    yield server
    server.stop()


def run_args(server: SeaweedFS, checkpoint: str, output: str) -> list[str]:
    """``autolabel run`` over the bucket's images, the store named in the job's own options
    (so Ray's workers reach this server whatever their environment)."""
    return [
        sys.executable, "-m", "pipeline.cli", "run", "--no-progress",
        "--input", f"s3://{BUCKET}/images", "--output", f"s3://{BUCKET}/{output}",
        f"model.config={MICRO_CONFIG}", f"model.checkpoint={checkpoint}",
        "amg.points_per_side=6", "amg.pred_iou_thresh=0", "amg.stability_score_thresh=0",
        "runtime.shard_size=1", "runtime.num_actors=1", "runtime.cpus_per_actor=1",
        f"storage.options.endpoint_url={server.endpoint}",
        f"storage.options.key={server.KEYS['key']}",
        f"storage.options.secret={server.KEYS['secret']}",
        # botocore's own retries: one try (ours still retry), so an outage shows in seconds
        "storage.options.config_kwargs.retries.max_attempts=1",
    ]  # fmt: skip


def dataset(fs: s3fs.S3FileSystem, output: str) -> dict[str, list[dict]]:
    """The run's mask and image rows (committed shards), sorted, without timings."""
    rows = {}
    fs.invalidate_cache()  # s3fs keeps listings: read what the bucket holds now
    for part in ("masks", "images"):
        table = ds.dataset(f"{BUCKET}/{output}/{part}", filesystem=fs).to_table()
        drop = [c for c in ("seconds",) if c in table.column_names]
        rows[part] = sorted(
            table.drop(drop).to_pylist(), key=lambda r: (r["image_id"], r.get("mask_index", 0))
        )
    return rows


@pytest.mark.slow
def test_a_store_outage_fails_shards_whole_and_a_rerun_completes(store, tmp_path, micro_checkpoint):
    fs = s3fs.S3FileSystem(endpoint_url=store.endpoint, skip_instance_cache=True, **store.KEYS)
    for i in range(4):
        make_scene(96, 72, seed=700 + i).save(tmp_path / f"scene_{i}.png")
        fs.put_file(str(tmp_path / f"scene_{i}.png"), f"{BUCKET}/images/scene_{i}.png")
    clean = subprocess.run(
        run_args(store, micro_checkpoint, "clean"), cwd=ROOT, capture_output=True, text=True
    )
    assert clean.returncode == 0, clean.stderr[-3000:]

    driver = subprocess.Popen(
        run_args(store, micro_checkpoint, "run"), cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not fs.glob(f"{BUCKET}/run/_shards/*.json"):
        assert time.time() < deadline and driver.poll() is None
        time.sleep(0.2)
        fs.invalidate_cache()
    store.stop()  # the store goes away with shards left to do
    log = []
    while not any("attempt 3 failed" in line for line in log):  # a shard gave up
        line = driver.stderr.readline()
        assert line or driver.poll() is None, "".join(log)[-3000:]
        log.append(line)
    store.start(BUCKET)
    log.append(driver.stderr.read())
    assert driver.wait(timeout=300) == 1, "".join(log)[-3000:]

    fs = s3fs.S3FileSystem(endpoint_url=store.endpoint, skip_instance_cache=True, **store.KEYS)
    manifest = fs.cat(f"{BUCKET}/run/_run.json").decode()
    assert '"status": "failed"' in manifest and '"failed_shards": {\n    "shard-0000' in manifest
    committed = {p.rsplit("/", 1)[1][:-5] for p in fs.glob(f"{BUCKET}/run/_shards/*.json")}
    assert 0 < len(committed) < 4 and not fs.glob(f"{BUCKET}/run/**/*.partial")
    for shard in committed:  # a committed shard's files are whole: all the rows it counted
        marker = json.loads(fs.cat(f"{BUCKET}/run/_shards/{shard}.json"))
        for part in ("masks", "images"):
            with fs.open(f"{BUCKET}/run/{part}/{shard}.parquet") as f:
                assert pq.read_metadata(f).num_rows == marker[part]
    # What readers see is the committed shards only (a failed shard may leave an object the
    # store listed mid-upload: no reader looks at it, and the rerun replaces it).
    run = open_run(f"s3://{BUCKET}/run", {"endpoint_url": store.endpoint, **store.KEYS})
    assert set(run.shards) == committed
    seen = {r["shard"] for r in run.images.to_table(columns=["shard"]).to_pylist()}
    assert seen == committed

    rerun = subprocess.run(
        run_args(store, micro_checkpoint, "run"), cwd=ROOT, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert dataset(fs, "run") == dataset(fs, "clean")
