"""The output layout and the shard commit, on a local disk or an object store.

```
OUT/
  masks/shard-00000.parquet    mask rows  (pyarrow.dataset / DuckDB / Ray Data read this folder)
  images/shard-00000.parquet   image rows
  _shards/shard-00000.json     commit marker with the shard's counts, written last
  _run.json                    run manifest: config, model, versions, counts
```
Readers skip names starting with ``_`` or ``.``. A shard counts as done only when its marker
exists; a rerun redoes (and overwrites) any shard without one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.storage import join, open_fs, read_json, write_atomic, write_json_atomic

MANIFEST_NAME = "_run.json"


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run's output under ``root`` (a local path or URI)."""

    root: str

    @property
    def masks_dir(self) -> str:
        return join(self.root, "masks")

    @property
    def images_dir(self) -> str:
        return join(self.root, "images")

    @property
    def markers_dir(self) -> str:
        return join(self.root, "_shards")

    @property
    def manifest(self) -> str:
        return join(self.root, MANIFEST_NAME)

    def masks_file(self, shard: str) -> str:
        return join(self.masks_dir, f"{shard}.parquet")

    def images_file(self, shard: str) -> str:
        return join(self.images_dir, f"{shard}.parquet")

    def marker(self, shard: str) -> str:
        return join(self.markers_dir, f"{shard}.json")


def committed_shards(layout: RunLayout, storage_options: dict[str, Any] | None = None) -> set[str]:
    """Names of the shards whose commit marker exists."""
    fs, path = open_fs(layout.markers_dir, storage_options)
    if not fs.exists(path):
        return set()
    names = (os.path.basename(p) for p in fs.ls(path, detail=False))
    return {n[: -len(".json")] for n in names if n.endswith(".json")}


def sort_for_score_filters(masks: pa.Table) -> pa.Table:
    """Order mask rows by predicted IoU, so each row group spans a narrow score range and a
    score filter skips most row groups (image order is kept within equal scores)."""
    if masks.num_rows == 0:
        return masks
    order = pc.sort_indices(masks, sort_keys=[("predicted_iou", "ascending")])
    return masks.take(order)


def write_parquet(
    table: pa.Table,
    uri: str,
    storage_options: dict[str, Any] | None,
    row_group_size: int,
    compression: str,
) -> None:
    """Write one Parquet file so that it appears whole or not at all (``write_atomic``)."""
    write_atomic(
        uri,
        lambda f: pq.write_table(table, f, row_group_size=row_group_size, compression=compression),
        storage_options,
    )


def commit_shard(
    layout: RunLayout,
    shard: str,
    masks: pa.Table,
    images: pa.Table,
    stats: dict[str, Any],
    storage_options: dict[str, Any] | None = None,
    row_group_size: int = 2000,
    compression: str = "zstd",
) -> None:
    """Write a shard's two Parquet files, then its commit marker.

    Args:
        layout: the run's output layout.
        shard: the shard's name (``shard-00000``).
        masks: its mask rows; images: its image rows.
        stats: counts stored in the marker (images, ok, errors, masks, seconds …).
        storage_options: fsspec options for the output.
        row_group_size: rows per row group in the mask file.
        compression: Parquet codec.
    """
    write_parquet(images, layout.images_file(shard), storage_options, 10_000, compression)
    write_parquet(
        sort_for_score_filters(masks),
        layout.masks_file(shard),
        storage_options,
        row_group_size,
        compression,
    )
    write_json_atomic(
        layout.marker(shard),
        {**stats, "shard": shard, "committed_at": time.time()},
        storage_options,
    )


def read_markers(
    layout: RunLayout, storage_options: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Every committed shard's marker, by shard name."""
    markers = {}
    for name in sorted(committed_shards(layout, storage_options)):
        marker = read_json(layout.marker(name), storage_options)
        if marker is not None:
            markers[name] = marker
    return markers


def remove_partials(layout: RunLayout, storage_options: dict[str, Any] | None = None) -> int:
    """Delete files a killed writer left under temporary names; returns how many."""
    removed = 0
    for folder in (layout.masks_dir, layout.images_dir, layout.markers_dir):
        fs, path = open_fs(folder, storage_options)
        if not fs.exists(path):
            continue
        for name in fs.ls(path, detail=False):
            base = os.path.basename(name)
            if base.endswith(".partial"):
                fs.rm(name)
                removed += 1
    return removed


def remove_run(layout: RunLayout, storage_options: dict[str, Any] | None) -> None:
    """Delete a previous run's files (``--overwrite``)."""
    for folder in (layout.markers_dir, layout.masks_dir, layout.images_dir):
        fs, path = open_fs(folder, storage_options)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    fs, path = open_fs(layout.manifest, storage_options)
    if fs.exists(path):
        fs.rm(path)
