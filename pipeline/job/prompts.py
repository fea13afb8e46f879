"""Prompts users already have (boxes and points from a detection dataset), matched to images.

Three formats, read whole before any model loads (a malformed file is a one-line
``PromptsError``):

- a COCO instances JSON: each annotation's ``bbox`` (XYWH) becomes a box prompt with its
  ``category_id``, the category's name, the annotation ``id`` (``source_id``) and its ``score``
  when it is a detector's output; images are matched by ``file_name`` as a suffix of the image
  URI (as ``autolabel eval`` matches them);
- a folder of YOLO label files (``class cx cy w h``, normalised to the image size), matched by
  file stem, with an optional class-names file (one name per line, ``classes.txt`` or
  ``*.names``, or a ``names:`` list in ``data.yaml``);
- a Parquet or CSV table with ``image_uri`` and a box (``box`` as ``[x, y, w, h]``, or columns
  ``x, y, w, h``) and/or ``points`` (``[[x, y], …]``) with ``point_labels`` (1 positive,
  0 negative), and optional ``category_id``, ``category_name``, ``source_id``, ``score``.

Prompts whose image is not in the input are counted, not dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import UserError, one_line
from pipeline.core.prompt import Prompt
from pipeline.core.storage import Location
from pipeline.job.sources import ImageRef

TABLE_EXTENSIONS = (".parquet", ".csv")
YOLO_NAME_FILES = ("classes.txt", "obj.names", "data.yaml")


class PromptsError(UserError, ValueError):
    """A prompts file that cannot be used; the message is one line for the user."""


@dataclass
class MatchedPrompts:
    """Prompts by image URI, and what could not be matched."""

    by_uri: dict[str, list[Prompt]] = field(default_factory=dict)
    unmatched: int = 0  # prompts whose image is not in the input
    unmatched_examples: list[str] = field(default_factory=list)  # a few of their image keys

    @property
    def count(self) -> int:
        """Prompts matched to an input image."""
        return sum(len(prompts) for prompts in self.by_uri.values())


def read_prompts(source: Location, images: list[ImageRef]) -> MatchedPrompts:
    """Read a prompts file or folder and match its prompts to the listed images.

    Args:
        source: a COCO JSON, a YOLO label folder, or a Parquet/CSV table.
        images: the run's listed images.

    Raises:
        PromptsError: the source is missing, unreadable or malformed.
    """
    try:
        if not source.exists():
            raise PromptsError(f"prompts not found: {source}")
        if source.fs.isdir(source.path):
            keyed, match = read_yolo(source), by_stem
        elif source.path.lower().endswith(".json"):
            keyed, match = read_coco(source), by_suffix
        elif source.path.lower().endswith(TABLE_EXTENSIONS):
            keyed, match = read_table(source), by_uri
        else:
            raise PromptsError(
                f"prompts {source} is neither a COCO JSON, a YOLO label folder nor a "
                "Parquet/CSV table"
            )
    except PromptsError:
        raise
    except Exception as error:
        raise PromptsError(f"cannot read prompts {source}: {one_line(error)}") from error
    return match(keyed, [ref.uri for ref in images])


def read_coco(source: Location) -> dict[str, list[Prompt]]:
    """COCO instances (or detections with ``images``): prompts by ``file_name``."""
    document = json.loads(source.read_bytes())
    if not isinstance(document, dict) or "annotations" not in document or "images" not in document:
        raise PromptsError(f"prompts {source} is not a COCO instances file (images, annotations)")
    names = {c["id"]: c.get("name") for c in document.get("categories", [])}
    files = {image["id"]: image["file_name"].replace("\\", "/") for image in document["images"]}
    keyed: dict[str, list[Prompt]] = {name: [] for name in files.values()}
    for index, ann in enumerate(document["annotations"]):
        if ann.get("image_id") not in files:
            raise PromptsError(f"annotation {ann.get('id', index)} of {source} has no image")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise PromptsError(f"annotation {ann.get('id', index)} of {source} has no [x, y, w, h]")
        keyed[files[ann["image_id"]]].append(
            Prompt(
                box=tuple(float(v) for v in bbox),
                category_id=ann.get("category_id"),
                category_name=names.get(ann.get("category_id")),
                source_id=str(ann["id"]) if "id" in ann else None,
                score=ann.get("score"),
            )
        )
    return keyed


def read_yolo(folder: Location) -> dict[str, list[Prompt]]:
    """YOLO label files (``<stem>.txt``: ``class cx cy w h`` per line): prompts by stem."""
    names = yolo_class_names(folder)
    keyed: dict[str, list[Prompt]] = {}
    for path in sorted(folder.fs.find(folder.path)):
        base = posixpath.basename(path)
        if not base.endswith(".txt") or base in YOLO_NAME_FILES:
            continue
        text = folder.fs.cat_file(path).decode("utf-8")
        keyed[base[: -len(".txt")]] = [
            yolo_prompt(line, names, f"{base}:{number}")
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip()
        ]
    if not keyed:
        raise PromptsError(f"no YOLO label files (*.txt) in {folder}")
    return keyed


def yolo_prompt(line: str, names: list[str], where: str) -> Prompt:
    """One ``class cx cy w h [score]`` line as a normalised box prompt."""
    parts = line.split()
    try:
        category = int(parts[0])
        cx, cy, w, h = (float(v) for v in parts[1:5])
        score = float(parts[5]) if len(parts) > 5 else None
    except (ValueError, IndexError) as error:
        raise PromptsError(f"{where}: expected 'class cx cy w h', got {line.strip()!r}") from error
    name = names[category] if 0 <= category < len(names) else None
    box = (cx - w / 2, cy - h / 2, w, h)
    return Prompt(box=box, normalized=True, category_id=category, category_name=name, score=score)


def yolo_class_names(folder: Location) -> list[str]:
    """Class names from ``classes.txt``, ``obj.names`` or ``data.yaml`` (``names:``), if any."""
    for name in YOLO_NAME_FILES:
        place = folder.join(name)
        if not place.exists():
            continue
        text = place.read_bytes().decode("utf-8")
        if name.endswith(".yaml"):
            import yaml

            names = yaml.safe_load(text).get("names", [])
            return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
        return [line.strip() for line in text.splitlines() if line.strip()]
    return []


def read_table(source: Location) -> dict[str, list[Prompt]]:
    """A Parquet or CSV table of prompts: prompts by ``image_uri``."""
    rows = table_rows(source)
    keyed: dict[str, list[Prompt]] = {}
    for number, row in enumerate(rows, start=1):
        uri = row.get("image_uri")
        if not uri:
            raise PromptsError(f"row {number} of {source} has no image_uri")
        keyed.setdefault(uri, []).append(table_prompt(row, f"row {number} of {source}"))
    return keyed


def table_rows(source: Location) -> list[dict[str, Any]]:
    """The table's rows as dicts (CSV cells holding JSON lists are parsed)."""
    data = source.read_bytes()
    if source.path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    rows = [
        {key: value if value != "" else None for key, value in row.items()}
        for row in csv.DictReader(io.StringIO(data.decode("utf-8")))
    ]
    for row in rows:
        for key, parse in CSV_CELLS.items():
            if row.get(key) is not None:
                row[key] = parse(row[key])
    return rows


