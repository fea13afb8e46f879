"""List the input images and plan deterministic shards with stable image ids.

An input is a local folder (searched recursively), a glob, an fsspec URI of a folder or a
single image, or a manifest: a ``.txt``/``.lst`` file with one URI per line, or a
``.parquet``/``.csv`` file with a ``uri`` column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.core.errors import UserError, one_line
from pipeline.core.prompt import Prompt
from pipeline.core.storage import Location, as_uri, with_retries

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST_EXTENSIONS = (".txt", ".lst", ".csv", ".parquet")


class InputError(UserError, ValueError):
    """An input that cannot be listed; the message is one line for the user."""


@dataclass(frozen=True)
class ImageRef:
    """One listed image: its URI and its stable id."""

    image_id: int
    uri: str


@dataclass(frozen=True)
class Shard:
    """A fixed slice of the run's sorted listing, processed and committed as one unit.

    The shard does not carry its images: the actor that labels it reads them from the run's
    listing file ``block`` (``job/listing``), so the driver's plan stays small at any scale.
    """

    index: int
    size: int
    block: str
    # Prompted runs: each image's prompts, in the order of the shard's images.
    prompts: tuple[tuple[Prompt, ...], ...] | None = None

    @property
    def name(self) -> str:
        """File stem of the shard, e.g. ``shard-00007``."""
        return f"shard-{self.index:05d}"


def listing_hash(uris: list[str]) -> str:
    """A hash of a shard's image URIs (recorded in its commit marker)."""
    return hashlib.blake2b(("\n".join(uris) + "\n").encode(), digest_size=12).hexdigest()


@dataclass
class InputListing:
    """The input's image URIs, sorted and without duplicates, held as Arrow data.

    ``uris`` stays as listed; ``order`` indexes it in sorted order, duplicates left out, so
    the sorted listing is never copied whole (``chunks`` yields it a slice at a time).

    Attributes:
        uris: the URIs as listed (any order, duplicates possible).
        order: indices into ``uris``: sorted, each URI once.
        digest: the identity of the sorted listing (same images → same digest).
    """

    uris: pa.ChunkedArray
    order: pa.Array
    digest: str

    def __len__(self) -> int:
        return len(self.order)

    def chunks(self, size: int = 65_536, only: pa.Array | None = None) -> Iterator[pa.Array]:
        """The sorted URIs, ``size`` at a time (with ``only``, a boolean per listed URI, just
        those it marks)."""
        for start in range(0, len(self.order), size):
            indices = self.order.slice(start, size)
            if only is not None:
                indices = indices.filter(only.take(indices))
            yield take(self.uris, indices)

    def refs(self) -> list[ImageRef]:
        """Every image with its id (for small inputs: prompts, tune, tests)."""
        return [
            ImageRef(image_id_for(uri), uri) for chunk in self.chunks() for uri in chunk.to_pylist()
        ]


def image_id_for(uri: str) -> int:
    """A stable positive 63-bit id from the image URI (same URI → same id, on any machine)."""
    return int.from_bytes(hashlib.blake2b(uri.encode(), digest_size=8).digest(), "big") >> 1


def list_images(source: Location) -> list[ImageRef]:
    """List the images of ``source`` sorted by URI, each with its stable id (small inputs;
    the job itself uses ``list_input``, which never makes a Python object per image).

    Raises:
        InputError: the source does not exist, cannot be read, or lists no image.
    """
    return list_input(source).refs()


def list_input(source: Location, exclude: Location | None = None) -> InputListing:
    """List ``source`` (folder, glob, image or manifest; see the module docstring) as Arrow.

    Args:
        source: the input.
        exclude: a folder whose files are never input when ``source`` is a folder or glob
            (the run's own output, when it lies inside the input: what the tool writes there
            is not labelled by the next run); a manifest's URIs are taken as listed.

    Raises:
        InputError: the source does not exist, cannot be read, or lists no image.
    """
    try:
        uris = with_retries(lambda: list_uris(source), what="listing")
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"cannot list input {source}: {one_line(error)}") from error
    if exclude is not None and not source.path.lower().endswith(MANIFEST_EXTENSIONS):
        # a folder or glob: files the run writes are not input (a manifest lists its own)
        uris = outside(uris, as_uri(exclude.fs, exclude.path.rstrip("/")) + "/")
    if len(uris) == 0:
        raise InputError(f"no images found in {source}")
    return sorted_listing(uris)


def outside(uris: pa.ChunkedArray, prefix: str) -> pa.ChunkedArray:
    """The URIs that do not start with ``prefix``, chunk by chunk."""
    chunks = [chunk.filter(pc.invert(pc.starts_with(chunk, prefix))) for chunk in uris.chunks]
    return pa.chunked_array(chunks, pa.string())


