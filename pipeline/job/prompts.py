"""Prompts users already have (boxes and points from a detection dataset), matched to images.

Three formats, each opened for streaming (``open_prompts``): the keys that name images come
first, then the prompts one at a time, so a file of GBs is never held (``prompt_plan`` matches
them to the listing and writes them into the run). A malformed file is a one-line
``PromptsError``, before any model loads:

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ijson
import pyarrow.parquet as pq

from pipeline.core.errors import UserError, one_line
from pipeline.core.pairing import Pairing, by_path_end, file_key
from pipeline.core.prompt import Prompt
from pipeline.core.storage import Location, as_uri
from pipeline.job.sources import Tally

TABLE_EXTENSIONS = (".parquet", ".csv")
YOLO_NAME_FILES = ("classes.txt", "obj.names", "data.yaml")


class PromptsError(UserError, ValueError):
    """A prompts file that cannot be used; the message is one line for the user."""


@dataclass
class PromptsFile:
    """A prompts file opened for streaming: the keys that name its images, and its prompts
    one at a time (``prompts``), never all at once.

    Attributes:
        kind: ``coco``, ``yolo`` or ``table``.
        source: where it is.
        keys: COCO and YOLO: every key that names an image (a ``file_name``; a label's path
            relative to the label folder without ``.txt``), paired with the listing before the
            prompts stream; None for a table, whose keys are the image URIs themselves.
        stream: yields ``(key, prompt)`` in the file's order (``prompts`` wraps it).
        unknown_categories: category ids the file's names do not list (counted as the
            prompts stream).
        label_paths: YOLO: each label file's full path without ``.txt`` → its key.
        names_file: YOLO: the class-names file used, if any.
    """

    kind: str
    source: Location
    keys: set[str] | None
    stream: Callable[[PromptsFile], Iterator[tuple[str, Prompt]]]
    unknown_categories: Tally = field(default_factory=Tally)
    label_paths: dict[str, str] = field(default_factory=dict)
    names_file: str | None = None

    def shown(self, key: str) -> str:
        """The key as the user wrote it (a YOLO key with its ``.txt``)."""
        return f"{key}.txt" if self.kind == "yolo" else key

    def prompts(self) -> Iterator[tuple[str, Prompt]]:
        """Each prompt with the key of its image, in the file's order (a file found unreadable
        midway is a one-line ``PromptsError``)."""
        try:
            yield from self.stream(self)
        except PromptsError:
            raise
        except Exception as error:
            raise PromptsError(f"cannot read prompts {self.source}: {one_line(error)}") from error


def open_prompts(source: Location) -> PromptsFile:
    """Open a prompts file of any of the three formats for streaming (a one-line
    ``PromptsError`` when it cannot be used)."""
    try:
        if not source.exists():
            raise PromptsError(f"prompts not found: {source}")
        if source.fs.isdir(source.path):
            return open_yolo(source)
        if source.path.lower().endswith(".json"):
            return open_coco(source)
        if source.path.lower().endswith(TABLE_EXTENSIONS):
            return PromptsFile("table", source, None, table_stream)
    except PromptsError:
        raise
    except Exception as error:
        raise PromptsError(f"cannot read prompts {source}: {one_line(error)}") from error
    raise PromptsError(
        f"prompts {source} is neither a COCO JSON, a YOLO label folder nor a Parquet/CSV table"
    )


@dataclass
class CocoHead:
    """What a COCO file says besides its annotations: each image's key by id, each category's
    name by id, and how many annotations it has."""

    files: dict[Any, str] = field(default_factory=dict)
    names: dict[Any, str | None] = field(default_factory=dict)
    annotations: int = 0


def open_coco(source: Location) -> PromptsFile:
    """COCO instances (or detections with ``images``), read by a streaming JSON parser: one
    pass for the images and categories (the keys: each image's normalised ``file_name``), then
    the annotations stream as box prompts; a file of GBs is never held."""
    head = coco_head(source)
    if not head.files and not head.annotations:
        raise PromptsError(f"prompts {source} is not a COCO instances file (images, annotations)")

    def stream(file: PromptsFile) -> Iterator[tuple[str, Prompt]]:
        with source.fs.open(source.path, "rb") as handle:
            annotations = ijson.items(handle, "annotations.item", use_float=True)
            for index, ann in enumerate(annotations):
                yield coco_prompt(ann, index, head, file)

    return PromptsFile("coco", source, set(head.files.values()), stream)


def coco_head(source: Location, chunk: int = 1 << 20) -> CocoHead:
    """Images, categories and the number of annotations of a COCO file, in one streaming
    pass (the annotations are counted, not kept)."""
    images, categories, annotations = (ijson.sendable_list() for _ in range(3))
    parsers = [
        ijson.items_coro(images, "images.item", use_float=True),
        ijson.items_coro(categories, "categories.item", use_float=True),
        ijson.items_coro(annotations, "annotations.item", use_float=True),
    ]
    head = CocoHead()

    def take() -> None:  # keep each image's key only, count the annotations
        for image in images:
            if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
                raise PromptsError(f"an image of {source} has no id or file_name: {image!r:.80}")
            head.files[image["id"]] = file_key(image["file_name"])
        head.annotations += len(annotations)
        del images[:], annotations[:]

    with source.fs.open(source.path, "rb") as handle:
        try:
            while data := handle.read(chunk):
                for parser in parsers:
                    parser.send(data)
                take()
            for parser in parsers:
                parser.close()
        except ijson.JSONError as error:
            raise PromptsError(
                f"cannot read prompts {source}: {one_line(error)} (a COCO file must be strict "
                "JSON: NaN and Infinity are not, write null)"
            ) from error
    take()
    head.names = {c["id"]: c.get("name") for c in categories if isinstance(c, dict) and "id" in c}
    return head


def coco_prompt(ann: Any, index: int, head: CocoHead, file: PromptsFile) -> tuple[str, Prompt]:
    """One COCO annotation as a box prompt, with its image's key."""
    where = f"annotation {ann.get('id', index) if isinstance(ann, dict) else index}"
    if not isinstance(ann, dict) or ann.get("image_id") not in head.files:
        raise PromptsError(f"{where} of {file.source} has no image")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4):
        raise PromptsError(f"{where} of {file.source} has no [x, y, w, h]")
    category = ann.get("category_id")
    if head.names and category is not None and category not in head.names:
        file.unknown_categories.add(str(category))
    prompt = Prompt(
        box=tuple(float(v) for v in bbox),
        category_id=category,
        category_name=head.names.get(category),
        source_id=str(ann["id"]) if "id" in ann else None,
        score=ann.get("score"),
    )
    return head.files[ann["image_id"]], prompt


