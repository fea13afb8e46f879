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

import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.storage import Location

MANIFEST_NAME = "_run.json"


@dataclass(frozen=True)
class RunLayout:
    """Locations of one run's output under ``root``."""

    root: Location

    @property
    def masks_dir(self) -> Location:
        return self.root.join("masks")

    @property
    def images_dir(self) -> Location:
        return self.root.join("images")

    @property
    def markers_dir(self) -> Location:
        return self.root.join("_shards")

    @property
    def manifest(self) -> Location:
        return self.root.join(MANIFEST_NAME)

    def masks_file(self, shard: str) -> Location:
        return self.masks_dir.join(f"{shard}.parquet")

    def images_file(self, shard: str) -> Location:
        return self.images_dir.join(f"{shard}.parquet")

    def marker(self, shard: str) -> Location:
        return self.markers_dir.join(f"{shard}.json")

    @property
    def listing_dir(self) -> Location:
        return self.root.join("_listing")

    def listing_file(self, name: str) -> Location:
        return self.listing_dir.join(name)


def committed_shards(layout: RunLayout) -> set[str]:
    """Names of the shards whose commit marker exists."""
    names = (entry.name for entry in layout.markers_dir.listdir())
    return {n[: -len(".json")] for n in names if n.endswith(".json")}


def sort_for_score_filters(masks: pa.Table) -> pa.Table:
    """Order mask rows by predicted IoU, so each row group spans a narrow score range and a
    score filter skips most row groups (image order is kept within equal scores)."""
    if masks.num_rows == 0:
        return masks
    order = pc.sort_indices(masks, sort_keys=[("predicted_iou", "ascending")])
    return masks.take(order)


def write_parquet(table: pa.Table, file: Location, row_group_size: int, compression: str) -> None:
    """Write one Parquet file so that it appears whole or not at all (``write_atomic``)."""
    file.write_atomic(
        lambda f: pq.write_table(table, f, row_group_size=row_group_size, compression=compression)
    )


def commit_shard(
    layout: RunLayout,
    shard: str,
    masks: pa.Table,
    images: pa.Table,
    stats: dict[str, Any],
    row_group_size: int = 2000,
    compression: str = "zstd",
) -> None:
    """Write a shard's two Parquet files, then its commit marker.

    Args:
        layout: the run's output layout.
        shard: the shard's name (``shard-00000``).
        masks: its mask rows; images: its image rows.
        stats: counts stored in the marker (images, ok, errors, masks, seconds …).
        row_group_size: rows per row group in the mask file.
        compression: Parquet codec.
    """
    write_parquet(images, layout.images_file(shard), 10_000, compression)
    write_parquet(
        sort_for_score_filters(masks), layout.masks_file(shard), row_group_size, compression
    )
    layout.marker(shard).write_json_atomic({**stats, "shard": shard, "committed_at": time.time()})


def read_markers(layout: RunLayout) -> dict[str, dict[str, Any]]:
    """Every committed shard's marker, by shard name."""
    markers = {}
    for name in sorted(committed_shards(layout)):
        marker = layout.marker(name).read_json()
        if marker is not None:
            markers[name] = marker
    return markers


def remove_partials(layout: RunLayout) -> int:
    """Delete files a killed writer left under temporary names; returns how many."""
    removed = 0
    for folder in (layout.masks_dir, layout.images_dir, layout.markers_dir, layout.listing_dir):
        for entry in folder.listdir():
            if entry.name.endswith(".partial"):
                entry.remove()
                removed += 1
    return removed


def remove_run(layout: RunLayout) -> None:
    """Delete a previous run's files (``--overwrite``)."""
    for folder in (layout.markers_dir, layout.masks_dir, layout.images_dir, layout.listing_dir):
        folder.remove(recursive=True)
    layout.manifest.remove()
