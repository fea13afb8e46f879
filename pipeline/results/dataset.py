"""The public API for finished runs: open one as pyarrow datasets, iterate masks, decode them.

```python
from pipeline.dataset import open_run, decode_mask

run = open_run("out/")                      # local path or s3://… URI
good = run.masks.to_table(filter=run.field("predicted_iou") >= 0.9)
for row in run.image_masks(image_id):        # one image's masks, as dicts
    mask = decode_mask(row)                  # (h, w) uint8
```
Only committed shards (those with a marker) are part of a run, so a run still being written
reads consistently.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.core import rle
from pipeline.core.errors import UserError, one_line
from pipeline.core.guard import check_apart
from pipeline.core.lease import read_lease
from pipeline.core.schema import IMAGE_SCHEMA, MASK_SCHEMA
from pipeline.core.storage import Location
from pipeline.core.writer import RunLayout, read_markers


class RunNotFoundError(UserError, ValueError):
    """The path holds no autolabel run."""


@dataclass
class Run:
    """A finished (or running) autolabel output.

    Attributes:
        location: where it lives.
        manifest: the ``_run.json`` contents.
        shards: names of the committed shards, sorted.
        masks: a pyarrow dataset of mask rows over the committed shards.
        images: a pyarrow dataset of image rows over the committed shards.
    """

    location: Location
    manifest: dict[str, Any]
    shards: list[str]
    masks: ds.Dataset
    images: ds.Dataset

    @property
    def planned_shards(self) -> int:
        """Shards the run was planned with (the committed ones for runs that do not say)."""
        planned = (self.manifest.get("planned") or {}).get("shards")
        return int(planned) if planned is not None else len(self.shards)

    @cached_property
    def state(self) -> str:
        """``complete``, ``failed`` (it ended with failed shards or too many error rows),
        ``running`` (its writer holds the lease) or ``interrupted`` (its writer died, or it
        ended before every planned shard was committed)."""
        status = self.manifest.get("status")
        if status == "running":
            holder = read_lease(self.location)
            return "running" if holder is not None and holder.is_live() else "interrupted"
        if status == "failed":
            return "failed"
        return "complete" if len(self.shards) >= self.planned_shards else "interrupted"

    @property
    def is_whole(self) -> bool:
        """Every planned shard is committed and no writer is at work."""
        return self.state in ("complete", "failed") and len(self.shards) >= self.planned_shards

    def state_note(self) -> str | None:
        """``interrupted: 3 of 6 shards committed`` (plus the reason of a failed run), or None
        for a complete run."""
        if self.state == "complete":
            return None
        note = f"{self.state}: {len(self.shards)} of {self.planned_shards} shards committed"
        reason = self.manifest.get("reason")
        return f"{note} ({reason})" if self.state == "failed" and reason else note

    @property
    def root(self) -> str:
        """The run's URI (credentials redacted)."""
        return str(self.location)

    @staticmethod
    def field(name: str) -> ds.Expression:
        """``pyarrow.dataset.field``, for filter expressions."""
        return ds.field(name)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.location)

    def shard_masks(self, shard: str, columns: list[str] | None = None, filter=None) -> pa.Table:
        """One shard's mask rows (optionally only some columns, and filtered)."""
        return shard_masks(self.location, shard, columns, filter)

    def shard_images(self, shard: str) -> pa.Table:
        """One shard's image rows."""
        return shard_images(self.location, shard)

    def image_masks(self, image_id: int) -> Iterator[dict[str, Any]]:
        """The mask rows of one image as dicts, in generator order (``mask_index``)."""
        table = self.masks.to_table(filter=ds.field("image_id") == image_id)
        rows = table.to_pylist()
        rows.sort(key=lambda row: row["mask_index"])
        yield from rows


def shard_dataset(file: Location, schema: pa.Schema) -> ds.Dataset:
    """A dataset over one shard file."""
    return ds.dataset(file.path, schema=schema, format="parquet", filesystem=file.fs)


def shard_masks(
    location: Location, shard: str, columns: Any = None, filter: ds.Expression | None = None
) -> pa.Table:
    """One committed shard's mask rows, read without opening the whole run (what a task on
    a cluster does).

    Args:
        location: the run.
        shard: the shard's name.
        columns: the columns (or a projection) to read; None: all.
        filter: rows to keep, pushed down to Parquet.
    """
    file = RunLayout(location).masks_file(shard)
    return shard_dataset(file, MASK_SCHEMA).to_table(columns=columns, filter=filter)


def shard_images(location: Location, shard: str) -> pa.Table:
    """One committed shard's image rows."""
    return shard_dataset(RunLayout(location).images_file(shard), IMAGE_SCHEMA).to_table()


def open_run(root: str | Location, storage_options: dict[str, Any] | None = None) -> Run:
    """Open a run's output as pyarrow datasets over its committed shards.

    Args:
        root: the run's ``--output`` (local path or fsspec URI), or its ``Location``.
        storage_options: fsspec options for a URI ``root`` (endpoint, credentials …).

    Raises:
        RunNotFoundError: no ``_run.json`` under ``root``, or it cannot be read.
    """
    location = root if isinstance(root, Location) else Location(root, storage_options)
    layout = RunLayout(location)
    try:
        manifest = layout.manifest.read_json()
    except Exception as error:  # credentials, endpoint, permissions: one line for the user
        raise RunNotFoundError(f"cannot read the run at {location}: {one_line(error)}") from error
    if manifest is None:
        raise RunNotFoundError(f"no autolabel run at {location} (no {layout.manifest})")
    shards = sorted(read_markers(layout))
    mask_paths = [layout.masks_file(s).path for s in shards]
    image_paths = [layout.images_file(s).path for s in shards]
    fs = location.fs
    return Run(
        location=location,
        manifest=manifest,
        shards=shards,
        masks=ds.dataset(mask_paths, schema=MASK_SCHEMA, format="parquet", filesystem=fs),
        images=ds.dataset(image_paths, schema=IMAGE_SCHEMA, format="parquet", filesystem=fs),
    )


class UnfinishedRunError(UserError, ValueError):
    """A command that needs a finished run was given one with shards still to commit."""


def open_source_run(
    source: Location, output: Location, flag: str, verb: str, partial: bool = False
) -> Run:
    """Open the run a command reads, after refusing an ``output`` that is the run, above it or
    inside it; an unfinished run (fewer committed shards than planned) is refused too unless
    ``partial``.

    Args:
        source: the run.
        output: where the command writes (``flag`` names it in messages: ``OUT``, ``--out``).
        flag: the output's name on the command line.
        verb: what the command does (``export``), for the message.
        partial: accept an unfinished run as it stands.
    """
    check_apart(output, {"run": source}, inside_ok=False, flag=flag)
    run = open_run(source)
    if not partial and not run.is_whole:
        raise UnfinishedRunError(
            f"{source} is {run.state_note()}; {verb} it once it is finished, or pass "
            f"--partial to {verb} the committed shards"
        )
    return run


def masks_by_image(table: pa.Table) -> dict[int, list[dict[str, Any]]]:
    """Mask rows (of one shard, say) grouped by image, the images in the order they first
    appear in ``table``, each image's rows in ``mask_index`` order."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        grouped.setdefault(row["image_id"], []).append(row)
    for rows in grouped.values():
        rows.sort(key=lambda row: row["mask_index"])
    return grouped


def decode_mask(row: dict[str, Any]) -> np.ndarray:
    """A mask row (or its ``segmentation``) → binary (h, w) uint8 array."""
    return rle.decode(row.get("segmentation", row))