def open_yolo(folder: Location) -> PromptsFile:
    """YOLO label files (``<stem>.txt``: ``class cx cy w h`` per line): keys are the labels'
    paths under ``folder`` without ``.txt`` (hidden files skipped); each file is read when the
    prompts stream."""
    names, names_file = yolo_class_names(folder)
    top = folder.path.rstrip("/")
    paths: dict[str, str] = {}  # key → the label file's path
    for path in sorted(folder.fs.find(top)):
        relative = path[len(top) + 1 :]
        base = posixpath.basename(relative)
        hidden = any(part.startswith(".") for part in relative.split("/"))
        if not hidden and base.endswith(".txt") and base not in YOLO_NAME_FILES:
            paths[relative[: -len(".txt")]] = path
    if not paths:
        raise PromptsError(f"no YOLO label files (*.txt) in {folder}")

    def stream(file: PromptsFile) -> Iterator[tuple[str, Prompt]]:
        for key, path in paths.items():
            text = folder.fs.cat_file(path).decode("utf-8-sig")
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    where = f"{key}.txt:{number}"
                    yield key, yolo_prompt(line, names, where, file.unknown_categories)

    file = PromptsFile("yolo", folder, set(paths), stream, names_file=names_file)
    file.label_paths = {as_uri(folder.fs, path[: -len(".txt")]): key for key, path in paths.items()}
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


