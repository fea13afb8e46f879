"""A prompted run's prompts, planned like its listing: streamed, matched to the sorted listing
block by block, and written as one prompt file per listing block, so that the driver never
holds all prompts (a detector's dump can be tens of millions of boxes).

1. ``open_prompts`` opens the file; COCO and YOLO keys are paired with the listed images
   first (a key that fits two images is refused, naming both).
2. The prompts stream in the file's order; each goes to the listing block its image sorts
   into (by the blocks' first URIs) and is spilled, a bounded buffer at a time, into a part
   file of that block in a scratch folder.
3. Block by block, the spilled prompts are looked up among the block's URIs (a table's
   ``image_uri`` that is not listed is counted as unmatched), ordered by image and by their
   order in the file, and written as the block's prompt file (``PROMPT_SCHEMA``: a row group
   per shard); the prompts' hash is computed in listing order as they are written.
4. ``install_prompt_blocks`` copies each block's prompt file into the run beside its listing
   block (a dry run never does; its scratch folder is removed all the same).

Memory: the listing, the COCO/YOLO key pairing, one spill buffer and one block's prompts.
"""

from __future__ import annotations

import bisect
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.errors import one_line
from pipeline.core.prompt import Prompt
from pipeline.core.storage import Location
from pipeline.core.writer import RunLayout
from pipeline.job.listing import (
    PROMPT_SCHEMA,
    PROMPTS_FORMAT,
    SHARDS_PER_BLOCK,
    prompts_name,
    prompts_stamp,
    write_parquet,
)
from pipeline.job.prompts import ADVICE, MATCHERS, PromptsError, PromptsFile, open_prompts
from pipeline.job.sources import InputListing, Shard, Tally

# A spilled prompt: its image's URI, its place in the file, its ``repr`` as read (what the
# prompts' hash is made of, as it was before prompts streamed), and the prompt's columns.
RECORD_SCHEMA = pa.schema([f for f in PROMPT_SCHEMA if f.name not in ("shard", "position", "rank")])
SPILL_SCHEMA = pa.schema(
    [("uri", pa.string()), ("seq", pa.int64()), ("text", pa.string()), *RECORD_SCHEMA]
)
SPILL_ROWS = 65_536  # prompts buffered before they are spilled to the blocks' part files
PIECE_ROWS = 65_536  # a block with more prompts is ordered in pieces of whole shards


@dataclass
class PlannedPrompts:
    """A run's prompts, matched and laid out per listing block in a scratch folder.

    Attributes:
        scratch: the scratch folder (``prompts-NNNNN.parquet`` per block, named after the
            block's first shard); ``close`` removes it.
        info: the manifest's ``prompts`` section: ``source``, ``hash`` (over the sorted
            images and their prompts), ``matched``, ``unmatched`` and ``unmatched_examples``,
            ``unknown_categories``, ``names_file``.
    """

    scratch: Path
    info: dict[str, Any]

    def block_file(self, block: str) -> Path:
        """The scratch prompt file (``prompts-00064.parquet``) of a listing block
        (``plan-000/block-00064.parquet``)."""
        path = self.scratch / prompts_name(block).rpartition("/")[2]
        if not path.exists():
            raise ValueError(f"no planned prompts for {block}: planned over another listing")
        return path

    def close(self) -> None:
        """Remove the scratch folder."""
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> PlannedPrompts:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def plan_prompts(source: Location, listing: InputListing, shard_size: int) -> PlannedPrompts:
    """Read a prompts file as a stream and lay its prompts out per block of the listing.

    Args:
        source: a COCO JSON, a YOLO label folder, or a Parquet/CSV table (``open_prompts``).
        listing: the run's sorted listing (its blocks are ``SHARDS_PER_BLOCK`` shards of
            ``shard_size`` images, as ``listing.write_batch`` cuts them).
        shard_size: images per shard.

    Returns:
        The planned prompts, in a scratch folder the caller removes (``close``, or ``with``).

    Raises:
        PromptsError: the source is missing, unreadable or malformed; a key fits two images;
            a prompt cannot be stored; no prompt fits an image of the input.
    """
    file = open_prompts(source)
    scratch = Path(tempfile.mkdtemp(prefix="autolabel-prompts-"))
    try:
        rows_per_block = SHARDS_PER_BLOCK * shard_size
        unmatched = Tally()
        spill = Spill(scratch / "spill", block_firsts(listing, rows_per_block))
        to_uri = uri_finder(file, listing)
        for key, prompt in file.prompts():
            uri = to_uri(key)
            if uri is None:
                unmatched.add(file.shown(key), keep=5)
            else:
                spill.add(uri, prompt)
        spill.flush()
        writer = BlockWriter(scratch, shard_size, unmatched)
        for block, uris in enumerate(listing.chunks(rows_per_block)):
            parts = spill.parts(block)
            writer.write(block * SHARDS_PER_BLOCK, uris, parts, spill.counts.get(block, 0))
        refuse_unmatched(file, writer.matched, unmatched, listing)
        info = {
            "source": str(source),
            "hash": writer.digest.hexdigest()[:16],
            "matched": writer.matched,
            "unmatched": unmatched.count,
            "unmatched_examples": unmatched.examples,
            "unknown_categories": file.unknown_categories.as_dict(),
            "names_file": file.names_file,
        }
        return PlannedPrompts(scratch, info)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def block_firsts(listing: InputListing, rows_per_block: int) -> list[str]:
    """The first URI of each listing block, in order."""
    return [chunk[0].as_py() for chunk in listing.chunks(rows_per_block)]


