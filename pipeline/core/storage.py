"""One path abstraction over local disks and object stores (fsspec).

Every module that touches files goes through here, so ``/data``, ``file:///data`` and
``s3://bucket/data`` are the same code.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from fsspec.core import url_to_fs

from pipeline.core.errors import redact

T = TypeVar("T")

# Errors that mean "the data is not there" or "not allowed": retrying cannot help.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)


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
        except (OSError, TimeoutError, ConnectionError) as error:
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


def open_fs(uri: str, storage_options: dict[str, Any] | None = None):
    """Return ``(filesystem, path)`` for ``uri``.

    Args:
        uri: local path or fsspec URI.
        storage_options: options for the filesystem (endpoint, credentials …). For S3 the
            standard ``AWS_*`` environment variables also apply.
    """
    return url_to_fs(uri, **(storage_options or {}))


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


def read_json(uri: str, storage_options: dict[str, Any] | None = None) -> dict | None:
    """Read a JSON file, or None when it does not exist."""
    fs, path = open_fs(uri, storage_options)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def write_atomic(
    uri: str, write: Callable[[Any], None], storage_options: dict[str, Any] | None = None
) -> None:
    """Write a file so that readers see it whole or not at all, retrying transient errors.

    Locally the bytes go to ``_<random>.<name>.partial`` (a name readers skip) and are renamed;
    on an object store the object only becomes visible when its upload completes.

    Args:
        uri: the file to write (path or URI).
        write: writes the content into the binary file object it is given.
        storage_options: fsspec options.
    """
    fs, path = open_fs(uri, storage_options)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    target = path
    if is_local(uri):
        target = f"{parent}/_{uuid.uuid4().hex}.{posixpath.basename(path)}.partial"

    def upload() -> None:
        with fs.open(target, "wb") as f:
            write(f)

    with_retries(upload, what="write")
    if target != path:
        os.replace(target, path)


def write_json_atomic(uri: str, data: dict, storage_options: dict[str, Any] | None = None) -> None:
    """Write a JSON file so that a reader sees the old one or the new one, never half."""
    payload = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
    write_atomic(uri, lambda f: f.write(payload), storage_options)
