"""What ``autolabel view`` shows, without the HTTP: a run's images paged and sorted under a mask
filter, the kept counts and score histograms, thumbnails, and one image's masks as outlines.

Every count comes from ``results.filters.kept_scores``, the code ``autolabel filter`` runs
(pushed down to Parquet), so the page and the command agree. Per filter, the kept masks' score
columns are read once and kept in a small cache; a page of images is a slice of a sorted array,
so paging a run of 100k images costs what paging a run of 100 does. Images are only ever
addressed by their ``image_id``: the file behind it is the one the run's image row names.
"""

from __future__ import annotations

import io
import shlex
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pipeline.core.imageio import ImageReadError, load_image
from pipeline.core.storage import Location
from pipeline.results.dataset import Run, decode_mask, open_run
from pipeline.results.filters import FilterError, MaskFilter, kept_scores, parse_where
from pipeline.results.overlays import draw_overlay, image_mask_rows, placeholder

SORTS = (
    "image",
    "masks-desc",
    "masks-asc",
    "score-desc",
    "score-asc",
    "agreement-asc",
    "agreement-desc",
)
# What a page item tells of its image's agreement with the compared run.
AGREEMENT_FIELDS = ("agreement", "mean_iou", "matched", "masks_a", "masks_b", "only_a", "only_b")
HISTOGRAM_BINS = 40
THUMBNAIL_SIDE = 256
CACHED_FILTERS = 8
CACHED_PICTURES = 512


class ImageNotFoundError(KeyError):
    """No image with that id in the run."""


@dataclass(frozen=True)
class Sliders(MaskFilter):
    """The page's filter controls: a ``MaskFilter`` plus the prompted-run ones.

    Args:
        min_box_iou: prompted runs: floor on the mask box's IoU with its prompt box.
        categories: prompted runs: keep only these category ids.
        (the rest: see ``MaskFilter``)
    """

    min_box_iou: float | None = None
    categories: tuple[int, ...] | None = None

    def mask_filter(self) -> MaskFilter:
        """The ``MaskFilter`` these sliders stand for (box IoU and categories as ``where``)."""
        clauses = [self.where] if self.where else []
        if self.min_box_iou is not None:
            clauses.append(f"box_iou >= {self.min_box_iou:g}")
        if self.categories:
            clauses.append(f"category_id in [{', '.join(str(c) for c in self.categories)}]")
        where = " and ".join(clauses) or None
        if where:
            parse_where(where)
        shared = {field.name: getattr(self, field.name) for field in fields(MaskFilter)}
        return MaskFilter(**{**shared, "where": where})


def filter_flags(mask_filter: MaskFilter) -> list[str]:
    """``mask_filter`` as ``autolabel filter`` flags (the CLI's names, same values)."""
    flags = []
    for key, value in mask_filter.describe().items():
        flags += [
            f"--{key.replace('_', '-')}",
            f"{value:g}" if isinstance(value, float) else str(value),
        ]
    return flags


