"""List the input images and plan deterministic shards with stable image ids.

An input is a local folder (searched recursively), a glob, an fsspec URI of a folder or a
single image, or a manifest: a ``.txt``/``.lst`` file with one URI per line, or a
``.parquet``/``.csv`` file with a ``uri`` column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.core.errors import one_line
from pipeline.core.prompt import Prompt
from pipeline.core.storage import Location, as_uri, with_retries

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST_EXTENSIONS = (".txt", ".lst", ".csv", ".parquet")


class InputError(ValueError):
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

    uris: pa.Array
    order: pa.Array
    digest: str

    def __len__(self) -> int:
        return len(self.order)

    def chunks(self, size: int = 65_536) -> Iterator[pa.Array]:
        """The sorted URIs, ``size`` at a time."""
        for start in range(0, len(self.order), size):
            yield self.uris.take(self.order.slice(start, size))

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


def list_input(source: Location) -> InputListing:
    """List ``source`` (folder, glob, image or manifest; see the module docstring) as Arrow.

    Raises:
        InputError: the source does not exist, cannot be read, or lists no image.
    """
    try:
        uris = with_retries(lambda: list_uris(source), what="listing")
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"cannot list input {source}: {one_line(error)}") from error
    if len(uris) == 0:
        raise InputError(f"no images found in {source}")
    return sorted_listing(uris)


def sorted_listing(uris: pa.Array, chunk: int = 65_536) -> InputListing:
    """Sort ``uris`` and drop repeats, a chunk at a time, hashing the result as it goes."""
    by_value = pc.sort_indices(uris)
    kept: list[pa.Array] = []
    digest = hashlib.blake2b(digest_size=16)
    previous = None
    for start in range(0, len(by_value), chunk):
        indices = by_value.slice(start, chunk)
        values = uris.take(indices)
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


def list_uris(source: Location) -> pa.Array:
    """The image URIs of ``source`` as an Arrow string array, unsorted, maybe with repeats."""
    fs, path = source.fs, source.path
    if any(ch in path for ch in "*?["):
        paths = [p for p in fs.glob(path) if is_image(p) and fs.isfile(p)]
        return pa.array([as_uri(fs, p) for p in paths], pa.string())
    if not fs.exists(path):
        raise InputError(f"input not found: {source}")
    if fs.isdir(path):
        return walk_images(source)
    if path.lower().endswith(MANIFEST_EXTENSIONS):
        return read_manifest(source)
    if is_image(path):
        return pa.array([as_uri(fs, path)], pa.string())
    raise InputError(f"input {source} is neither a folder, an image nor a manifest")


def walk_images(source: Location) -> pa.Array:
    """Every image under a folder, one directory's names in Python at a time."""
    fs = source.fs
    chunks = []
    for root, _, files in fs.walk(source.path):
        names = [as_uri(fs, f"{root.rstrip('/')}/{name}") for name in files if is_image(name)]
        if names:
            chunks.append(pa.array(names, pa.string()))
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())


def is_image(path: str) -> bool:
    """True for file names with an image extension."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


def read_manifest(source: Location) -> pa.Array:
    """The URIs listed in a manifest file (text, CSV or Parquet with a ``uri`` column), read
    by Arrow's streaming readers straight into an Arrow array."""
    lower = source.path.lower()
    try:
        with source.open("rb") as f:
            if lower.endswith(".parquet"):
                if "uri" not in pq.ParquetFile(f).schema_arrow.names:
                    raise InputError(f"manifest {source} has no 'uri' column")
                column = pq.read_table(f, columns=["uri"]).column("uri")
            else:
                column = read_text_manifest(f, csv=lower.endswith(".csv"), source=source)
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"cannot read manifest {source}: {one_line(error)}") from error
    column = pc.utf8_trim_whitespace(column.cast(pa.string()))
    usable = pc.and_(pc.invert(pc.equal(column, "")), pc.invert(pc.starts_with(column, "#")))
    return column.filter(usable.fill_null(False)).combine_chunks()


def read_text_manifest(f, csv: bool, source: Location) -> pa.ChunkedArray:
    """The ``uri`` column of a CSV manifest, or every line of a text one (``#`` comments)."""
    if csv:
        read = pacsv.ReadOptions(block_size=1 << 24)
        convert = pacsv.ConvertOptions(column_types={"uri": pa.string()})
    else:
        read = pacsv.ReadOptions(column_names=["uri"], block_size=1 << 24)
        convert = pacsv.ConvertOptions(column_types={"uri": pa.string()})
    # A text manifest is one field per line: no delimiter, no quoting.
    parse = pacsv.ParseOptions(delimiter="," if csv else "\x1f", quote_char='"' if csv else False)
    reader = pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
    if "uri" not in reader.schema.names:
        raise InputError(f"manifest {source} has no 'uri' column")
    chunks = [batch.column("uri") for batch in reader]
    return pa.chunked_array(chunks, pa.string())
