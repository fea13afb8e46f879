"""The output layout and the shard commit, on a local disk or an object store.

```
OUT/
  masks/shard-00000.parquet    mask rows  (pyarrow.dataset / DuckDB / Ray Data read this folder)
  images/shard-00000.parquet   image rows
  _shards/shard-00000.json     commit marker with the shard's counts, written last
  _listing/<plan>/block-….parquet  the planned listing (which images each shard holds)
  _run.json                    run manifest: config, model, versions, counts
  _lease.json                  the lease of the command writing the output (core/lease)
```
Readers skip names starting with ``_`` or ``.``. A shard counts as done only when its marker
exists; a rerun redoes (and overwrites) any shard without one.

Nothing here deletes a file it did not write: ``remove_run`` removes the run's own files one by
one (the names its manifest and markers give), never a folder with what else is in it.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.storage import PARTIAL_PREFIX, PARTIAL_SUFFIX, Location

MANIFEST_NAME = "_run.json"
SHARD_FILE = re.compile(r"^shard-\d{5,}\.(parquet|json)$")
PARTIAL_FILE = re.compile(
    "^" + re.escape(PARTIAL_PREFIX) + r"[0-9a-f]{32}\..+" + re.escape(PARTIAL_SUFFIX) + "$"
)
BLOCK_FILE = re.compile(r"^(block|prompts)-\d{5,}\.parquet$")  # listing and prompt files


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
    """Delete files a killed writer left under temporary names in the shard folders and the
    output's root (not the lease's: its heartbeat may be writing one now); returns how many."""
    removed = 0
    for folder in (layout.masks_dir, layout.images_dir, layout.markers_dir, layout.root):
        for entry in folder.listdir():
            if PARTIAL_FILE.match(entry.name) and not entry.name.endswith("_lease.json.partial"):
                entry.remove()
                removed += 1
    return removed


def foreign_files(layout: RunLayout) -> list[str]:
    """Entries of ``masks/``, ``images/`` and ``_shards/`` this tool did not write (dot files
    aside): a run must not be written among them, nor readers read them as shards."""
    found = []
    for folder in (layout.masks_dir, layout.images_dir, layout.markers_dir):
        for entry in folder.listdir():
            name = entry.name
            ours = SHARD_FILE.match(name) or PARTIAL_FILE.match(name)
            if not name.startswith(".") and not ours:
                found.append(str(entry))
    return found


def run_files(layout: RunLayout, manifest: dict[str, Any] | None) -> list[Location]:
    """Every file of the run at ``layout`` that exists: its shards' files (the planned ones
    and any with a marker), markers, listing blocks and manifest, left-over partial files.
    Nothing else: a file of the user's that sits among them is not listed."""
    listing = (manifest or {}).get("listing") or {}
    names = {
        entry.name[: -len(".json")]
        for entry in layout.markers_dir.listdir()
        if SHARD_FILE.match(entry.name)
    }
    names |= {f"shard-{index:05d}" for index in range(int(listing.get("shards", 0)))}
    files = []
    # Markers first: a removal cut short leaves no shard committed whose files are gone.
    for folder in (layout.markers_dir, layout.masks_dir, layout.images_dir):
        for entry in folder.listdir():
            stem = entry.name.rsplit(".", 1)[0]
            if (SHARD_FILE.match(entry.name) and stem in names) or PARTIAL_FILE.match(entry.name):
                files.append(entry)
    files += listing_files(layout, listing)
    files += [entry for entry in layout.root.listdir() if PARTIAL_FILE.match(entry.name)]
    if layout.manifest.exists():
        files.append(layout.manifest)
    return files


def listing_files(layout: RunLayout, listing: dict[str, Any]) -> list[Location]:
    """The listing blocks and prompt files of a run (in its plan's folder, or directly in
    ``_listing/`` for runs planned before plan folders)."""
    folder = layout.listing_dir.join(listing["folder"]) if listing.get("folder") else None
    found = []
    for entry in (folder or layout.listing_dir).listdir():
        if BLOCK_FILE.match(entry.name) or PARTIAL_FILE.match(entry.name):
            found.append(entry)
    return found


def remove_run(layout: RunLayout, manifest: dict[str, Any] | None = None) -> int:
    """Delete a previous run's files (``--overwrite``), file by file, and the folders they
    leave empty; a file the run did not write stays, with its folder. Returns how many
    files were removed.

    Args:
        layout: the run's layout.
        manifest: its manifest (default: read from the layout): says which files are its.
    """
    if manifest is None:
        manifest = layout.manifest.read_json()
    files = run_files(layout, manifest)
    for entry in files:  # markers, data, listing, manifest: in this order
        entry.remove()
    listing = (manifest or {}).get("listing") or {}
    folders = [layout.masks_dir, layout.images_dir, layout.markers_dir]
    if listing.get("folder"):
        folders.append(layout.listing_dir.join(listing["folder"]))
    folders.append(layout.listing_dir)
    for folder in folders:
        remove_empty_folder(folder)
    return len(files)


def remove_empty_folder(folder: Location) -> None:
    """Remove a local folder when nothing is left in it (object stores have no folders)."""
    if folder.is_local and folder.exists() and not folder.listdir():
        os.rmdir(folder.path)
