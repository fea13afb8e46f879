"""Pairing the names a file gives (a COCO ``file_name``, a YOLO label's path) with listed
image URIs: by the end of the image's path, at a folder boundary, never one name to two
images (shared by ``--prompts`` and ``autolabel eval``)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable


def file_key(name: str) -> str:
    """A file's name as written in a dataset, as a path to match: ``\\`` read as ``/``,
    ``./`` and repeated slashes dropped (a full URI is kept as it is)."""
    name = name.replace("\\", "/")
    return name if "://" in name else posixpath.normpath(name)


def by_path_end(
    keys: Iterable[str], uris: Iterable[str], strip_extension: bool = False
) -> dict[str, str]:
    """The key of each URI that has one: the longest key that ends the URI's path at a folder
    boundary (``train/a.jpg`` ends ``/data/images/train/a.jpg``; ``n/a.jpg`` does not).

    Args:
        keys: the names to find (``file_key`` form).
        uris: the listed images.
        strip_extension: compare the paths without the images' extensions (keys have none).
    """
    keys = set(keys)
    lasts = {key.rsplit("/", 1)[-1] for key in keys}
    found = {}
    for uri in uris:
        parts = (posixpath.splitext(uri)[0] if strip_extension else uri).split("/")
        if parts[-1] not in lasts:
            continue
        for start in range(len(parts)):
            key = "/".join(parts[start:])
            if key in keys:
                found[uri] = key
                break
    return found


def shared_key(found: dict[str, str]) -> tuple[str, list[str]] | None:
    """The first key that ``found`` gives to more than one URI, with those URIs (None when
    every key names one image)."""
    images: dict[str, list[str]] = {}
    for uri, key in found.items():
        images.setdefault(key, []).append(uri)
    return next(((key, uris) for key, uris in images.items() if len(uris) > 1), None)