def as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (a small slice's chunks joined)."""
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def take(values: pa.ChunkedArray, indices: pa.Array) -> pa.Array:
    """``values.take(indices)`` chunk by chunk: Arrow's own take on a chunked array joins
    every chunk first, a copy of the whole listing per call."""
    if values.num_chunks == 1:
        return values.chunk(0).take(indices)
    starts = np.cumsum([0] + [len(chunk) for chunk in values.chunks])
    wanted = indices.to_numpy().astype(np.int64)
    chunk_of = np.searchsorted(starts, wanted, side="right") - 1
    parts, positions = [], []
    for k in np.unique(chunk_of):
        where = np.flatnonzero(chunk_of == k)
        parts.append(values.chunk(int(k)).take(pa.array(wanted[where] - starts[k])))
        positions.append(where)
    if not parts:
        return pa.array([], values.type)
    joined = pa.concat_arrays(parts)
    return joined.take(pa.array(np.argsort(np.concatenate(positions), kind="stable")))


def sorted_listing(uris: pa.ChunkedArray | pa.Array, chunk: int = 65_536) -> InputListing:
    """Sort ``uris`` and drop repeats, a chunk at a time, hashing the result as it goes."""
    if isinstance(uris, pa.Array):
        uris = pa.chunked_array([uris])
    by_value = pc.sort_indices(uris)
    kept: list[pa.Array] = []
    digest = hashlib.blake2b(digest_size=16)
    previous = None
    for start in range(0, len(by_value), chunk):
        indices = by_value.slice(start, chunk)
        values = take(uris, indices)
        repeat = pc.equal(values.slice(1), values.slice(0, len(values) - 1))
        first = pa.array([previous is not None and values[0].as_py() == previous])
        keep = pc.invert(pa.concat_arrays([first, repeat.fill_null(False)]))
        kept.append(indices.filter(keep))
        fresh = values.filter(keep).to_pylist()
        if fresh:
            digest.update(("\n".join(fresh) + "\n").encode())
        previous = values[-1].as_py()
    order = pa.concat_arrays(kept) if kept else pa.array([], pa.uint64())
    return InputListing(uris=uris, order=order, digest=digest.hexdigest())


def list_uris(source: Location) -> pa.ChunkedArray:
    """The image URIs of ``source`` as Arrow strings (in chunks, never copied whole),
    unsorted, maybe with repeats."""
    fs, path = source.fs, source.path
    if any(ch in path for ch in "*?["):
        paths = [p for p in fs.glob(path) if is_image(p) and fs.isfile(p)]
        return pa.chunked_array([pa.array([as_uri(fs, p) for p in paths], pa.string())])
    if not fs.exists(path):
        raise InputError(f"input not found: {source}")
    if fs.isdir(path):
        return walk_images(source)
    if path.lower().endswith(MANIFEST_EXTENSIONS):
        return read_manifest(source)
    if is_image(path):
        return pa.chunked_array([pa.array([as_uri(fs, path)], pa.string())])
    raise InputError(f"input {source} is neither a folder, an image nor a manifest")


def walk_images(source: Location) -> pa.ChunkedArray:
    """Every image under a folder, one directory's names in Python at a time."""
    fs = source.fs
    chunks = []
    for root, _, files in fs.walk(source.path):
        names = [as_uri(fs, f"{root.rstrip('/')}/{name}") for name in files if is_image(name)]
        if names:
            chunks.append(pa.array(names, pa.string()))
    return pa.chunked_array(chunks, pa.string())


def is_image(path: str) -> bool:
    """True for file names with an image extension."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


def read_manifest(source: Location) -> pa.ChunkedArray:
    """The URIs listed in a manifest file (text, CSV or Parquet with a ``uri`` column), read
    by Arrow's streaming readers batch by batch, each batch cleaned as it comes."""
    lower = source.path.lower()
    try:
        with source.open("rb") as f:
            if lower.endswith(".parquet"):
                batches = parquet_uri_batches(f, source)
            else:
                batches = text_uri_batches(f, csv=lower.endswith(".csv"), source=source)
            return pa.chunked_array([usable_uris(batch) for batch in batches], pa.string())
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"cannot read manifest {source}: {one_line(error)}") from error


def usable_uris(chunk: pa.Array) -> pa.Array:
    """A manifest chunk's URIs: whitespace trimmed, empty lines and ``#`` comments dropped."""
    chunk = pc.utf8_trim_whitespace(chunk.cast(pa.string()))
    usable = pc.and_(pc.invert(pc.equal(chunk, "")), pc.invert(pc.starts_with(chunk, "#")))
    return chunk.filter(usable.fill_null(False))


def parquet_uri_batches(f, source: Location) -> Iterator[pa.Array]:
    """The ``uri`` column of a Parquet manifest, a batch at a time."""
    file = pq.ParquetFile(f)
    if "uri" not in file.schema_arrow.names:
        raise InputError(f"manifest {source} has no 'uri' column")
    for batch in file.iter_batches(columns=["uri"], batch_size=1 << 18):
        yield batch.column("uri")


def text_uri_batches(f, csv: bool, source: Location) -> Iterator[pa.Array]:
    """The ``uri`` column of a CSV manifest, or every line of a text one, a block at a time."""
    names = None if csv else ["uri"]
    read = pacsv.ReadOptions(column_names=names, block_size=1 << 24)
    convert = pacsv.ConvertOptions(column_types={"uri": pa.string()})
    # A text manifest is one field per line: no delimiter, no quoting.
    parse = pacsv.ParseOptions(delimiter="," if csv else "\x1f", quote_char='"' if csv else False)
    reader = pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
    if "uri" not in reader.schema.names:
        raise InputError(f"manifest {source} has no 'uri' column")
    for batch in reader:
        yield batch.column("uri")