class RunBrowser:
    """Queries of one run for the view page, with caches per filter and per picture.

    Args:
        location: the run (local or object storage, with its options).
        storage_flags: ``--storage-option`` pairs to repeat in the filter command shown.
    """

    def __init__(self, location: Location, storage_flags: list[str] | None = None) -> None:
        self.location = location
        self.storage_flags = list(storage_flags or [])
        self.lock = threading.Lock()
        self.pictures: OrderedDict[tuple, bytes] = OrderedDict()
        self.agreements: dict[int, dict[str, Any]] = {}
        self.not_compared: dict[int, str] = {}
        self.reload()

    def reload(self) -> Run:
        """Reopen the run: shards committed since the last look join it."""
        self.run = open_run(self.location)
        table = self.run.images.to_table(
            columns=[
                "image_id",
                "image_uri",
                "width",
                "height",
                "num_masks",
                "status",
                "error",
                "shard",
            ]
        )
        self.images = table.sort_by("image_id")
        self.image_ids = self.images.column("image_id").to_numpy()
        self.row_of = {int(i): n for n, i in enumerate(self.image_ids)}
        self.kept_cache: OrderedDict[MaskFilter, dict[str, Any]] = OrderedDict()
        self.prompted = bool(self.run.manifest.get("prompts"))
        self.category_list = self.categories() if self.prompted else []
        self.agree_with(self.agreements, self.not_compared)
        return self.run

    def agree_with(self, rows: dict[int, dict[str, Any]], not_compared: dict[int, str]) -> None:
        """Take the per-image rows of a comparison with another run (``image_id`` → row of
        ``results.compare``) and why the other images have none (``image_id`` → reason):
        pages can then sort by agreement and show it."""
        self.agreements, self.not_compared = rows, not_compared
        self.agreement = np.full(len(self.image_ids), np.nan)  # a plain view: no Python loop
        if rows:
            ids = np.fromiter(rows, np.int64, len(rows))
            places = np.searchsorted(self.image_ids, ids)
            inside = places < len(self.image_ids)
            found = inside & (self.image_ids[np.where(inside, places, 0)] == ids)
            self.agreement[places[found]] = [rows[int(i)]["agreement"] for i in ids[found]]

    def categories(self) -> list[dict[str, Any]]:
        """The run's categories (id, name, masks), for prompted runs; [] otherwise."""
        table = self.run.masks.to_table(columns=["category_id", "category_name"])
        if table.num_rows == 0 or table.column("category_id").null_count == table.num_rows:
            return []
        groups = table.group_by(["category_id", "category_name"]).aggregate(
            [("category_id", "count")]
        )
        rows = groups.to_pylist()
        return sorted(
            (
                {
                    "id": r["category_id"],
                    "name": r["category_name"],
                    "masks": r["category_id_count"],
                }
                for r in rows
                if r["category_id"] is not None
            ),
            key=lambda r: r["id"],
        )

    def kept(self, sliders: Sliders) -> dict[str, Any]:
        """The kept masks' scores and per-image counts under ``sliders`` (cached)."""
        mask_filter = sliders.mask_filter()
        with self.lock:
            if mask_filter in self.kept_cache:
                self.kept_cache.move_to_end(mask_filter)
                return self.kept_cache[mask_filter]
        scores = kept_scores(self.run, mask_filter)
        per_image = scores.group_by("image_id").aggregate(
            [("image_id", "count"), ("predicted_iou", "mean")]
        )
        counts = np.zeros(len(self.image_ids), np.int64)
        means = np.full(len(self.image_ids), np.nan)
        if per_image.num_rows:
            rows = np.searchsorted(self.image_ids, per_image.column("image_id").to_numpy())
            counts[rows] = per_image.column("image_id_count").to_numpy()
            means[rows] = per_image.column("predicted_iou_mean").to_numpy()
        entry = {"filter": mask_filter, "scores": scores, "counts": counts, "means": means}
        with self.lock:
            self.kept_cache[mask_filter] = entry
            while len(self.kept_cache) > CACHED_FILTERS:
                self.kept_cache.popitem(last=False)
        return entry

    def summary(self, sliders: Sliders) -> dict[str, Any]:
        """Whole-run counts under ``sliders``, the histograms and the filter command."""
        everything, kept = self.kept(Sliders()), self.kept(sliders)
        statuses = self.images.column("status").to_numpy(zero_copy_only=False)
        return {
            "run": str(self.location),
            "shards": len(self.run.shards),
            "images": len(self.image_ids),
            "images_error": int((statuses == "error").sum()),
            "masks": everything["scores"].num_rows,
            "kept_masks": kept["scores"].num_rows,
            "kept_images": int((kept["counts"] > 0).sum()),
            "histograms": self.histograms(everything, kept),
            "command": self.command(kept["filter"]),
            "prompted": self.prompted,
            "categories": self.category_list,
        }

    def histograms(self, everything: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
        """The score histograms of all and of kept masks, kept with the filter's entry."""
        if "histograms" not in kept:
            kept["histograms"] = histograms(everything["scores"], kept["scores"], self.prompted)
        return kept["histograms"]

    def command(self, mask_filter: MaskFilter) -> str:
        """The ``autolabel filter`` command that writes the kept masks as a new run."""
        source = str(self.location).rstrip("/")
        storage = [arg for pair in self.storage_flags for arg in ("--storage-option", pair)]
        args = ["autolabel", "filter", source, f"{source}-filtered"]
        return shlex.join(args + filter_flags(mask_filter) + storage)

    def page(self, sliders: Sliders, sort: str, page: int, per_page: int) -> dict[str, Any]:
        """One page of images under ``sliders``, in ``sort`` order (see ``SORTS``)."""
        if sort not in SORTS:
            raise FilterError(f"sort must be one of {', '.join(SORTS)}")
        if sort.startswith("agreement") and not self.agreements:
            raise FilterError("sorting by agreement needs a second run: view A --compare B")
        kept = self.kept(sliders)
        order = sort_order(sort, kept["counts"], kept["means"], self.agreement)
        start = page * per_page
        rows = order[start : start + per_page]
        page_images = self.images.take(pa.array(rows, pa.int64())).to_pylist() if len(rows) else []
        items = [
            {
                "image_id": str(image["image_id"]),
                "name": image["image_uri"].rsplit("/", 1)[-1],
                "status": image["status"],
                "width": image["width"],
                "height": image["height"],
                "masks": int(image["num_masks"] or 0),
                "kept": int(kept["counts"][row]),
                "mean_iou": None if np.isnan(kept["means"][row]) else float(kept["means"][row]),
                "agreement": self.agreement_of(image["image_id"]),
                "not_compared": self.not_compared.get(image["image_id"]),
            }
            for row, image in zip(rows, page_images, strict=True)
        ]
        return {
            "page": page,
            "per_page": per_page,
            "pages": max(1, -(-len(order) // per_page)),
            "images": items,
            "kept_on_page": sum(item["kept"] for item in items),
        }

    def agreement_of(self, image_id: int) -> dict[str, Any] | None:
        """An image's agreement with the compared run (None: not compared, or not in both)."""
        row = self.agreements.get(image_id)
        return {key: row[key] for key in AGREEMENT_FIELDS} if row else None

    def image_row(self, image_id: int) -> dict[str, Any]:
        """The run's row of one image (raises ``ImageNotFoundError``)."""
        if image_id not in self.row_of:
            raise ImageNotFoundError(image_id)
        return self.images.slice(self.row_of[image_id], 1).to_pylist()[0]

    def pixels(self, image: dict[str, Any]) -> np.ndarray:
        """An image's pixels at the size its masks were made at."""
        settings = self.run.manifest.get("config", {}).get("image", {})
        return load_image(
            self.run.location.at(image["image_uri"]),
            max_short_side=settings.get("max_short_side", 0),
            max_pixels=settings.get("max_pixels", 0),
        ).pixels

    def picture(self, image_id: int, sliders: Sliders | None, side: int | None) -> bytes:
        """A PNG of one image: with its kept masks drawn (``sliders``) or plain (None),
        scaled down to ``side`` pixels at most (None: full size). Cached."""
        image = self.image_row(image_id)
        mask_filter = sliders.mask_filter() if sliders else None
        key = (image_id, mask_filter, side)
        with self.lock:
            if key in self.pictures:
                self.pictures.move_to_end(key)
                return self.pictures[key]
        try:
            pixels = self.pixels(image)
        except ImageReadError as error:  # gone, or never readable: say so in its place
            return placeholder(str(error), side or min(max(image["width"] or 0, 256), 1024))
        if mask_filter is not None and image["status"] == "ok":
            rows = image_mask_rows(self.run, image, mask_filter)
            pixels = draw_overlay(pixels, [decode_mask(row) for row in rows])
        picture = Image.fromarray(pixels)
        if side:
            picture.thumbnail((side, side))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        with self.lock:
            self.pictures[key] = buffer.getvalue()
            while len(self.pictures) > CACHED_PICTURES:
                self.pictures.popitem(last=False)
        return buffer.getvalue()

    def image_masks(self, image_id: int, sliders: Sliders) -> dict[str, Any]:
        """One image's kept masks: scores, boxes and outlines (SVG paths in image pixels)."""
        return self.image_detail(image_id, sliders)[0]

    def image_detail(self, image_id: int, sliders: Sliders) -> tuple[dict[str, Any], list[dict]]:
        """``image_masks`` and the mask rows it was made from (in the same order)."""
        image = self.image_row(image_id)
        rows = (
            image_mask_rows(self.run, image, sliders.mask_filter())
            if image["status"] == "ok"
            else []
        )
        masks = [
            {
                "mask_index": row["mask_index"],
                "predicted_iou": row["predicted_iou"],
                "stability_score": row["stability_score"],
                "area": row["area"],
                "bbox": row["bbox"],
                "box_iou": row.get("box_iou"),
                "category": row.get("category_name"),
                "path": outline_path(decode_mask(row)),
            }
            for row in rows
        ]
        detail = {
            "image_id": str(image_id),
            "name": image["image_uri"].rsplit("/", 1)[-1],
            "width": image["width"],
            "height": image["height"],
            "status": image["status"],
            "error": image["error"],
            "masks": masks,
        }
        return detail, rows


def sort_order(
    sort: str, counts: np.ndarray, means: np.ndarray, agreement: np.ndarray | None = None
) -> np.ndarray:
    """Row order of the images for ``sort`` (ties keep image-id order). By agreement, images
    the compared run lacks come last either way."""
    rows = np.arange(len(counts))
    if sort == "image":
        return rows
    if sort.startswith("agreement"):
        missing = np.isnan(agreement)
        key = np.nan_to_num(agreement, nan=0.0)
        return np.lexsort((rows, -key if sort.endswith("desc") else key, missing))
    key = counts if sort.startswith("masks") else np.nan_to_num(means, nan=-1.0)
    return np.lexsort((rows, -key if sort.endswith("desc") else key))


def histograms(everything: pa.Table, kept: pa.Table, prompted: bool) -> dict[str, Any]:
    """Histograms of the scores (all masks and kept masks) on shared bins."""
    columns = ["predicted_iou", "stability_score"] + (["box_iou"] if prompted else [])
    result: dict[str, Any] = {}
    for column in columns:
        # From the lowest score (in steps of 0.05) to 1: a run thresholded at 0.8 at
        # generation keeps all its bins for the scores it has.
        values = pc.drop_null(everything.column(column))
        low = float(pc.min(values).as_py() or 0.0) if len(values) else 0.0
        edges = np.linspace(min(0.95, np.floor(max(low, 0.0) * 20) / 20), 1.0, HISTOGRAM_BINS + 1)
        result[column] = {
            "edges": edges.round(4).tolist(),
            "all": counts_in(everything, column, edges),
            "kept": counts_in(kept, column, edges),
        }
    edges = np.linspace(0.0, 6.0, HISTOGRAM_BINS + 1)  # log10 of the area, 1 px to 1 Mpx
    result["log10_area"] = {
        "edges": edges.round(4).tolist(),
        "all": counts_in(everything, "area", edges, log=True),
        "kept": counts_in(kept, "area", edges, log=True),
    }
    return result


def counts_in(table: pa.Table, column: str, edges: np.ndarray, log: bool = False) -> list[int]:
    """Histogram counts of one column (nulls left out), values clipped into the edges."""
    values = pc.drop_null(table.column(column)).to_numpy().astype(np.float64)
    if log:
        values = np.log10(np.maximum(values, 1.0))
    return np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0].tolist()


def outline_path(mask: np.ndarray) -> str:
    """An SVG path (even-odd fill) tracing a binary mask's outer and hole boundaries."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parts = []
    for contour in contours:
        points = contour.reshape(-1, 2)
        if len(points) == 0:
            continue
        coords = " ".join(f"{x + 0.5:g},{y + 0.5:g}" for x, y in points)
        parts.append(f"M{coords}Z")
    return "".join(parts)