def table_stream(file: PromptsFile) -> Iterator[tuple[str, Prompt]]:
    """A Parquet or CSV table's prompts, a batch of rows at a time, by ``image_uri`` (a
    relative one read from the table's folder)."""
    source, shown = file.source, str(file.source)
    for number, row in enumerate(table_rows(source), start=1):
        uri = row.get("image_uri")
        if not uri:
            raise PromptsError(f"row {number} of {shown} has no image_uri")
        yield source.resolve(str(uri)), table_prompt(row, number, shown)


def table_rows(source: Location, batch: int = 65_536) -> Iterator[dict[str, Any]]:
    """The table's rows as dicts, read in batches (CSV cells holding JSON lists are parsed)."""
    with source.fs.open(source.path, "rb") as handle:
        if source.path.lower().endswith(".parquet"):
            for part in pq.ParquetFile(handle).iter_batches(batch_size=batch):
                yield from part.to_pylist()
            return
        text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
        for row in csv.DictReader(text):
            row = {key: value if value != "" else None for key, value in row.items()}
            for key, parse in CSV_CELLS.items():
                if row.get(key) is not None:
                    row[key] = parse(row[key])
            yield row


# CSV cells that are not text: JSON lists and numbers.
CSV_CELLS = {
    "box": json.loads,
    "points": json.loads,
    "point_labels": json.loads,
    **dict.fromkeys(("x", "y", "w", "h", "score"), float),
    "category_id": int,
}


def table_prompt(row: dict[str, Any], number: int, source: str) -> Prompt:
    """One table row (row ``number`` of ``source``) as a prompt."""
    box = row.get("box")
    if box is None and all(row.get(k) is not None for k in "xywh"):
        box = [row[k] for k in "xywh"]
    points = row.get("points") or []
    labels = row.get("point_labels")
    labels = [1] * len(points) if labels is None else labels
    if box is None and not points:
        where = f"row {number} of {source}"
        raise PromptsError(f"{where} has neither a box nor points")
    if box is not None and len(box) != 4:
        where = f"row {number} of {source}"
        raise PromptsError(f"{where}: box must be [x, y, w, h]")
    if len(labels) != len(points) or any(len(p) != 2 for p in points):
        where = f"row {number} of {source}"
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


def by_file_path(file: PromptsFile, uris: Callable[[], Iterable[str]]) -> Pairing:
    """Pair each image (``uris()``: the listed URIs, streamed) with the longest key that ends
    its path at a folder boundary (COCO keys with the extension, YOLO keys without)."""
    return by_path_end(file.keys or (), uris(), strip_extension=file.kind == "yolo")


def by_yolo_rule(file: PromptsFile, uris: Callable[[], Iterable[str]]) -> Pairing:
    """Pair images by YOLO's own rule when any label file sits where it says
    (``…/images/a/b.jpg`` ↔ ``…/labels/a/b.txt``), else by the end of their path."""
    pairing = Pairing(rule="yolo-rule")
    for uri in uris():
        head, images, tail = posixpath.splitext(uri)[0].rpartition("/images/")
        key = file.label_paths.get(f"{head}/labels/{tail}") if images else None
        if key is not None:
            pairing.pair(uri, key)
    return pairing if pairing.found else by_file_path(file, uris)


MATCHERS = {"coco": by_file_path, "yolo": by_yolo_rule}

# How to lay a prompts file out so its keys fit one image each, by format.
ADVICE = {
    "coco": "a file_name must end the image's path (train/a.jpg fits …/images/train/a.jpg)",
    "yolo": "lay label files out like the images (labels/train/a.txt for images/train/a.jpg)",
    "yolo-rule": "YOLO pairs a label with every image of its stem in the folder: rename one",
    "table": "image_uri must be the image's path or URI as listed (a relative one is read "
    "from the table's folder)",
}
