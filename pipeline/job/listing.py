"""The run's listing: which images each shard holds, written once into the output as Parquet.

``_listing/<plan>/block-NNNNN.parquet`` files hold the sorted URIs (columns ``shard``, ``uri``; one
row group per shard; ``SHARDS_PER_BLOCK`` shards a file). The driver writes them while it plans,
a slice at a time, and keeps only a few numbers per shard; the actor that labels a shard reads
its URIs from its block. The manifest's ``listing`` section says what the files hold:

- ``folder``: the plan's folder under ``_listing/`` (a fresh one per plan, so a run planned
  with ``--overwrite`` never writes over the listing of the run it replaces);
- ``input_digest``: the identity of the input as last listed (a rerun with the same input
  resumes; another input is refused, or appended with ``--append``);
- ``batches``: the first plan and each append (when, first shard, shards, images, the input's
  digest and size then); shards of a batch are full but for its last;
- ``removed``: images of the run that the input no longer lists (reported, never deleted).

A prompted run also has ``prompts-NNNNN.parquet`` beside each block: one row per prompt (its
shard, its image's position in the shard, its rank, the prompt), a row group per shard, written
by ``prompt_plan`` and read by the actor that labels the shard. An append merges the new
sorted listing with the run's sorted listing files (``merge_with_run``) instead of holding
the run's URIs.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.core.prompt import Prompt
from pipeline.core.storage import Location
from pipeline.core.writer import RunLayout
from pipeline.job.manifest import RunConflictError
from pipeline.job.sources import InputListing, Shard

SHARDS_PER_BLOCK = 64
LISTING_SCHEMA = pa.schema([("shard", pa.int32()), ("uri", pa.string())])
# A prompted run's prompts, one row per prompt, in a file beside each listing block: the
# shard, the position of its image in the shard's listing, its rank among that image's
# prompts, and the prompt (``Prompt.record``).
PROMPT_SCHEMA = pa.schema(
    [
        ("shard", pa.int32()),
        ("position", pa.int32()),
        ("rank", pa.int32()),
        ("box", pa.list_(pa.float64())),
        ("points", pa.list_(pa.list_(pa.float64()))),
        ("point_labels", pa.list_(pa.int32())),
        ("normalized", pa.bool_()),
        ("category_id", pa.int64()),
        ("category_name", pa.string()),
        ("source_id", pa.string()),
        ("score", pa.float64()),
    ]
)


def block_name(first_shard: int, folder: str = "") -> str:
    """The listing file that starts with shard ``first_shard``, relative to ``_listing/``
    (``folder``: the plan's folder; empty for runs planned before plan folders)."""
    name = f"block-{first_shard:05d}.parquet"
    return f"{folder}/{name}" if folder else name


def new_folder(layout: RunLayout) -> str:
    """The first plan folder name (``plan-000``, ``plan-001`` …) not in ``_listing/`` yet: a
    run's first plan gets ``plan-000`` on any machine; a plan replacing a run gets another."""
    taken = {entry.name for entry in layout.listing_dir.listdir()}
    number = 0
    while f"plan-{number:03d}" in taken:
        number += 1
    return f"plan-{number:03d}"


def write_batch(
    layout: RunLayout,
    listing: InputListing,
    first_shard: int,
    shard_size: int,
    only: pa.Array | None = None,
    folder: str = "",
    dry_run: bool = False,
) -> dict[str, Any]:
    """Write the sorted URIs of ``listing`` (with ``only``, a boolean per listed URI, those it
    marks) as shards ``first_shard`` onwards, into block files; returns the batch's
    description for the manifest (``dry_run``: the same description, nothing written)."""
    rows_per_block = SHARDS_PER_BLOCK * shard_size
    pending: list[pa.Array] = []
    state = {"images": 0, "next_shard": first_shard}

    def write_block(uris: pa.Array) -> None:
        if not dry_run:
            shards = state["next_shard"] + np.arange(len(uris), dtype=np.int32) // shard_size
            table = pa.table({"shard": shards, "uri": uris}, LISTING_SCHEMA)
            target = layout.listing_file(block_name(state["next_shard"], folder))
            write_parquet(target, LISTING_SCHEMA, [table], row_group_size=shard_size)
        state["images"] += len(uris)
        state["next_shard"] += -(-len(uris) // shard_size)

    for chunk in listing.chunks(only=only):
        pending.append(chunk)
        while sum(len(a) for a in pending) >= rows_per_block:
            joined = pa.concat_arrays(pending)
            write_block(joined.slice(0, rows_per_block))
            pending = [joined.slice(rows_per_block)]
    rest = pa.concat_arrays(pending) if pending else pa.array([], pa.string())
    if len(rest):
        write_block(rest)
    return {
        "at": time.time(),
        "first_shard": first_shard,
        "shards": state["next_shard"] - first_shard,
        "images": state["images"],
        "input_digest": listing.digest,
        "input_images": len(listing),
    }


def write_parquet(
    target: Location,
    schema: pa.Schema,
    tables: Iterable[pa.Table],
    row_group_size: int | None = None,
) -> None:
    """``tables`` (each its own row groups, of ``row_group_size`` rows at most; taken one at
    a time) as one zstd Parquet file at ``target``, whole or not at all."""
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, schema, compression="zstd") as writer:
        for table in tables:
            writer.write_table(table, row_group_size=row_group_size)
    data = buffer.getvalue()
    target.write_atomic(lambda f: f.write(data))


def batch_shards(batch: dict[str, Any], shard_size: int, folder: str = "") -> list[Shard]:
    """The shards of one batch (no images: those are in the listing files)."""
    first = batch["first_shard"]
    return [
        Shard(
            index=first + k,
            size=min(shard_size, batch["images"] - k * shard_size),
            block=block_name(first + (k // SHARDS_PER_BLOCK) * SHARDS_PER_BLOCK, folder),
        )
        for k in range(batch["shards"])
    ]


def listing_shards(info: dict[str, Any], shard_size: int) -> list[Shard]:
    """Every shard of a run's listing, in order."""
    folder = info.get("folder", "")
    return [shard for batch in info["batches"] for shard in batch_shards(batch, shard_size, folder)]


def read_shard_uris(layout: RunLayout, shard: Shard) -> list[str]:
    """The URIs of one shard, from its block (only its row group is read)."""
    file = layout.listing_file(shard.block)
    dataset = ds.dataset(file.path, schema=LISTING_SCHEMA, format="parquet", filesystem=file.fs)
    table = dataset.to_table(columns=["uri"], filter=ds.field("shard") == shard.index)
    return table.column("uri").to_pylist()


def prompts_name(block: str) -> str:
    """The prompt file beside a listing block (``plan-000/block-00064.parquet`` →
    ``plan-000/prompts-00064.parquet``)."""
    folder, _, name = block.rpartition("/")
    name = name.replace("block-", "prompts-", 1)
    return f"{folder}/{name}" if folder else name


PROMPTS_FORMAT = "autolabel-prompts-1"  # the layout of a prompt file, with the prompts' hash


def prompts_stamp(file: Location) -> bytes | None:
    """The format and prompts' hash a prompt file was written with."""
    with file.fs.open(file.path, "rb") as handle:
        return (pq.read_schema(handle).metadata or {}).get(b"autolabel")


def read_shard_prompts(layout: RunLayout, shard: Shard, images: int) -> tuple[tuple, ...]:
    """One shard's prompts from its block's prompt file: a tuple of ``Prompt`` s per image,
    in the order of the shard's images (``images`` of them; an image without prompts has
    none)."""
    file = layout.listing_file(prompts_name(shard.block))
    dataset = ds.dataset(file.path, schema=PROMPT_SCHEMA, format="parquet", filesystem=file.fs)
    table = dataset.to_table(filter=ds.field("shard") == shard.index)
    own: list[list[Prompt]] = [[] for _ in range(images)]
    for row in sorted(table.to_pylist(), key=lambda r: (r["position"], r["rank"])):
        if row["position"] >= images:
            raise ValueError(
                f"{file} does not match the listing: {shard.name} has {images} images, "
                f"and a prompt for image {row['position']}"
            )
        own[row["position"]].append(Prompt.from_record(row))
    return tuple(tuple(prompts) for prompts in own)


def batch_blocks(batch: dict[str, Any], folder: str = "") -> list[str]:
    """The listing files of one batch."""
    first, count = batch["first_shard"], batch["shards"]
    return [block_name(first + k, folder) for k in range(0, count, SHARDS_PER_BLOCK)]


def new_listing(
    layout: RunLayout, listing: InputListing, shard_size: int, dry_run: bool = False
) -> dict[str, Any]:
    """A fresh run's listing: every image, written as shards 0 onwards into a new folder
    (``dry_run``: described, not written)."""
    folder = new_folder(layout)
    batch = write_batch(layout, listing, 0, shard_size, folder=folder, dry_run=dry_run)
    return {
        "folder": folder,
        "input_digest": listing.digest,
        "images": batch["images"],
        "shards": batch["shards"],
        "shards_per_block": SHARDS_PER_BLOCK,
        "batches": [batch],
        "removed": {"count": 0, "examples": []},
    }


def continued_listing(
    layout: RunLayout,
    stored: dict[str, Any],
    listing: InputListing,
    shard_size: int,
    append: bool,
    dry_run: bool = False,
) -> dict[str, Any]:
    """The listing of a rerun over the same output.

    The same input resumes the run as it stands. Another input is refused unless ``append``:
    then images no shard holds become new shards after the last, and images the input no
    longer lists are reported in ``removed`` (their rows stay). ``dry_run``: the new shards
    are described, not written.

    Raises:
        RunConflictError: the input changed and ``append`` is off (the message names it).
    """
    if stored["input_digest"] == listing.digest:
        return stored
    held, removed = merge_with_run(layout, stored, listing)
    added = int(len(held) - held.sum())
    # A boolean per listed URI (repeats too): not in the run yet (only the sorted positions,
    # the ones ``write_batch`` looks at, are filled in).
    new = np.ones(len(listing.uris), bool)
    new[listing.order.to_numpy()[held]] = False
    new = pa.array(new)
    if not append:
        raise RunConflictError(change_message(added, removed["count"]))
    info = {**stored, "input_digest": listing.digest, "removed": removed}
    if added:
        folder = stored.get("folder", "")
        batch = write_batch(
            layout, listing, stored["shards"], shard_size, new, folder, dry_run=dry_run
        )
        info["batches"] = [*stored["batches"], batch]
        info["images"] = stored["images"] + batch["images"]
        info["shards"] = stored["shards"] + batch["shards"]
    return info


def merge_with_run(
    layout: RunLayout, stored: dict[str, Any], listing: InputListing, chunk: int = 65_536
) -> tuple[np.ndarray, dict[str, Any]]:
    """Which listed images the run holds already, and which of its images the input no
    longer lists, by a streaming merge: the listing and each batch of the run's listing files
    are sorted, so they are walked together once, ``chunk`` URIs of either side at a time
    (memory: a flag per listed image, not the run's URIs).

    Returns:
        A flag per URI of the sorted listing (True: a shard of the run holds it), and the
        run's images no longer listed (``count`` and a few ``examples``).
    """
    held = np.zeros(len(listing), bool)
    removed: dict[str, Any] = {"count": 0, "examples": []}

    def gone(uris: pa.Array) -> None:
        removed["count"] += len(uris)
        removed["examples"] += uris[: max(0, 5 - len(removed["examples"]))].to_pylist()

    folder = stored.get("folder", "")
    streams = [SortedStream(batch_files(layout, batch, folder)) for batch in stored["batches"]]
    position = 0
    for part in listing.chunks(chunk):
        top = part[len(part) - 1]
        for stream in streams:  # the batches are disjoint: their flags add up
            while len(piece := stream.next_through(top, chunk)):
                held[position : position + len(part)] |= as_numpy(pc.is_in(part, value_set=piece))
                gone(piece.filter(pc.invert(pc.is_in(piece, value_set=part))))
        position += len(part)
    for stream in streams:  # the run's URIs after the listing's last
        for rest in stream.rest():
            gone(rest)
    return held, removed


def as_numpy(flags: pa.Array) -> np.ndarray:
    return flags.to_numpy(zero_copy_only=False).astype(bool)


def batch_files(layout: RunLayout, batch: dict[str, Any], folder: str) -> Iterator[pa.Array]:
    """The URIs of one batch's listing files, in order (sorted), a row group at a time."""
    for name in batch_blocks(batch, folder):
        file = layout.listing_file(name)
        with file.fs.open(file.path, "rb") as handle:
            for group in pq.ParquetFile(handle).iter_batches(columns=["uri"]):
                yield group.column(0)


class SortedStream:
    """A sorted stream of URI arrays, taken a bounded piece at a time."""

    def __init__(self, arrays: Iterator[pa.Array]) -> None:
        self.arrays = arrays
        self.pending = pa.array([], pa.string())

    def next_through(self, top: pa.Scalar, limit: int) -> pa.Array:
        """Up to ``limit`` of the stream's next URIs, those that sort at or before ``top``
        (empty: none is left)."""
        parts, size = [], 0
        while size < limit:
            if len(self.pending) == 0:
                following = next(self.arrays, None)
                if following is None:
                    break
                self.pending = following
                continue
            count = pc.sum(pc.less_equal(self.pending, top)).as_py() or 0
            count = min(count, limit - size)
            parts.append(self.pending.slice(0, count))
            size += count
            self.pending = self.pending.slice(count)
            if len(self.pending):  # what is left sorts after top, or the piece is full
                break
        return pa.concat_arrays(parts) if parts else pa.array([], pa.string())

    def rest(self) -> Iterator[pa.Array]:
        """What is left of the stream."""
        if len(self.pending):
            yield self.pending
        yield from self.arrays


def change_message(added: int, removed: int) -> str:
    """Why a changed input is refused without ``--append``, and what to do."""
    parts = []
    if added:
        parts.append(f"{added} new image(s)")
    if removed:
        parts.append(f"{removed} image(s) of the run no longer listed")
    return (
        f"the input changed since this run was planned ({', '.join(parts)}); use --append to "
        "label the new images into new shards (nothing committed is touched), another "
        "--output, or --overwrite"
    )
