"""`make cluster-demo`'s script: a real two-node Ray cluster, `ray job submit`, stopped after."""

import json
import subprocess

import psutil
import pyarrow.dataset as ds
import pytest

from tests.conftest import ROOT


def ray_processes() -> set[int]:
    names = ("gcs_server", "raylet")
    return {
        p.pid
        for p in psutil.process_iter(["name"])
        if p.info["name"] in names and p.status() != psutil.STATUS_ZOMBIE
    }


@pytest.mark.slow
def test_cluster_demo_submits_to_two_nodes_and_cleans_up(tmp_path, micro_checkpoint):
    before = ray_processes()
    output = tmp_path / "out"
    result = subprocess.run(
        ["bash", "jobs/cluster_demo.sh", str(output), micro_checkpoint],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "cluster up: 2 nodes" in result.stdout
    assert "succeeded" in result.stdout + result.stderr
    images = ds.dataset(output / "images").to_table().to_pylist()
    assert len(images) == 8 and all(r["status"] == "ok" for r in images)
    markers = [json.loads(p.read_text()) for p in (output / "_shards").glob("*.json")]
    assert len({m["node"] for m in markers}) == 2, "both nodes should have written shards"
    assert ray_processes() <= before, "the demo cluster was left running"
