"""Two runs over the same images, compared mask by mask (``autolabel compare``).

Each image's masks in run A are matched one to one with its masks in run B (identical masks
first, then mutual best IoU: the matching the parity tests use); a pair counts as matched when
its IoU reaches the ``--iou`` bound. The work goes shard by shard of A (here or as Ray tasks);
B's rows for those images are read with a pushed-down filter, so the two runs may be sharded
differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.core.errors import OperationError
from pipeline.core.executor import ShardPool
from pipeline.core.guard import check_apart
from pipeline.core.matching import match
from pipeline.core.storage import Location, as_location
from pipeline.results.dataset import (
    Run,
    masks_by_image,
    open_run,
    shard_images,
    shard_masks,
)
from pipeline.results.stats import without_nan

MASK_COLUMNS = ["image_id", "mask_index", "segmentation", "predicted_iou", "stability_score"]
IOU_BINS = np.linspace(0.0, 1.0, 21)
# Not settings of the masks: where the run read and wrote, how its files are laid out, and
# its storage options (which may hold secrets).
NOT_SETTINGS = ("config.output", "config.storage", "prompts.source")

PER_IMAGE_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("masks_a", pa.int32()),
        ("masks_b", pa.int32()),
        ("matched", pa.int32()),
        ("mean_iou", pa.float64()),
        ("agreement", pa.float64()),
        ("only_a", pa.int32()),
        ("only_b", pa.int32()),
        ("max_predicted_iou_diff", pa.float64()),
        ("max_stability_diff", pa.float64()),
    ]
)


class CompareError(OperationError):
    """Two runs that cannot be compared; one line for the user (exit 1)."""


@dataclass
class Comparison:
    """Totals of a comparison (merged over shards).

    ``mean_iou`` averages the IoU of matched pairs; ``only_a``/``only_b`` count masks with no
    match at or above the bound; images count those ok in both runs, ``images_only_a``/
    ``images_only_b`` those ok in one only (their masks are not compared).
    """

    iou_bound: float = 0.5
    images: int = 0
    images_only_a: int = 0
    images_only_b: int = 0
    masks_a: int = 0
    masks_b: int = 0
    matched: int = 0
    iou_sum: float = 0.0
    only_a: int = 0
    only_b: int = 0
    count_mismatches: int = 0
    max_predicted_iou_diff: float = 0.0
    max_stability_diff: float = 0.0
    iou_histogram: list[int] = field(default_factory=lambda: [0] * (len(IOU_BINS) - 1))
    rows: list[dict[str, Any]] = field(default_factory=list)
    settings_diff: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def mean_iou(self) -> float:
        """Mean IoU of the matched pairs (1.0 when neither run has a mask to match)."""
        if self.matched == 0:
            return 1.0 if self.masks_a == self.masks_b == 0 else 0.0
        return self.iou_sum / self.matched

    def add_image(self, image: dict[str, Any], a: list[dict], b: list[dict]) -> None:
        """Add one image's two lists of mask rows."""
        pairs = [pair for pair in match(a, b) if pair[2] >= self.iou_bound]
        ious = np.array([iou for _, _, iou in pairs])
        diffs = {"predicted_iou": 0.0, "stability_score": 0.0}
        for i, j, _ in pairs:
            for key in diffs:
                diffs[key] = max(diffs[key], abs(a[i][key] - b[j][key]))
        self.images += 1
        self.masks_a, self.masks_b = self.masks_a + len(a), self.masks_b + len(b)
        self.matched += len(pairs)
        self.iou_sum += float(ious.sum())
        self.only_a += len(a) - len(pairs)
        self.only_b += len(b) - len(pairs)
        self.count_mismatches += int(len(a) != len(b))
        self.max_predicted_iou_diff = max(self.max_predicted_iou_diff, diffs["predicted_iou"])
        self.max_stability_diff = max(self.max_stability_diff, diffs["stability_score"])
        counts, _ = np.histogram(np.clip(ious, 0, 1), IOU_BINS)
        self.iou_histogram = [x + int(y) for x, y in zip(self.iou_histogram, counts, strict=True)]
        self.rows.append(
            {
                "image_id": image["image_id"],
                "image_uri": image["image_uri"],
                "masks_a": len(a),
                "masks_b": len(b),
                "matched": len(pairs),
                "mean_iou": float(ious.mean()) if len(pairs) else (1.0 if not a and not b else 0.0),
                "agreement": agreement(ious, len(a), len(b)),
                "only_a": len(a) - len(pairs),
                "only_b": len(b) - len(pairs),
                "max_predicted_iou_diff": diffs["predicted_iou"],
                "max_stability_diff": diffs["stability_score"],
            }
        )

    def merge(self, other: Comparison) -> None:
        """Add another shard's comparison (``images_only_b`` is counted over the whole runs,
        after the merge)."""
        for name in (
            "images",
            "images_only_a",
            "masks_a",
            "masks_b",
            "matched",
            "iou_sum",
            "only_a",
            "only_b",
            "count_mismatches",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_predicted_iou_diff = max(self.max_predicted_iou_diff, other.max_predicted_iou_diff)
        self.max_stability_diff = max(self.max_stability_diff, other.max_stability_diff)
        self.iou_histogram = [
            x + y for x, y in zip(self.iou_histogram, other.iou_histogram, strict=True)
        ]
        self.rows.extend(other.rows)

    def summary(self) -> dict[str, Any]:
        """The totals as plain numbers (no per-image rows)."""
        document = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("rows", "iou_sum")
        }
        return {**document, "mean_iou": self.mean_iou}

    @property
    def worst(self) -> list[dict[str, Any]]:
        """Per-image rows, the least agreeing first (see ``agreement``)."""
        return sorted(self.rows, key=lambda row: (row["agreement"], row["image_id"]))


