"""List the input images and plan deterministic shards with stable image ids.

An input is a local folder (searched recursively), a glob, an fsspec URI of a folder or a
single image, or a manifest: a ``.txt``/``.lst`` file with one URI per line, or a
``.parquet``/``.csv`` file with a ``uri`` column.

The listing rules (each one says what it did not take, in ``InputListing.skipped``):

- a path that exists is that path, whatever its name holds (``photos [2023]``); only a path
  that does not exist is tried as a glob;
- folders are walked whole: linked subfolders are followed, a folder reached a second time
  (a link loop, two links to one place) is listed once (``linked_again``); a folder that
  cannot be read stops the listing with a one-line error naming it;
- hidden files and folders (names starting with ``.``, which includes macOS's ``._x.jpg``
  resource files) are skipped (``hidden``), as are files without an image extension
  (``not_image``); every extension Pillow decodes counts as an image (``.jfif``, ``.jpe``,
  ``.tif`` …);
- a file name that is not valid UTF-8 is listed with its bytes escaped (``caf\\xe9.jpg``)
  and gets an error row naming them (``bad_name``);
- relative paths in a manifest are read from the manifest's folder; every listed URI is an
  absolute path or a full URI.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.core.errors import UserError, one_line
from pipeline.core.storage import Location, as_uri, printable_path, with_retries

# Pillow formats that are not pictures to label: stubs that need a handler, vector and video.
NOT_PICTURES = {"BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG", "FITS"}


def pillow_extensions() -> tuple[str, ...]:
    """Every file extension Pillow can open as a raster picture (``.jpg``, ``.jfif``, ``.tif``
    …), lower case."""
    from PIL import Image

    Image.init()
    return tuple(
        sorted(
            ext.lower()
            for ext, kind in Image.registered_extensions().items()
            if kind in Image.OPEN and kind not in NOT_PICTURES
        )
    )


IMAGE_EXTENSIONS = pillow_extensions()
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
    # Prompted runs: the actor reads the shard's prompts from the prompt file beside its
    # listing block (``job/listing``), as it reads its images.
    prompted: bool = False

    @property
    def name(self) -> str:
        """File stem of the shard, e.g. ``shard-00007``."""
        return f"shard-{self.index:05d}"


@dataclass
class Tally:
    """How many entries of one kind the listing (or a prompts file) passed over, with the
    first few as examples."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str, keep: int = 3) -> None:
        """Count one more, keeping its name when fewer than ``keep`` (other names) are kept."""
        self.count += 1
        if len(self.examples) < keep and example not in self.examples:
            self.examples.append(example)

    def as_dict(self) -> dict:
        """``{"count": …, "examples": […]}`` for a manifest."""
        return {"count": self.count, "examples": list(self.examples)}


# What each kind of entry the listing passed over is called in messages, by its key.
SKIPPED_WORDS = {
    "hidden": "hidden file(s) or folder(s) skipped (names starting with '.')",
    "not_image": "file(s) without an image extension skipped",
    "linked_again": "linked folder(s) skipped as already listed (a link loop, or two links "
    "to one place)",
    "bad_name": "file name(s) not valid UTF-8, listed with an error row each",
}


def skipped_note(skipped: dict[str, Tally]) -> str:
    """One line on what a listing passed over: ``2 hidden … skipped (e.g. .DS_Store); …``."""
    parts = []
    for key, words in SKIPPED_WORDS.items():
        tally = skipped.get(key)
        if tally and tally.count:
            words = words.replace("(s)", "") if tally.count == 1 else words
            parts.append(f"{tally.count} {words} (e.g. {tally.examples[0]})")
    return "; ".join(parts)


