"""One path abstraction over local disks and object stores (fsspec).

Every module that touches files goes through here, so ``/data``, ``file:///data`` and
``s3://bucket/data`` are the same code.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fsspec.core import url_to_fs

from pipeline.errors import redact

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


def write_json_atomic(uri: str, data: dict, storage_options: dict[str, Any] | None = None) -> None:
    """Write a JSON file so that a reader sees the old one or the new one, never half.

    Local files go to a temporary name and are renamed; an object store's PUT is already
    all-or-nothing.
    """
    fs, path = open_fs(uri, storage_options)
    payload = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
    if is_local(uri):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with fs.open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    else:
        with_retries(lambda: fs.pipe_file(path, payload), what="write")