def agreement(ious: np.ndarray, masks_a: int, masks_b: int) -> float:
    """One image's agreement: the matched pairs' IoU summed over the masks of the union
    (matched pairs once, unmatched masks of either run with IoU 0). 1 when both runs gave the
    same masks (or none); it falls both when matched masks differ and when one run has masks
    the other lacks, which the mean IoU of matched pairs alone does not show."""
    union = masks_a + masks_b - len(ious)
    return float(ious.sum() / union) if union else 1.0


def shard_ok_images(location: Location, shard: str) -> dict[int, dict[str, Any]]:
    """A shard's ok images by id."""
    table = shard_images(location, shard).select(["image_id", "image_uri", "status"])
    return {row["image_id"]: row for row in table.to_pylist() if row["status"] == "ok"}


def compare_shard(
    a: Location, shard: str, b: Location, b_shards: list[str], in_both: list[int], bound: float
) -> Comparison:
    """Compare the images of A's ``shard`` with B's masks of them.

    Args:
        a, b: the two runs.
        shard: a shard of A.
        b_shards: the shards of B that hold images of ``shard`` (B may be sharded otherwise).
        in_both: the ids of ``shard``'s images that are ok in B too (the driver placed them).
        bound: the IoU a pair needs to count as matched.
    """
    images = shard_ok_images(a, shard)
    in_a = masks_by_image(shard_masks(a, shard, MASK_COLUMNS))
    wanted = ds.field("image_id").isin(pa.array(in_both, pa.int64()))
    in_b: dict[int, list[dict[str, Any]]] = {}
    for name in b_shards:
        for key, rows in masks_by_image(shard_masks(b, name, MASK_COLUMNS, wanted)).items():
            in_b.setdefault(key, []).extend(rows)
    comparison = Comparison(iou_bound=bound)
    comparison.images_only_a = len(images) - len(in_both)
    for image_id in in_both:
        comparison.add_image(images[image_id], in_a.get(image_id, []), in_b.get(image_id, []))
    return comparison


def image_shards(run: Run) -> dict[int, str]:
    """Where each of the run's ok images was written: ``{image_id: shard}`` (read from the
    shards' image files, so a copied or filtered run is placed by its own files)."""
    placed: dict[int, str] = {}
    for shard in run.shards:
        placed |= dict.fromkeys(shard_ok_images(run.location, shard), shard)
    return placed


def compare_runs(
    a: Location | str,
    b: Location | str,
    iou: float = 0.5,
    out: Location | str | None = None,
    pool: ShardPool | None = None,
) -> Comparison:
    """Compare run B with run A, image by image; with ``out``, write the report there.

    Args:
        a, b: the runs (paths, URIs or ``Location`` s; B opens with A's storage options).
        iou: the IoU at or above which a matched pair of masks counts as the same mask.
        out: a folder for ``compare.json``, ``images.parquet`` (one row per image in both)
            and ``iou.png`` (the matched pairs' IoU histogram).
        pool: where the shards are compared (default: this process; ``ShardPool(True)``:
            Ray tasks, one per shard of A).
    """
    a = as_location(a)
    b = as_location(b, a.options)
    folder = as_location(out, a.options) if out else None
    if folder is not None:
        check_apart(folder, {"run A": a, "run B": b}, inside_ok=False, flag="--out")
    run_a, run_b = open_run(a), open_run(b)
    placed_a, placed_b = image_shards(run_a), image_shards(run_b)
    needed: dict[str, set[str]] = {shard: set() for shard in run_a.shards}
    in_both: dict[str, list[int]] = {shard: [] for shard in run_a.shards}
    for image_id, shard in sorted(placed_a.items()):  # B's shards that hold A's images
        if image_id in placed_b:
            needed[shard].add(placed_b[image_id])
            in_both[shard].append(image_id)
    tasks = [(a, s, b, sorted(needed[s]), in_both[s], iou) for s in run_a.shards]
    total = Comparison(iou_bound=iou)
    for part in (pool or ShardPool()).map(compare_shard, iter(tasks), len(tasks), "compare"):
        total.merge(part)
    total.images_only_b = len(set(placed_b) - set(placed_a))
    if total.images == 0:
        raise CompareError(
            f"{a} and {b} have no labelled image in common ({len(placed_a)} and "
            f"{len(placed_b)} ok images; images are paired by their URI)"
        )
    total.rows.sort(key=lambda row: row["image_id"])
    total.settings_diff = settings_diff(run_a.manifest, run_b.manifest)
    if folder is not None:
        write_report(total, folder, str(a), str(b))
    return total


