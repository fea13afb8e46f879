"""One path abstraction over local disks and object stores (fsspec): ``Location``.

Every module that touches files goes through here, so ``/data``, ``file:///data`` and
``s3://bucket/data`` are the same code. A ``Location`` is built once where a URI enters (the
CLI, the public API) and handed down; nothing below takes storage options.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fsspec.core import url_to_fs

from pipeline.core.errors import UserError, one_line, redact

T = TypeVar("T")

# A file being written is named ``_<random hex>.<name>.partial`` until it is whole.
PARTIAL_PREFIX = "_"
PARTIAL_SUFFIX = ".partial"

# Errors that mean "the data is not there" or "not allowed": retrying cannot help.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)


def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors worth a retry: the OS's and, when botocore is there, its connection errors
    (a refused or dropped connection to S3 is not an ``OSError``)."""
    errors: list[type[BaseException]] = [OSError, TimeoutError, ConnectionError]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        errors += [BotoConnectionError, HTTPClientError]
    except ImportError:
        pass
    return tuple(errors)


TRANSIENT_ERRORS = transient_errors()


class StorageUnavailableError(OSError, UserError):
    """The storage could not be reached after the retries: a fault of the store, not of the
    file (a shard that meets it fails and is retried; the image gets no error row)."""


def with_retries(
    action: Callable[[], T], attempts: int = 5, first_delay: float = 0.5, what: str = "storage"
) -> T:
    """Run ``action``, retrying transient storage errors with exponential backoff.

    Args:
        action: the call to make (no arguments).
        attempts: tries in all before the last error is raised.
        first_delay: seconds before the second try; doubled each time.
        what: a name for the log line of each retry.
    """
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except PERMANENT_ERRORS:
            raise
        except TRANSIENT_ERRORS as error:
            if attempt == attempts:
                raise
            import logging

            logging.getLogger(__name__).warning(
                "%s error (try %d of %d), retrying in %.1f s: %s",
                what,
                attempt,
                attempts,
                delay,
                redact(str(error)),
            )
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def open_fs(uri: str, options: Mapping[str, Any] | None = None):
    """Return ``(filesystem, path)`` for ``uri`` (what ``Location`` is built on).

    Args:
        uri: local path or fsspec URI.
        options: options for the filesystem (endpoint, credentials …). For S3 the standard
            ``AWS_*`` environment variables also apply.
    """
    return url_to_fs(uri, **dict(options or {}))