def new_skipped() -> dict[str, Tally]:
    """An empty tally per kind of entry a listing passes over."""
    return {key: Tally() for key in SKIPPED_WORDS}


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
        skipped: what the listing passed over (or listed with a note), by kind
            (``SKIPPED_WORDS``).
    """

    uris: pa.ChunkedArray
    order: pa.Array
    digest: str
    skipped: dict[str, Tally] = field(default_factory=new_skipped)

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

    def attempt() -> tuple[pa.ChunkedArray, dict[str, Tally]]:
        skipped = new_skipped()  # a fresh count per try
        return list_uris(source, skipped), skipped

    try:
        uris, skipped = with_retries(attempt, what="listing")
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"cannot list input {source}: {one_line(error)}") from error
    if exclude is not None and not source.path.lower().endswith(MANIFEST_EXTENSIONS):
        # a folder or glob: files the run writes are not input (a manifest lists its own)
        uris = outside(uris, as_uri(exclude.fs, exclude.path.rstrip("/")) + "/")
    if len(uris) == 0:
        note = skipped_note(skipped)
        raise InputError(f"no images found in {source}" + (f" ({note})" if note else ""))
    listing = sorted_listing(uris)
    listing.skipped = skipped
    return listing


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


def list_uris(source: Location, skipped: dict[str, Tally]) -> pa.ChunkedArray:
    """The image URIs of ``source`` as Arrow strings (in chunks, never copied whole),
    unsorted, maybe with repeats; what it passes over is counted in ``skipped``."""
    fs, path = source.fs, source.path
    if not fs.exists(path):
        if any(ch in path for ch in "*?["):
            return glob_images(source, skipped)
        raise InputError(f"input not found: {source}")
    if fs.isdir(path):
        if source.is_local:
            return walk_local(path, skipped)
        return walk_images(source, skipped)
    if path.lower().endswith(MANIFEST_EXTENSIONS):
        return read_manifest(source)
    if is_image(path):
        return pa.chunked_array([pa.array([as_uri(fs, path)], pa.string())])
    raise InputError(f"input {source} is neither a folder, an image nor a manifest")


def glob_images(source: Location, skipped: dict[str, Tally]) -> pa.ChunkedArray:
    """The images a glob pattern matches: hidden names the pattern does not spell out and
    files without an image extension are counted, names that are not UTF-8 escaped."""
    fs = source.fs
    spelled = source.path.split("/")
    names = []
    for path in fs.glob(literal_folders(fs, source.path)):
        parts = path.split("/")
        shown = printable_path(path)
        if any(
            part.startswith(".") and not (k < len(spelled) and spelled[k].startswith("."))
            for k, part in enumerate(parts)
        ):
            skipped["hidden"].add(shown)
        elif not fs.isfile(path):
            continue
        elif not is_image(path):
            skipped["not_image"].add(shown)
        else:
            names.append(as_uri(fs, shown))
            if shown != path:
                skipped["bad_name"].add(shown)
    return pa.chunked_array([pa.array(names, pa.string())])


def literal_folders(fs, pattern: str) -> str:
    """``pattern`` with its longest existing folder taken literally: in
    ``photos [2023]/*.png`` the brackets name a folder, not a set of characters."""
    parts = pattern.split("/")
    for end in range(len(parts) - 1, 0, -1):
        folder = "/".join(parts[:end])
        if any(ch in folder for ch in "*?[") and fs.isdir(folder):
            return "/".join([glob.escape(folder), *parts[end:]])
    return pattern


def walk_local(root: str, skipped: dict[str, Tally]) -> pa.ChunkedArray:
    """Every image under a local folder, one folder's names in Python at a time. Linked
    folders are followed, each real folder walked once (``keep_folder``).

    Raises:
        InputError: a folder under ``root`` (or ``root``) cannot be read.
    """
    root = os.path.abspath(root)
    failures: list[OSError] = []
    real_root = os.path.realpath(root)
    walked = {real_root}
    chunks = []
    for folder, folders, files in os.walk(root, onerror=failures.append, followlinks=True):
        inside = os.path.relpath(folder, root)
        inside = "" if inside == "." else inside
        folders[:] = [
            name
            for name in sorted(folders)
            if keep_folder(folder, name, inside, real_root, walked, skipped)
        ]
        names = []
        for name in files:
            if kept_file(name, inside, skipped):
                place = f"{folder}/{name}"
                names.append(printable_path(place))
                if names[-1] != place:
                    skipped["bad_name"].add(names[-1])
        if names:
            chunks.append(pa.array(names, pa.string()))
    if failures:
        first = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise InputError(
            f"cannot read folder {printable_path(str(first.filename))}: {first.strerror}{more}; "
            "make it readable, or list the images to label in a manifest (--input list.txt)"
        )
    return pa.chunked_array(chunks, pa.string())


def keep_folder(
    parent: str,
    name: str,
    inside: str,
    real_root: str,
    walked: set[str],
    skipped: dict[str, Tally],
) -> bool:
    """Whether the walk enters ``parent/name``: not hidden, and not a folder it walks (or
    walked) already. A link into the input's own folder is passed over, so its images are
    listed once, by their real path; a link out of it is followed, its real folders once.

    Args:
        parent: the folder being walked; ``name``: one of its folders.
        inside: ``parent`` relative to the input (for notes).
        real_root: the input folder's real path.
        walked: the real paths of the folders walked so far; ``parent/name``'s is added.
        skipped: the listing's tallies.
    """
    shown = printable_path(f"{inside}/{name}/" if inside else f"{name}/")
    if name.startswith("."):
        skipped["hidden"].add(shown)
        return False
    place = f"{parent}/{name}"
    real = os.path.realpath(place)
    into_input = os.path.islink(place) and (real + "/").startswith(real_root + "/")
    if into_input or real in walked:
        skipped["linked_again"].add(shown)
        return False
    walked.add(real)
    return True


def kept_file(name: str, folder: str, skipped: dict[str, Tally]) -> bool:
    """Whether a file found in a folder is listed (``folder``: where it is, for a note)."""
    kind = "hidden" if name.startswith(".") else None if is_image(name) else "not_image"
    if kind is not None:
        skipped[kind].add(printable_path(f"{folder}/{name}" if folder else name))
    return kind is None


def walk_images(source: Location, skipped: dict[str, Tally]) -> pa.ChunkedArray:
    """Every image under a folder of an object store (no links there; hidden keys and other
    files counted), one directory's names in Python at a time."""
    fs = source.fs
    top = source.path.rstrip("/")
    chunks = []
    for root, folders, files in fs.walk(top, on_error="raise"):
        hidden = [name for name in folders if name.startswith(".")]
        for name in hidden:
            skipped["hidden"].add(f"{root.rstrip('/')}/{name}/"[len(top) + 1 :])
            folders.remove(name)
        names = []
        inside = root.rstrip("/")[len(top) + 1 :]
        for name in files:
            if kept_file(name, inside, skipped):
                names.append(as_uri(fs, f"{root.rstrip('/')}/{name}"))
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
            chunks = [absolute(usable_uris(batch), source) for batch in batches]
            return pa.chunked_array(chunks, pa.string())
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"cannot read manifest {source}: {one_line(error)}") from error


def usable_uris(chunk: pa.Array) -> pa.Array:
    """A manifest chunk's URIs: whitespace trimmed, empty lines and ``#`` comments dropped."""
    chunk = pc.utf8_trim_whitespace(chunk.cast(pa.string()))
    usable = pc.and_(pc.invert(pc.equal(chunk, "")), pc.invert(pc.starts_with(chunk, "#")))
    return chunk.filter(usable.fill_null(False))


def absolute(chunk: pa.Array, source: Location) -> pa.Array:
    """A manifest chunk as absolute paths and full URIs (``Location.resolve``): a plain
    relative path is joined to the manifest's folder in Arrow; only entries with ``.``/``..``
    parts, doubled slashes or ``file://`` go through Python."""
    remote = pc.and_(pc.match_substring(chunk, "://"), pc.invert(pc.starts_with(chunk, "file://")))
    messy = pc.match_substring_regex(chunk, r"(^|/)\.\.?(/|$)|//|^file://")
    fix = pc.and_(pc.invert(remote), pc.or_(messy, pc.invert(pc.starts_with(chunk, "/"))))
    if not pc.any(fix).as_py():
        return chunk
    folder = source.resolve(".")
    joined = pc.binary_join_element_wise(folder.rstrip("/") + "/", chunk, "")
    result = pc.if_else(pc.and_(fix, pc.invert(messy)), joined, chunk)
    untidy = pc.and_(fix, messy)
    if pc.any(untidy).as_py():
        tidied = [source.resolve(uri) for uri in chunk.filter(untidy).to_pylist()]
        result = pc.replace_with_mask(result, untidy, pa.array(tidied, pa.string()))
    return result


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
