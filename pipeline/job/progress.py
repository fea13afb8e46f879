"""What the user watches of a run: the workers' running counts (for the progress bar,
``core.executor.Progress``) and the summary table after it."""

from __future__ import annotations

from typing import Any

import ray
from rich.table import Table


@ray.remote(num_cpus=0)
class ProgressTracker:
    """Images and masks done in each running shard, as reported by the workers."""

    def __init__(self) -> None:
        self.shards: dict[str, tuple[int, int]] = {}

    def report(self, shard: str, images: int, masks: int) -> None:
        """A worker's latest counts for ``shard`` (a retry overwrites the failed attempt's)."""
        self.shards[shard] = (images, masks)

    def forget(self, shard: str) -> None:
        """Drop a shard that finished (the driver counts it) or failed (it will restart)."""
        self.shards.pop(shard, None)

    def totals(self, running: list[str]) -> tuple[int, int]:
        """Images and masks done so far in the given running shards."""
        counts = [self.shards.get(name, (0, 0)) for name in running]
        return sum(i for i, _ in counts), sum(m for _, m in counts)


def summary_table(summary: Any) -> Table:
    """The end-of-run table: images ok/failed, masks, throughput, shards."""
    table = Table(title="autolabel run", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    rate = summary.images_this_run / summary.seconds if summary.seconds else 0.0
    mask_rate = summary.masks_this_run / summary.seconds if summary.seconds else 0.0
    per_image = summary.masks / summary.ok if summary.ok else 0.0
    rows = [
        ("images ok", f"{summary.ok}"),
        ("images failed", images_failed(summary)),
        ("masks", f"{summary.masks} ({per_image:.1f} per image)"),
        ("this run", f"{summary.images_this_run} images in {summary.seconds:.1f} s"),
        ("throughput", f"{rate:.2f} images/s, {mask_rate:.1f} masks/s"),
        ("shards", f"{summary.shards_done} done, {summary.shards_skipped} already committed"),
        ("nodes", f"{summary.nodes} Ray node(s) wrote this run's shards"),
    ]
    if summary.prompts:
        found = summary.prompts
        line = f"{found['matched']} matched, {found['unmatched']} for images not in the input"
        unknown = found.get("unknown_categories") or {"count": 0}
        if unknown["count"]:
            line += (
                f", {unknown['count']} with a category id the file does not name "
                f"(e.g. {unknown['examples'][0]})"
            )
        rows.append(("prompts", line))
    if summary.retries:
        rows.append(("retried shards", f"{summary.retries} (a worker died or a shard raised)"))
    if summary.failed_shards:
        failed = sorted(summary.failed_shards)
        shown = ", ".join(failed[:10]) + (
            f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        )
        rows.append(("FAILED shards", shown))
        rows.append(("reason", summary.fatal or summary.failed_shards[failed[0]]))
    elif summary.fatal:
        rows.append(("FAILED", summary.fatal))
    if summary.over_budget:
        rows.append(("FAILED: error rows", summary.over_budget))
    for row in rows:
        table.add_row(*row)
    return table


def images_failed(summary: Any) -> str:
    """``3 (read 2, generation 1)``."""
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(summary.error_kinds.items()))
    return f"{summary.errors} ({kinds})" if kinds else f"{summary.errors}"