def uri_finder(file: PromptsFile, listing: InputListing):
    """A function from a prompt's key to its image's URI (None: no listed image fits it).

    A table's keys are URIs already (whether they are listed is checked block by block).
    COCO and YOLO keys are paired with the listed URIs first; a key with prompts that fits
    two images is refused when its first prompt streams by.
    """
    if file.kind == "table":
        return lambda key: key

    def uris() -> Iterator[str]:
        for chunk in listing.chunks():
            yield from chunk.to_pylist()

    pairing = MATCHERS[file.kind](file, uris)
    image_of = {key: uri for uri, key in pairing.found.items()}
    shared = {key: fits for key, fits in pairing.fits.items() if len(fits) > 1}
    advice = ADVICE[pairing.rule or file.kind]
    del pairing  # only the key → URI map is kept while the prompts stream
    file.keys = None

    def find(key: str) -> str | None:
        if key in shared:
            fits = shared[key]
            raise PromptsError(
                f"{file.shown(key)} fits {len(fits)} images ({fits[0]}, {fits[1]}), so its "
                f"prompts could go to either; {advice}"
            )
        return image_of.get(key)

    return find


class Spill:
    """Prompts spilled to part files by listing block, a bounded buffer at a time."""

    def __init__(self, folder: Path, firsts: list[str]) -> None:
        self.folder = folder
        self.firsts = firsts
        self.buffer: dict[int, list[tuple[str, int, Prompt]]] = {}
        self.counts: dict[int, int] = {}  # prompts spilled per block
        self.buffered = 0
        self.seq = 0  # the next prompt's place in the file (orders an image's prompts)
        self.flushes = 0

    def add(self, uri: str, prompt: Prompt) -> None:
        """Buffer one prompt for the block ``uri`` sorts into (spilled when the buffer is
        full)."""
        block = max(0, bisect.bisect_right(self.firsts, uri) - 1)
        self.buffer.setdefault(block, []).append((uri, self.seq, prompt))
        self.counts[block] = self.counts.get(block, 0) + 1
        self.seq += 1
        self.buffered += 1
        if self.buffered >= SPILL_ROWS:
            self.flush()

    def flush(self) -> None:
        """Write the buffer as one part file per block it holds prompts for."""
        for block, rows in self.buffer.items():
            folder = self.folder / f"block-{block:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(spill_table(rows), folder / f"part-{self.flushes:05d}.parquet")
        self.flushes += 1
        self.buffer, self.buffered = {}, 0

    def parts(self, block: int) -> list[Path]:
        """The part files spilled for ``block`` (none: no prompt sorts into it)."""
        folder = self.folder / f"block-{block:05d}"
        return sorted(folder.iterdir()) if folder.exists() else []


def write_pieces(folder: Path, buffers: dict[int, list[pa.Table]], flush: int) -> None:
    """Spill a block's buffered prompts by piece: one file per piece and flush."""
    for piece, tables in buffers.items():
        own = folder / f"piece-{piece:05d}"
        own.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(tables), own / f"{flush:05d}.parquet")