def write_report(comparison: Comparison, folder: Location, a: str, b: str) -> None:
    """``compare.json``, ``images.parquet`` and ``iou.png`` in ``folder``."""
    document = {"a": a, "b": b, **comparison.summary()}
    payload = json.dumps(without_nan(document), indent=2).encode()
    folder.join("compare.json").write_atomic(lambda f: f.write(payload))
    table = pa.Table.from_pylist(comparison.rows, schema=PER_IMAGE_SCHEMA)
    folder.join("images.parquet").write_atomic(lambda f: pq.write_table(table, f))
    plot_histogram(comparison, folder.join("iou.png"))


def plot_histogram(comparison: Comparison, path: Location) -> None:
    """The matched pairs' IoU histogram, with the bound and the unmatched counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 4))
    centres = (IOU_BINS[:-1] + IOU_BINS[1:]) / 2
    ax.bar(centres, comparison.iou_histogram, width=0.045)
    ax.axvline(comparison.iou_bound, color="grey", linestyle="--", label="--iou")
    ax.set_xlabel("IoU of matched mask pairs")
    ax.set_ylabel("pairs")
    ax.set_title(
        f"{comparison.matched} matched, {comparison.only_a} only in A, "
        f"{comparison.only_b} only in B; mean IoU {comparison.mean_iou:.3f}"
    )
    ax.legend()
    figure.tight_layout()
    path.write_atomic(lambda f: figure.savefig(f, format="png", dpi=100))
    plt.close(figure)


def settings_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[Any]]:
    """The settings that differ between two runs' manifests: ``{dotted.key: [a, b]}`` over
    the resolved config, the model it loaded and the package versions (where the runs read
    and wrote, and their storage options, left out)."""
    flat_a, flat_b = (
        flatten({k: m.get(k) for k in ("config", "model", "versions", "prompts")}) for m in (a, b)
    )
    return {
        key: [flat_a.get(key), flat_b.get(key)]
        for key in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(key) != flat_b.get(key) and not key.startswith(NOT_SETTINGS)
    }


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{dotted.key: leaf}``."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= flatten(value, f"{prefix}{key}.")
    return flat


def comparison_table(comparison: Comparison, title: str, worst: int = 5):
    """The terminal report (a rich Table): totals, the settings that differ, the images that
    agree least."""
    from rich.table import Table

    c = comparison
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    for name, value in (
        ("images in both (ok)", c.images),
        ("images only in A / only in B", f"{c.images_only_a} / {c.images_only_b}"),
        ("masks in A / in B", f"{c.masks_a} / {c.masks_b}"),
        (f"matched pairs (IoU ≥ {c.iou_bound:g})", c.matched),
        ("mean IoU of matched pairs", f"{c.mean_iou:.4f}"),
        ("masks only in A / only in B", f"{c.only_a} / {c.only_b}"),
        ("images whose mask count differs", c.count_mismatches),
        ("max |Δ predicted IoU| (matched)", f"{c.max_predicted_iou_diff:.4f}"),
        ("max |Δ stability| (matched)", f"{c.max_stability_diff:.4f}"),
    ):
        table.add_row(name, str(value))
    for key, (left, right) in c.settings_diff.items():
        table.add_row(f"setting {key}", f"{left} → {right}")
    for row in c.worst[:worst]:
        if row["agreement"] < 1.0:
            table.add_row(
                f"image {row['image_uri'].rsplit('/', 1)[-1]}",
                f"agreement {row['agreement']:.3f} (IoU {row['mean_iou']:.3f}, only A "
                f"{row['only_a']}, only B {row['only_b']})",
            )
    return table
