"""Pairing the names a file gives (a COCO ``file_name``, a YOLO label's path) with listed
image URIs: by the end of the image's path, at a folder boundary, never one name to two
images (shared by ``--prompts`` and ``autolabel eval``)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field


def file_key(name: str) -> str:
    """A file's name as written in a dataset, as a path to match: ``\\`` read as ``/``,
    ``./`` and repeated slashes dropped (a full URI is kept as it is)."""
    name = name.replace("\\", "/")
    return name if "://" in name else posixpath.normpath(name)


@dataclass
class Pairing:
    """Which image each name goes to, and every image each name fits.

    Attributes:
        found: image URI → its name (the most specific that fits it).
        fits: name → every image URI it fits (more than one: the name is ambiguous).
        rule: what paired them, when a caller names it (``yolo-rule``).
    """

    found: dict[str, str] = field(default_factory=dict)
    fits: dict[str, list[str]] = field(default_factory=dict)
    rule: str = ""

    def pair(self, uri: str, key: str) -> None:
        """Give ``uri`` the name ``key`` (and count it among the images ``key`` fits)."""
        self.found[uri] = key
        self.fits.setdefault(key, []).append(uri)

    def shared(self) -> tuple[str, list[str]] | None:
        """The first name that fits more than one image, with those images; None when each
        fits one."""
        return next(((key, fits) for key, fits in self.fits.items() if len(fits) > 1), None)


def by_path_end(keys: Iterable[str], uris: Iterable[str], strip_extension: bool = False) -> Pairing:
    """Pair each URI with the longest key that ends its path at a folder boundary
    (``train/a.jpg`` ends ``/data/images/train/a.jpg``; ``n/a.jpg`` does not). ``fits`` counts
    every key that ends a path, not only the longest: with keys ``a.jpg`` and ``train/a.jpg``,
    ``a.jpg`` fits both ``…/train/a.jpg`` and ``…/val/a.jpg``.

    Args:
        keys: the names to find (``file_key`` form).
        uris: the listed images.
        strip_extension: compare the paths without the images' extensions (keys have none).
    """
    keys = set(keys)
    lasts = {key.rsplit("/", 1)[-1] for key in keys}
    pairing = Pairing()
    for uri in uris:
        parts = (posixpath.splitext(uri)[0] if strip_extension else uri).split("/")
        if parts[-1] not in lasts:
            continue
        ends = [key for key in ("/".join(parts[k:]) for k in range(len(parts))) if key in keys]
        if ends:
            pairing.pair(uri, ends[0])  # the longest
            for key in ends[1:]:
                pairing.fits.setdefault(key, []).append(uri)
    return pairing