# CSV cells that are not text: JSON lists and numbers.
CSV_CELLS = {
    "box": json.loads,
    "points": json.loads,
    "point_labels": json.loads,
    **dict.fromkeys(("x", "y", "w", "h", "score"), float),
    "category_id": int,
}


def table_prompt(row: dict[str, Any], where: str) -> Prompt:
    """One table row as a prompt."""
    box = row.get("box")
    if box is None and all(row.get(k) is not None for k in "xywh"):
        box = [row[k] for k in "xywh"]
    points = row.get("points") or []
    labels = row.get("point_labels")
    labels = [1] * len(points) if labels is None else labels
    if box is None and not points:
        raise PromptsError(f"{where} has neither a box nor points")
    if box is not None and len(box) != 4:
        raise PromptsError(f"{where}: box must be [x, y, w, h]")
    if len(labels) != len(points) or any(len(p) != 2 for p in points):
        raise PromptsError(f"{where}: points must be [[x, y], …] with one label each")
    return Prompt(
        box=tuple(float(v) for v in box) if box is not None else None,
        points=tuple((float(x), float(y)) for x, y in points),
        point_labels=tuple(int(v) for v in labels),
        category_id=row.get("category_id"),
        category_name=row.get("category_name"),
        source_id=str(row["source_id"]) if row.get("source_id") is not None else None,
        score=row.get("score"),
    )


def by_uri(keyed: dict[str, list[Prompt]], uris: Iterable[str]) -> MatchedPrompts:
    """Match prompts keyed by the exact image URI."""
    return matched(keyed, {uri: uri for uri in uris if uri in keyed})


def by_stem(keyed: dict[str, list[Prompt]], uris: Iterable[str]) -> MatchedPrompts:
    """Match prompts keyed by the image file's stem (YOLO: ``img_0.txt`` ↔ ``…/img_0.jpg``)."""
    found = {}
    for uri in uris:
        stem = posixpath.splitext(posixpath.basename(uri))[0]
        if stem in keyed:
            found[uri] = stem
    return matched(keyed, found)


def by_suffix(keyed: dict[str, list[Prompt]], uris: Iterable[str]) -> MatchedPrompts:
    """Match prompts keyed by ``file_name``, a suffix of the image URI (COCO)."""
    by_base: dict[str, list[str]] = {}
    for name in keyed:
        by_base.setdefault(posixpath.basename(name), []).append(name)
    found = {}
    for uri in uris:
        for name in by_base.get(posixpath.basename(uri), []):
            if uri == name or uri.endswith("/" + name):
                found[uri] = name
                break
    return matched(keyed, found)


def matched(keyed: dict[str, list[Prompt]], found: dict[str, str]) -> MatchedPrompts:
    """``MatchedPrompts`` from the keys found for each URI; the rest counts as unmatched."""
    result = MatchedPrompts(by_uri={uri: keyed[key] for uri, key in found.items()})
    used = set(found.values())
    for key, prompts in keyed.items():
        if key not in used and prompts:
            result.unmatched += len(prompts)
            if len(result.unmatched_examples) < 5:
                result.unmatched_examples.append(key)
    return result
