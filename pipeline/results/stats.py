"""What a run holds: counts, quantiles and distributions, as a table, JSON and PNG plots.

Everything streams through fixed-bin histograms (a few columns, batch by batch), so a run of a
billion masks needs no more memory than a small one; quantiles are read off the histograms
(to 1/1000 for scores, to 1 % for areas).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.executor import ShardPool
from pipeline.core.storage import Location, as_location
from pipeline.results.dataset import Run, open_run, shard_images, shard_masks

SCORE_BINS = np.linspace(0.0, 1.0, 1001)
LOG_AREA_BINS = np.linspace(0.0, 8.0, 801)  # log10(area) from 1 px to 100 Mpx
THRESHOLD_BINS = np.linspace(0.0, 1.0, 101)  # the survival grid (IoU × stability)
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
MAX_MASKS_PER_IMAGE = 4096


@dataclass
class RunStats:
    """Streaming accumulators over a run's mask and image rows."""

    images_ok: int = 0
    images_error: int = 0
    masks: int = 0
    iou: np.ndarray = field(default_factory=lambda: np.zeros(len(SCORE_BINS) - 1, np.int64))
    stability: np.ndarray = field(default_factory=lambda: np.zeros(len(SCORE_BINS) - 1, np.int64))
    log_area: np.ndarray = field(default_factory=lambda: np.zeros(len(LOG_AREA_BINS) - 1, np.int64))
    joint: np.ndarray = field(
        default_factory=lambda: np.zeros((len(THRESHOLD_BINS) - 1,) * 2, np.int64)
    )
    per_image: np.ndarray = field(
        default_factory=lambda: np.zeros(MAX_MASKS_PER_IMAGE + 1, np.int64)
    )
    # The run as a whole: planned and committed shards, and why it is unfinished (None: it
    # is complete).
    shards_planned: int = 0
    shards_committed: int = 0
    state: str = "complete"
    state_note: str | None = None

    def add_masks(self, iou: np.ndarray, stability: np.ndarray, area: np.ndarray) -> None:
        """Count one batch of mask rows."""
        self.masks += len(iou)
        self.iou += np.histogram(np.clip(iou, 0, 1), SCORE_BINS)[0]
        self.stability += np.histogram(np.clip(stability, 0, 1), SCORE_BINS)[0]
        logs = np.log10(np.maximum(area, 1).astype(np.float64))
        self.log_area += np.histogram(np.clip(logs, 0, LOG_AREA_BINS[-1]), LOG_AREA_BINS)[0]
        clipped = (np.clip(iou, 0, 1), np.clip(stability, 0, 1))
        self.joint += np.histogram2d(*clipped, bins=(THRESHOLD_BINS, THRESHOLD_BINS))[0].astype(
            np.int64
        )

    def add_images(self, status: list[str], num_masks: np.ndarray) -> None:
        """Count one batch of image rows."""
        ok = np.array([s == "ok" for s in status], dtype=bool)
        self.images_ok += int(ok.sum())
        self.images_error += int((~ok).sum())
        counts = np.minimum(num_masks[ok], MAX_MASKS_PER_IMAGE)
        self.per_image += np.bincount(counts, minlength=MAX_MASKS_PER_IMAGE + 1)

    def merge(self, other: RunStats) -> None:
        """Add another part's counts (histograms add exactly)."""
        self.images_ok += other.images_ok
        self.images_error += other.images_error
        self.masks += other.masks
        for name in ("iou", "stability", "log_area", "joint", "per_image"):
            getattr(self, name).__iadd__(getattr(other, name))

    def survival(self) -> np.ndarray:
        """``[i, j]`` = masks with IoU ≥ THRESHOLD_BINS[i] and stability ≥ THRESHOLD_BINS[j]."""
        return self.joint[::-1, ::-1].cumsum(0).cumsum(1)[::-1, ::-1]

    def summary(self) -> dict[str, Any]:
        """Counts and quantiles as plain data (the JSON and the table show this)."""
        area_q = quantiles(self.log_area, LOG_AREA_BINS)
        return {
            "images": {"ok": self.images_ok, "error": self.images_error},
            "masks": self.masks,
            "masks_per_image": {
                "mean": self.masks / self.images_ok if self.images_ok else 0.0,
                **quantiles(self.per_image, np.arange(MAX_MASKS_PER_IMAGE + 2) - 0.5, exact=True),
            },
            "predicted_iou": quantiles(self.iou, SCORE_BINS),
            "stability_score": quantiles(self.stability, SCORE_BINS),
            # NaN (no masks at all) stays NaN: the table shows "–"
            "area": {key: round(10**v) if v == v else v for key, v in area_q.items()},
        }


def quantiles(histogram: np.ndarray, edges: np.ndarray, exact: bool = False) -> dict[str, float]:
    """Quantiles read off a histogram (bin centres; integer bins with ``exact``)."""
    total = histogram.sum()
    if total == 0:
        return {f"p{round(q * 100)}": float("nan") for q in QUANTILES}
    cumulative = np.cumsum(histogram) / total
    centres = (edges[:-1] + edges[1:]) / 2
    result = {}
    for q in QUANTILES:
        index = int(np.searchsorted(cumulative, q))
        value = centres[min(index, len(centres) - 1)]
        result[f"p{round(q * 100)}"] = float(round(value) if exact else round(value, 4))
    return result


def shard_stats(source: Location, shard: str) -> RunStats:
    """One shard's statistics (a task of its own on a cluster)."""
    stats = RunStats()
    masks = shard_masks(source, shard, columns=["predicted_iou", "stability_score", "area"])
    stats.add_masks(
        masks.column("predicted_iou").to_numpy(),
        masks.column("stability_score").to_numpy(),
        masks.column("area").to_numpy(),
    )
    images = shard_images(source, shard)
    num_masks = images.column("num_masks").fill_null(0).to_numpy().astype(np.int64)
    stats.add_images(images.column("status").to_pylist(), num_masks)
    return stats