def spill_table(rows: list[tuple[str, int, Prompt]]) -> pa.Table:
    """Spilled prompts as a table (``SPILL_SCHEMA``), built a column at a time.

    Raises:
        PromptsError: a prompt has a value that cannot be stored (e.g. a category id that is
            not an integer).
    """
    prompts = [prompt for _, _, prompt in rows]
    columns = {
        "uri": [uri for uri, _, _ in rows],
        "seq": [seq for _, seq, _ in rows],
        "text": [repr(p) for p in prompts],
        "box": [list(p.box) if p.box is not None else None for p in prompts],
        "points": [[list(point) for point in p.points] for p in prompts],
        "point_labels": [list(p.point_labels) for p in prompts],
        "normalized": [p.normalized for p in prompts],
        "category_id": [p.category_id for p in prompts],
        "category_name": [p.category_name for p in prompts],
        "source_id": [p.source_id for p in prompts],
        "score": [p.score for p in prompts],
    }
    try:
        return pa.table(
            [pa.array(columns[f.name], f.type) for f in SPILL_SCHEMA], schema=SPILL_SCHEMA
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as error:
        uri, prompt = next(((u, p) for u, _, p in rows if not storable(p)), rows[0][::2])
        raise PromptsError(
            f"a prompt for {uri} cannot be stored ({prompt}): {one_line(error)}"
        ) from error


def storable(prompt: Prompt) -> bool:
    """Whether one prompt's values fit the prompt files' columns."""
    try:
        pa.Table.from_pylist([prompt.record()], schema=RECORD_SCHEMA)
        return True
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return False


@dataclass
class BlockWriter:
    """Writes each block's prompt file (scratch) and hashes the prompts in listing order."""

    scratch: Path
    shard_size: int
    unmatched: Tally
    matched: int = 0
    digest: Any = field(default_factory=hashlib.sha256)

    def write(self, first_shard: int, uris: pa.Array, parts: list[Path], count: int) -> None:
        """One block's prompt file from its URIs and its spilled prompts, in order of image
        and of the file. A block with more than ``PIECE_ROWS`` prompts is first split into
        pieces of whole shards, each ordered alone, so that memory holds one piece.

        Args:
            first_shard: the block's first shard.
            uris: the block's URIs, sorted.
            parts: the block's spilled part files (a table's URIs may not be listed); each is
                removed once read.
            count: how many prompts they hold.
        """
        shards = -(-len(uris) // self.shard_size)
        pieces = min(shards, max(1, -(-count // PIECE_ROWS)))
        per_piece = -(-shards // pieces) * self.shard_size  # images a piece covers
        located = self.located_pieces(uris, parts, per_piece, pieces)
        target = Location(str(self.scratch / f"prompts-{first_shard:05d}.parquet"))
        tables = (
            table
            for piece in range(pieces)
            for table in self.shard_tables(
                first_shard, uris, piece * per_piece, per_piece, located(piece)
            )
        )
        write_parquet(target, PROMPT_SCHEMA, tables)

    def located_pieces(self, uris: pa.Array, parts: list[Path], per_piece: int, pieces: int):
        """Read the block's parts once: count the unlisted prompts, give the others their
        image's place in the block (``at``), and, when there are several pieces, spill them
        again by piece (``PIECE_ROWS`` buffered at most). Returns a function from a piece to
        its prompts (a table with ``at``; None: none)."""
        buffers: dict[int, list[pa.Table]] = {}
        buffered, flushes = 0, 0
        folder = self.scratch / "pieces"
        for path in parts:
            rows = self.located(pq.read_table(path, schema=SPILL_SCHEMA), uris)
            path.unlink()
            piece_of = pc.divide(rows.column("at"), per_piece).to_numpy()
            for piece in np.unique(piece_of).tolist():
                buffers.setdefault(piece, []).append(rows.filter(pa.array(piece_of == piece)))
            buffered += len(rows)
            if pieces > 1 and buffered >= PIECE_ROWS:
                write_pieces(folder, buffers, flushes)
                buffers, buffered, flushes = {}, 0, flushes + 1
        if pieces > 1:
            write_pieces(folder, buffers, flushes)

        def piece_rows(piece: int) -> pa.Table | None:
            if pieces == 1:
                return pa.concat_tables(buffers[0]).combine_chunks() if buffers else None
            own = folder / f"piece-{piece:05d}"
            if not own.exists():
                return None
            tables = [pq.read_table(path) for path in sorted(own.iterdir())]
            shutil.rmtree(own)
            return pa.concat_tables(tables).combine_chunks()

        return piece_rows

    def located(self, spilled: pa.Table, uris: pa.Array) -> pa.Table:
        """Spilled prompts whose image is among the block's ``uris``, with its place there
        (``at``); the others are counted as unmatched."""
        index = pc.index_in(spilled.column("uri"), value_set=uris)
        listed = pc.is_valid(index)
        for uri in spilled.column("uri").filter(pc.invert(listed)).to_pylist():
            self.unmatched.add(uri, keep=5)
        at = pc.cast(index.filter(listed), pa.int64())
        return spilled.filter(listed).append_column("at", at)

    def shard_tables(
        self, first_shard: int, uris: pa.Array, begin: int, size: int, rows: pa.Table | None
    ) -> Iterator[pa.Table]:
        """The prompt-file row groups (one per shard with prompts) of the block's images
        ``begin`` to ``begin + size``, from their prompts ``rows`` (with ``at``; None: none),
        which are hashed with the images on the way."""
        if rows is None:
            rows = SPILL_SCHEMA.empty_table().append_column("at", pa.array([], pa.int64()))
        at = rows.column("at").to_numpy()
        order = np.lexsort((rows.column("seq").to_numpy(), at))
        rows, at = rows.take(pa.array(order, pa.int64())), at[order]
        firsts = np.r_[True, at[1:] != at[:-1]] if len(at) else np.zeros(0, bool)
        start = np.maximum.accumulate(np.where(firsts, np.arange(len(at)), 0))
        table = pa.table(
            {
                "shard": pa.array(first_shard + at // self.shard_size, pa.int32()),
                "position": pa.array(at % self.shard_size, pa.int32()),
                "rank": pa.array(np.arange(len(at)) - start, pa.int32()),
                **{name: rows.column(name) for name in SPILL_SCHEMA.names[3:]},
            },
            schema=PROMPT_SCHEMA,
        )
        for low_image in range(begin, min(begin + size, len(uris)), self.shard_size):
            high_image = min(low_image + self.shard_size, len(uris))
            low, high = np.searchsorted(at, [low_image, high_image]).tolist()
            texts = rows.column("text").slice(low, high - low).to_pylist()
            shard_uris = uris.slice(low_image, high_image - low_image)
            self.hash_images(shard_uris, at[low:high] - low_image, texts)
            if high > low:
                yield table.slice(low, high - low)
        self.matched += len(at)

    def hash_images(self, uris: pa.Array, at: np.ndarray, texts: list[str]) -> None:
        """Add images and their prompts, in listing order, to the hash: each image's URI and
        the ``repr`` of the tuple of its prompts (every listed image counts, with or without
        prompts). ``at``: each prompt's image (an index into ``uris``), sorted; ``texts``: each
        prompt's ``repr``, in the same order."""
        bounds = np.searchsorted(at, np.arange(len(uris) + 1)).tolist()
        for i, uri in enumerate(uris.to_pylist()):
            own = texts[bounds[i] : bounds[i + 1]]
            shown = f"({own[0]},)" if len(own) == 1 else f"({', '.join(own)})"
            self.digest.update(f"{uri}\n{shown}\n".encode())


def refuse_unmatched(
    file: PromptsFile, matched: int, unmatched: Tally, listing: InputListing
) -> None:
    """Refuse prompts none of which fits an image of the input, with examples of both."""
    if matched:
        return
    if not unmatched.count:
        raise PromptsError(f"prompts {file.source} hold no prompt (no box, no points)")
    listed = next(listing.chunks(2)).to_pylist()
    raise PromptsError(
        f"none of the {unmatched.count} prompt(s) in {file.source} is for an image of the "
        f"input: the prompts name {', '.join(unmatched.examples[:2])}; the input lists "
        f"{', '.join(listed)}; {ADVICE[file.kind]}"
    )


def install_prompt_blocks(layout: RunLayout, shards: list[Shard], planned: PlannedPrompts) -> None:
    """Copy each listing block's planned prompt file into the run beside the block, with the
    prompts' hash in its metadata; a file an earlier plan of this run wrote with the same
    prompts (the same hash and format) is kept.

    Args:
        layout: the run's layout.
        shards: the run's shards (their blocks are the ones ``planned`` laid out).
        planned: from ``plan_prompts`` over the same listing and shard size.
    """
    stamp = f"{PROMPTS_FORMAT}:{planned.info['hash']}".encode()
    schema = PROMPT_SCHEMA.with_metadata({"autolabel": stamp})
    for block in sorted({shard.block for shard in shards}):
        target = layout.listing_file(prompts_name(block))
        if target.exists() and prompts_stamp(target) == stamp:
            continue
        planned_file = pq.ParquetFile(planned.block_file(block))
        groups = [
            planned_file.read_row_group(k).cast(schema) for k in range(planned_file.num_row_groups)
        ]
        write_parquet(target, schema, groups)
