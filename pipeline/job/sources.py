"""List the input images and plan deterministic shards with stable image ids.

An input is a local folder (searched recursively), a glob, an fsspec URI of a folder or a
single image, or a manifest: a ``.txt``/``.lst`` file with one URI per line, or a
``.parquet``/``.csv`` file with a ``uri`` column.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass

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
    """A fixed slice of the sorted listing, processed and committed as one unit."""

    index: int
    images: tuple[ImageRef, ...]
    # Prompted runs: each image's prompts, in the order of ``images``.
    prompts: tuple[tuple[Prompt, ...], ...] | None = None

    @property
    def name(self) -> str:
        """File stem of the shard, e.g. ``shard-00007``."""
        return f"shard-{self.index:05d}"

    @property
    def listing_hash(self) -> str:
        """A hash of the shard's image URIs; a rerun may skip the shard only if it matches."""
        digest = hashlib.blake2b(digest_size=12)
        for ref in self.images:
            digest.update(ref.uri.encode() + b"\n")
        return digest.hexdigest()


def image_id_for(uri: str) -> int:
    """A stable positive 63-bit id from the image URI (same URI → same id, on any machine)."""
    return int.from_bytes(hashlib.blake2b(uri.encode(), digest_size=8).digest(), "big") >> 1


def list_images(source: Location) -> list[ImageRef]:
    """List the images of ``source`` sorted by URI, each with its stable id.

    Args:
        source: folder, glob, image or manifest file (see the module docstring).

    Raises:
        InputError: the source does not exist, cannot be read, or lists no image.
    """
    try:
        uris = with_retries(lambda: list_uris(source), what="listing")
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"cannot list input {source}: {one_line(error)}") from error
    if not uris:
        raise InputError(f"no images found in {source}")
    refs = {uri: ImageRef(image_id_for(uri), uri) for uri in uris}
    return [refs[uri] for uri in sorted(refs)]


def list_uris(source: Location) -> list[str]:
    """The image URIs of ``source``, unsorted, possibly with duplicates."""
    fs, path = source.fs, source.path
    if any(ch in path for ch in "*?["):
        return [as_uri(fs, p) for p in fs.glob(path) if is_image(p) and fs.isfile(p)]
    if not fs.exists(path):
        raise InputError(f"input not found: {source}")
    if fs.isdir(path):
        return [as_uri(fs, p) for p in fs.find(path) if is_image(p)]
    if path.lower().endswith(MANIFEST_EXTENSIONS):
        return read_manifest(source)
    if is_image(path):
        return [as_uri(fs, path)]
    raise InputError(f"input {source} is neither a folder, an image nor a manifest")


def is_image(path: str) -> bool:
    """True for file names with an image extension."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


def read_manifest(source: Location) -> list[str]:
    """The URIs listed in a manifest file (text, CSV or Parquet with a ``uri`` column)."""
    lower = source.path.lower()
    try:
        raw = source.read_bytes()
        if lower.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(raw))
            if "uri" not in table.column_names:
                raise InputError(f"manifest {source} has no 'uri' column")
            return [u for u in table.column("uri").to_pylist() if u]
        text = raw.decode("utf-8")
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"cannot read manifest {source}: {one_line(error)}") from error
    if lower.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if "uri" not in (reader.fieldnames or []):
            raise InputError(f"manifest {source} has no 'uri' column")
        return [row["uri"].strip() for row in reader if row["uri"] and row["uri"].strip()]
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def plan_shards(images: list[ImageRef], shard_size: int) -> list[Shard]:
    """Cut the sorted listing into shards of ``shard_size`` images (the last may be smaller).

    Args:
        images: the listing, already sorted (``list_images`` does that).
        shard_size: images per shard.
    """
    return [
        Shard(index=i, images=tuple(images[start : start + shard_size]))
        for i, start in enumerate(range(0, len(images), shard_size))
    ]
