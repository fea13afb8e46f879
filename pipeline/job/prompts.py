"""Prompts users already have (boxes and points from a detection dataset), matched to images.

Three formats, read whole before any model loads (a malformed file is a one-line
``PromptsError``):

- a COCO instances JSON: each annotation's ``bbox`` (XYWH) becomes a box prompt with its
  ``category_id``, the category's name, the annotation ``id`` (``source_id``) and its ``score``
  when it is a detector's output;
- a folder of YOLO label files (``class cx cy w h``, normalised to the image size), with an
  optional class-names file;
- a Parquet or CSV table with ``image_uri`` and a box (``box`` as ``[x, y, w, h]``, or columns
  ``x, y, w, h``) and/or ``points`` (``[[x, y], …]``) with ``point_labels`` (1 positive,
  0 negative), and optional ``category_id``, ``category_name``, ``source_id``, ``score``.

Each prompt goes to its own image by the most specific key the format allows, never to two:

- COCO: ``file_name`` (``./`` dropped, ``\\`` read as ``/``) must end the image's path at a
  folder boundary (``train/a.jpg`` fits ``…/images/train/a.jpg``);
- YOLO: when label files sit where YOLO's own rule puts them (the image's path with its last
  ``images/`` folder read as ``labels/`` and ``.txt`` for its extension), that rule alone pairs
  them; otherwise a label file's path under the label folder, without ``.txt``, must end the
  image's path without its extension (``train/000001.txt`` fits ``…/train/000001.png``; in a
  flat label folder that is the file stem);
- table: ``image_uri`` is the image's path or URI as listed; a relative one is read from the
  table's folder.

A key that fits two images is refused, naming both; so is a file none of whose prompts fits an
image of the input. Prompts whose image is not in the input are counted, not dropped silently.

Class names (YOLO) come from the label folder or the two above it: ``classes.txt`` or
``obj.names``, where line N names class N and a blank line is a class without a name (as darknet
and labelImg read them), or ``data.yaml``'s ``names``, a list or an ``{id: name}`` map. A
category id the names (or a COCO file's ``categories``) do not list is counted and reported.
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
from pipeline.core.pairing import Pairing, by_path_end, file_key
from pipeline.core.prompt import Prompt
from pipeline.core.storage import Location, as_uri
from pipeline.job.sources import ImageRef, Tally

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
    unknown_categories: Tally = field(default_factory=Tally)  # ids the file does not name
    names_file: str | None = None  # YOLO: where the class names came from

    @property
    def count(self) -> int:
        """Prompts matched to an input image."""
        return sum(len(prompts) for prompts in self.by_uri.values())


@dataclass
class PromptsFile:
    """A prompts file read whole, before matching.

    Attributes:
        kind: ``coco``, ``yolo`` or ``table``.
        keyed: prompts by the key that names their image (a ``file_name``, a label path
            relative to the label folder without ``.txt``, an absolute ``image_uri``).
        unknown_categories: category ids the file's names do not list.
        label_paths: YOLO: each label file's full path without ``.txt`` → its key.
        names_file: YOLO: the class-names file used, if any.
    """

    kind: str
    keyed: dict[str, list[Prompt]]
    unknown_categories: Tally = field(default_factory=Tally)
    label_paths: dict[str, str] = field(default_factory=dict)
    names_file: str | None = None

    def shown(self, key: str) -> str:
        """The key as the user wrote it (a YOLO key with its ``.txt``)."""
        return f"{key}.txt" if self.kind == "yolo" else key


def read_prompts(source: Location, images: list[ImageRef]) -> MatchedPrompts:
    """Read a prompts file or folder and match its prompts to the listed images.

    Args:
        source: a COCO JSON, a YOLO label folder, or a Parquet/CSV table.
        images: the run's listed images.

    Raises:
        PromptsError: the source is missing, unreadable or malformed; a key fits two images;
            no prompt fits an image of the input.
    """
    file = read_prompts_file(source)
    uris = [ref.uri for ref in images]
    pairing = MATCHERS[file.kind](file, uris)
    refuse_ambiguous(file, pairing)
    result = matched(file, pairing.found)
    refuse_unmatched(file, result, uris, source)
    return result


def read_prompts_file(source: Location) -> PromptsFile:
    """Read a prompts file of any of the three formats (one-line ``PromptsError`` when it
    cannot be used)."""
    try:
        if not source.exists():
            raise PromptsError(f"prompts not found: {source}")
        if source.fs.isdir(source.path):
            return read_yolo(source)
        if source.path.lower().endswith(".json"):
            return read_coco(source)
        if source.path.lower().endswith(TABLE_EXTENSIONS):
            return read_table(source)
    except PromptsError:
        raise
    except Exception as error:
        raise PromptsError(f"cannot read prompts {source}: {one_line(error)}") from error
    raise PromptsError(
        f"prompts {source} is neither a COCO JSON, a YOLO label folder nor a Parquet/CSV table"
    )


def read_coco(source: Location) -> PromptsFile:
    """COCO instances (or detections with ``images``): prompts by normalised ``file_name``."""
    document = json.loads(source.read_bytes())
    if not isinstance(document, dict) or "annotations" not in document or "images" not in document:
        raise PromptsError(f"prompts {source} is not a COCO instances file (images, annotations)")
    names = {c["id"]: c.get("name") for c in document.get("categories", [])}
    files = {image["id"]: file_key(image["file_name"]) for image in document["images"]}
    file = PromptsFile("coco", {name: [] for name in files.values()})
    for index, ann in enumerate(document["annotations"]):
        if ann.get("image_id") not in files:
            raise PromptsError(f"annotation {ann.get('id', index)} of {source} has no image")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise PromptsError(f"annotation {ann.get('id', index)} of {source} has no [x, y, w, h]")
        category = ann.get("category_id")
        if names and category is not None and category not in names:
            file.unknown_categories.add(str(category))
        file.keyed[files[ann["image_id"]]].append(
            Prompt(
                box=tuple(float(v) for v in bbox),
                category_id=category,
                category_name=names.get(category),
                source_id=str(ann["id"]) if "id" in ann else None,
                score=ann.get("score"),
            )
        )
    return file


def read_yolo(folder: Location) -> PromptsFile:
    """YOLO label files (``<stem>.txt``: ``class cx cy w h`` per line): prompts by the label's
    path under ``folder`` without ``.txt``; hidden files are skipped."""
    names, names_file = yolo_class_names(folder)
    file = PromptsFile("yolo", {}, names_file=names_file)
    top = folder.path.rstrip("/")
    for path in sorted(folder.fs.find(top)):
        relative = path[len(top) + 1 :]
        base = posixpath.basename(relative)
        hidden = any(part.startswith(".") for part in relative.split("/"))
        if hidden or not base.endswith(".txt") or base in YOLO_NAME_FILES:
            continue
        text = folder.fs.cat_file(path).decode("utf-8-sig")
        key = relative[: -len(".txt")]
        file.label_paths[as_uri(folder.fs, path[: -len(".txt")])] = key
        file.keyed[key] = [
            yolo_prompt(line, names, f"{relative}:{number}", file.unknown_categories)
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip()
        ]
    if not file.keyed:
        raise PromptsError(f"no YOLO label files (*.txt) in {folder}")
    return file


def yolo_prompt(
    line: str, names: dict[int, str | None], where: str, unknown: Tally | None = None
) -> Prompt:
    """One ``class cx cy w h [score]`` line as a normalised box prompt.

    Args:
        line: the label file's line.
        names: class names by id (empty: no names file).
        where: ``file:line`` for an error message.
        unknown: counts a class id that ``names`` (when there are any) does not list.
    """
    parts = line.split()
    try:
        category = int(parts[0])
        cx, cy, w, h = (float(v) for v in parts[1:5])
        score = float(parts[5]) if len(parts) > 5 else None
    except (ValueError, IndexError) as error:
        raise PromptsError(f"{where}: expected 'class cx cy w h', got {line.strip()!r}") from error
    if names and category not in names and unknown is not None:
        unknown.add(str(category))
    name = names.get(category)
    box = (cx - w / 2, cy - h / 2, w, h)
    return Prompt(box=box, normalized=True, category_id=category, category_name=name, score=score)


def yolo_class_names(folder: Location) -> tuple[dict[int, str | None], str | None]:
    """Class names by id, and the file they came from: ``classes.txt``, ``obj.names`` or
    ``data.yaml`` in the label folder or one of the two above it (none: empty)."""
    place = folder
    for _ in range(3):
        for name in YOLO_NAME_FILES:
            candidate = place.join(name)
            if candidate.exists():
                return names_in(candidate), str(candidate)
        parent = posixpath.dirname(place.path.rstrip("/"))
        if not parent or parent == place.path.rstrip("/"):
            break
        place = place.at(as_uri(place.fs, parent))
    return {}, None


def names_in(file: Location) -> dict[int, str | None]:
    """The class names a names file gives (see the module docstring for the rules)."""
    text = file.read_bytes().decode("utf-8-sig")
    if not file.path.endswith(".yaml"):
        return {number: line.strip() or None for number, line in enumerate(text.splitlines())}
    import yaml

    names = (yaml.safe_load(text) or {}).get("names", [])
    if isinstance(names, dict):
        return {int(key): None if value is None else str(value) for key, value in names.items()}
    return {number: None if value is None else str(value) for number, value in enumerate(names)}


def read_table(source: Location) -> PromptsFile:
    """A Parquet or CSV table of prompts: prompts by ``image_uri`` (a relative one read from
    the table's folder)."""
    rows = table_rows(source)
    file = PromptsFile("table", {})
    for number, row in enumerate(rows, start=1):
        uri = row.get("image_uri")
        if not uri:
            raise PromptsError(f"row {number} of {source} has no image_uri")
        prompt = table_prompt(row, f"row {number} of {source}")
        file.keyed.setdefault(source.resolve(str(uri)), []).append(prompt)
    return file


def table_rows(source: Location) -> list[dict[str, Any]]:
    """The table's rows as dicts (CSV cells holding JSON lists are parsed)."""
    data = source.read_bytes()
    if source.path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    rows = [
        {key: value if value != "" else None for key, value in row.items()}
        for row in csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
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


def by_uri(file: PromptsFile, uris: Iterable[str]) -> Pairing:
    """Pair each image with its exact URI (tables)."""
    pairing = Pairing()
    for uri in uris:
        if uri in file.keyed:
            pairing.pair(uri, uri)
    return pairing


def by_file_path(file: PromptsFile, uris: Iterable[str]) -> Pairing:
    """Pair each image with the longest key that ends its path at a folder boundary (COCO
    keys with the extension, YOLO keys without)."""
    return by_path_end(file.keyed, uris, strip_extension=file.kind == "yolo")


def by_yolo_rule(file: PromptsFile, uris: Iterable[str]) -> Pairing:
    """Pair images by YOLO's own rule when any label file sits where it says
    (``…/images/a/b.jpg`` ↔ ``…/labels/a/b.txt``), else by the end of their path."""
    pairing = Pairing(rule="yolo-rule")
    for uri in uris:
        head, images, tail = posixpath.splitext(uri)[0].rpartition("/images/")
        key = file.label_paths.get(f"{head}/labels/{tail}") if images else None
        if key is not None:
            pairing.pair(uri, key)
    return pairing if pairing.found else by_file_path(file, uris)


MATCHERS = {"coco": by_file_path, "yolo": by_yolo_rule, "table": by_uri}

# How to lay a prompts file out so its keys fit one image each, by format.
ADVICE = {
    "coco": "a file_name must end the image's path (train/a.jpg fits …/images/train/a.jpg)",
    "yolo": "lay label files out like the images (labels/train/a.txt for images/train/a.jpg)",
    "yolo-rule": "YOLO pairs a label with every image of its stem in the folder: rename one",
    "table": "image_uri must be the image's path or URI as listed (a relative one is read "
    "from the table's folder)",
}


def refuse_ambiguous(file: PromptsFile, pairing: Pairing) -> None:
    """Refuse a key with prompts that fits two images (they would be copied to both, or
    go to one of them by chance)."""
    shared = pairing.shared(key for key, prompts in file.keyed.items() if prompts)
    if shared is not None:
        key, fits = shared
        raise PromptsError(
            f"{file.shown(key)} fits {len(fits)} images ({fits[0]}, {fits[1]}), so its "
            f"prompts could go to either; {ADVICE[pairing.rule or file.kind]}"
        )


def refuse_unmatched(
    file: PromptsFile, result: MatchedPrompts, uris: list[str], source: Location
) -> None:
    """Refuse prompts none of which fits an image of the input, with examples of both."""
    if result.count:
        return
    total = sum(len(prompts) for prompts in file.keyed.values())
    if not total:
        raise PromptsError(f"prompts {source} hold no prompt (no box, no points)")
    theirs = ", ".join(result.unmatched_examples[:2])
    raise PromptsError(
        f"none of the {total} prompt(s) in {source} is for an image of the input: the prompts "
        f"name {theirs}; the input lists {', '.join(uris[:2])}; {ADVICE[file.kind]}"
    )


def matched(file: PromptsFile, found: dict[str, str]) -> MatchedPrompts:
    """``MatchedPrompts`` from the keys found for each URI; the rest counts as unmatched."""
    result = MatchedPrompts(
        by_uri={uri: file.keyed[key] for uri, key in found.items()},
        unknown_categories=file.unknown_categories,
        names_file=file.names_file,
    )
    used = set(found.values())
    for key, prompts in file.keyed.items():
        if key not in used and prompts:
            result.unmatched += len(prompts)
            if len(result.unmatched_examples) < 5:
                result.unmatched_examples.append(file.shown(key))
    return result