def strip_protocol(uri: str) -> str:
    """``file:///a/b`` → ``/a/b``; other URIs unchanged."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return "://" not in uri or uri.startswith("file://")


def join(base: str, *parts: str) -> str:
    """Join path parts onto a path or URI with ``/``."""
    if is_local(base):
        return os.path.join(strip_protocol(base), *parts)
    return posixpath.join(base, *parts)


def as_uri(fs, path: str) -> str:
    """A filesystem path back to a full URI (``s3://…``); local paths stay plain paths."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return fs.unstrip_protocol(path)


def printable_path(path: str) -> str:
    """A local path as text that is valid UTF-8: a name the OS gave as bytes that are not UTF-8
    (Python holds them as surrogates) shows those bytes as ``\\xNN`` escapes."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def undecodable_path(path: str) -> bytes | None:
    """The bytes of the local file that ``printable_path`` named ``path``, when one is there
    (None for a path that is what it says). Called only once reading ``path`` failed: a file
    literally named ``caf\\xe9.png`` (a backslash in its name) beside a Latin-1 ``café.png``
    would be read in its place; rare enough to leave."""
    if "\\x" not in path:
        return None
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]), path.encode())
    return raw if raw != path.encode() and os.path.lexists(raw) else None


def write_file_atomic(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Write a local file (or URI) whole or not at all: ``Location.write_atomic``.

    Args:
        path: the file to write.
        write: writes the content into the binary file object it is given.
    """
    Location(os.fspath(path)).write_atomic(write)


class LocationError(UserError, ValueError):
    """A URI no filesystem can open; the message is one line for the user."""


def open_location(uri: str, options: Mapping[str, Any] | None = None) -> Location:
    """``Location(uri, options)``, with a one-line ``LocationError`` when it cannot be opened
    (an unknown protocol, a filesystem package that is not installed, an empty string …)."""
    if not uri.strip():
        raise LocationError("an empty path or URI (an unset variable?)")
    try:
        return Location(uri, options)
    except Exception as error:
        raise LocationError(f"cannot open {redact(uri)}: {one_line(error)}") from error


def as_location(where: Location | str | os.PathLike, options: Mapping[str, Any] | None = None):
    """``where`` as a ``Location``: one as it is, a path or URI opened with ``options``.

    Args:
        where: a ``Location``, a local path or an fsspec URI.
        options: fsspec options for a path or URI (ignored for a ``Location``).
    """
    return where if isinstance(where, Location) else open_location(os.fspath(where), options)


class Location:
    """A file or folder in storage: its URI, the filesystem that serves it, and the options
    (endpoint, credentials …) that opened it, made once where a URI enters the program.

    ``join`` and ``at`` give other locations on the same terms without reopening anything.
    Printing a location shows its URI with credentials redacted; the options never show.
    A location pickles (Ray sends it to actors) as its URI and options.

    Args:
        uri: local path or fsspec URI.
        options: fsspec options for its filesystem.
    """

    def __init__(self, uri: str, options: Mapping[str, Any] | None = None, *, _opened=None):
        self.uri = uri
        self.options = dict(options or {})
        self.fs, self.path = _opened or open_fs(uri, self.options)

    def join(self, *parts: str) -> Location:
        """The location ``parts`` below this one."""
        path = posixpath.join(self.path, *parts)
        return Location(join(self.uri, *parts), self.options, _opened=(self.fs, path))

    def at(self, uri: str) -> Location:
        """Another URI (an image of a listing, a checkpoint) opened with the same options."""
        return Location(uri, self.options)

    @property
    def is_local(self) -> bool:
        """True on a local disk."""
        return is_local(self.uri)

    @property
    def name(self) -> str:
        """The last part of the path."""
        return posixpath.basename(self.path.rstrip("/"))

    def exists(self) -> bool:
        """Whether something is there now (not in a listing cached earlier: other processes
        write here too)."""
        self.forget_cached()
        return self.fs.exists(self.path)

    def forget_cached(self) -> None:
        """Drop the filesystem's cached listings of this path and its folder."""
        self.fs.invalidate_cache(self.path)
        self.fs.invalidate_cache(posixpath.dirname(self.path.rstrip("/")))

    def open(self, mode: str = "rb"):
        """``fs.open`` of this location."""
        return self.fs.open(self.path, mode)

    def read_bytes(self) -> bytes:
        """The whole file, retrying transient errors."""
        return with_retries(lambda: self.fs.cat_file(self.path), what="read")

    def resolve(self, reference: str) -> str:
        """An image reference written in the file at this location (a manifest line, a table's
        ``image_uri``) as an absolute path or a full URI: a relative one is read from this
        file's folder, as a browser reads a link; ``file://`` URIs become plain paths, and
        local paths lose ``.``/``..`` parts and doubled slashes.

        Args:
            reference: a path or URI as the file gives it.

        Raises:
            ValueError: a relative reference climbs out of the file's bucket.
        """
        reference = strip_protocol(reference)
        if "://" in reference:
            return reference
        if reference.startswith("/"):
            return posixpath.normpath(reference)
        path = posixpath.normpath(posixpath.join(posixpath.dirname(self.path), reference))
        if not self.is_local and path.split("/")[0] != self.path.split("/")[0]:
            raise ValueError(f"{reference} climbs out of the bucket of {self}")
        return as_uri(self.fs, path)

    def listdir(self) -> list[Location]:
        """The entries of a folder (none when it does not exist)."""
        if not self.exists():
            return []
        entries = self.fs.ls(self.path, detail=False)
        return [self.join(posixpath.basename(entry.rstrip("/"))) for entry in entries]

    def remove(self, recursive: bool = False) -> None:
        """Delete the file (or, with ``recursive``, the folder) when it exists."""
        if self.exists():
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile: as wanted
                self.fs.rm(self.path, recursive=recursive)

    def read_json(self) -> dict | None:
        """The JSON file's content, or None when it does not exist (read in one request, so
        a file replaced meanwhile is read whole, old or new)."""
        self.forget_cached()
        try:
            data = self.fs.cat_file(self.path)  # no retries here: callers choose their patience
        except FileNotFoundError:
            return None
        return json.loads(data)

    def write_atomic(self, write: Callable[[Any], None], stream: bool = False) -> None:
        """Write the file so that readers see it whole or not at all, retrying transient errors;
        a write that fails (or is interrupted) leaves the previous file as it was.

        Locally the bytes go to ``_<random>.<name>.partial`` (a name readers skip), are
        flushed to disk (``fsync``) and renamed over the file. On an object store the content is
        made in memory and sent in one upload, so the object changes only when it completes;
        with ``stream`` (content larger than memory, e.g. an export) it is uploaded under the
        partial name and moved into place once whole.

        Args:
            write: writes the content into the binary file object it is given.
            stream: on an object store, upload as it is written instead of from memory.
        """
        parent = posixpath.dirname(self.path)
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        if self.is_local or stream:
            # A streamed write cannot be replayed (its content may come from a generator).
            self._write_partial(write, parent, attempts=1 if stream else 5)
            return
        buffer = io.BytesIO()
        write(buffer)
        payload = buffer.getvalue()
        with_retries(lambda: self.fs.pipe_file(self.path, payload), what="write")

    def _write_partial(self, write: Callable[[Any], None], parent: str, attempts: int) -> None:
        """Write under a partial name beside the file, then move it into place."""
        partial = f"{parent}/{PARTIAL_PREFIX}{uuid.uuid4().hex}.{self.name}{PARTIAL_SUFFIX}"

        def upload() -> None:
            with self.fs.open(partial, "wb") as f:
                write(f)
                if self.is_local:
                    f.flush()
                    os.fsync(f.fileno())

        try:
            with_retries(upload, attempts=attempts, what="write")
            if self.is_local:
                os.replace(partial, self.path)
            else:
                self.fs.mv(partial, self.path)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(partial)
            raise

    def contains(self, other: Location) -> bool:
        """True when ``other`` is this location or lies below it (same store; local paths
        compared after resolving links)."""
        mine, theirs = self.identity(), other.identity()
        if mine[0] != theirs[0]:
            return False
        return theirs[1] == mine[1] or theirs[1].startswith(mine[1].rstrip("/") + "/")

    def identity(self) -> tuple[str, str]:
        """``(store, path)`` that names the same place however the URI was written."""
        if self.is_local:
            return "file", os.path.realpath(strip_protocol(self.uri))
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return protocol, self.path.rstrip("/")

    def write_json_atomic(self, data: dict) -> None:
        """Write a JSON file so that a reader sees the old one or the new one, never half."""
        payload = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
        self.write_atomic(lambda f: f.write(payload))

    def __str__(self) -> str:
        return redact(self.uri)

    def __repr__(self) -> str:
        return f"Location({redact(self.uri)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and (self.uri, self.options) == (
            other.uri,
            other.options,
        )

    def __hash__(self) -> int:
        return hash(self.uri)

    def __reduce__(self):
        return (Location, (self.uri, self.options))