def collect(run: Run, pool: ShardPool | None = None) -> RunStats:
    """Count the run's score, area and image columns into a ``RunStats``, shard by shard.

    Args:
        run: the run.
        pool: where the shards are counted (default: this process).
    """
    pool = pool or ShardPool()
    total = RunStats()
    tasks = ((run.location, shard) for shard in run.shards)
    for stats in pool.map(shard_stats, tasks, len(run.shards), "stats"):
        total.merge(stats)
    return total


def run_stats(
    source: Location, out: Location | str | None = None, pool: ShardPool | None = None
) -> RunStats:
    """Collect a run's statistics; with ``out``, write ``stats.json`` and the PNG plots there.

    Args:
        source: the run.
        out: a folder (path, URI or ``Location``) for ``stats.json`` and the plots, or None.
        pool: where the shards are counted (default: this process; ``ShardPool(use_ray=True)``
            for the cluster).
    """
    run = open_run(source)
    stats = collect(run, pool)
    stats.shards_planned, stats.shards_committed = run.planned_shards, len(run.shards)
    stats.state, stats.state_note = run.state, run.state_note()
    if out:
        folder = as_location(out, source.options)
        document = {
            "run": str(source),
            "state": stats.state,
            "shards": {"planned": stats.shards_planned, "committed": stats.shards_committed},
            **stats.summary(),
            "survival": survival_table(stats),
        }
        payload = json.dumps(without_nan(document), indent=2).encode()
        folder.join("stats.json").write_atomic(lambda f: f.write(payload))
        write_plots(stats, folder)
    return stats


def without_nan(value: Any) -> Any:
    """``value`` with every NaN (a quantile of no masks) as None: JSON has no NaN, and strict
    readers (browsers, jq, DuckDB) reject the ``NaN`` Python writes."""
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nan(item) for item in value]
    return None if isinstance(value, float) and value != value else value


def survival_table(stats: RunStats) -> dict[str, Any]:
    """Masks kept for a grid of (IoU, stability) thresholds, every 0.05."""
    grid = stats.survival()
    steps = list(range(0, 101, 5))
    return {
        "thresholds": [s / 100 for s in steps],
        "kept": [[int(grid[i, j]) if i < 100 and j < 100 else 0 for j in steps] for i in steps],
        "rows": "predicted_iou threshold",
        "columns": "stability_score threshold",
    }


def write_plots(stats: RunStats, folder: Location) -> list[Location]:
    """Histograms (IoU, stability, log-area, masks per image) and the survival plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(10, 7))
    centres = (SCORE_BINS[:-1] + SCORE_BINS[1:]) / 2
    for ax, histogram, title in (
        (axes[0, 0], stats.iou, "predicted IoU"),
        (axes[0, 1], stats.stability, "stability score"),
    ):
        ax.bar(centres[::10], histogram.reshape(-1, 10).sum(1), width=0.01, align="center")
        ax.set_title(title)
        ax.set_ylabel("masks")
    area_centres = (LOG_AREA_BINS[:-1] + LOG_AREA_BINS[1:]) / 2
    axes[1, 0].bar(area_centres[::10], stats.log_area.reshape(-1, 10).sum(1), width=0.1)
    axes[1, 0].set_title("log10(area in pixels)")
    axes[1, 0].set_ylabel("masks")
    last = max(int(np.flatnonzero(stats.per_image).max(initial=0)) + 1, 2)
    axes[1, 1].bar(np.arange(last), stats.per_image[:last], width=1.0)
    axes[1, 1].set_title("masks per image")
    axes[1, 1].set_ylabel("images")
    figure.suptitle(f"{stats.masks} masks on {stats.images_ok} images")
    figure.tight_layout()
    distributions = folder.join("distributions.png")
    distributions.write_atomic(lambda f: figure.savefig(f, format="png", dpi=100))
    plt.close(figure)

    figure, ax = plt.subplots(figsize=(7, 5))
    grid = stats.survival()
    thresholds = THRESHOLD_BINS[:-1]
    for stability in (0.0, 0.5, 0.8, 0.9, 0.95):
        column = int(round(stability * 100))
        ax.plot(thresholds, grid[:, column], label=f"stability ≥ {stability:.2f}")
    ax.set_xlabel("predicted IoU threshold")
    ax.set_ylabel("masks kept")
    ax.set_title("masks kept as the thresholds rise")
    ax.legend()
    ax.grid(alpha=0.3)
    figure.tight_layout()
    survival = folder.join("survival.png")
    survival.write_atomic(lambda f: figure.savefig(f, format="png", dpi=100))
    plt.close(figure)
    return [distributions, survival]


def stats_table(stats: RunStats, title: str):
    """The terminal summary (a rich Table)."""
    from rich.table import Table

    summary = stats.summary()
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for q in QUANTILES:
        table.add_column(f"p{round(q * 100)}", justify="right")
    for name in ("masks_per_image", "predicted_iou", "stability_score", "area"):
        values = summary[name]
        table.add_row(name, *(format_number(values[f"p{round(q * 100)}"]) for q in QUANTILES))
    table.caption = (
        f"images ok {summary['images']['ok']}, error {summary['images']['error']}; "
        f"masks {summary['masks']} ({summary['masks_per_image']['mean']:.1f} per image)"
    )
    return table


def format_number(value: float) -> str:
    """Integers plainly, scores with 3 decimals."""
    if value != value:  # NaN
        return "–"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3f}"
