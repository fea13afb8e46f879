"""The second run of ``autolabel view A --compare B``: the comparison of ``autolabel compare``
behind the page, and one image's masks of both runs with their pairs.

The grid's agreement (and its sort, worst first) is that of the runs as written, computed once
when the page starts (and again on Reload) by ``results.compare.compare_runs``, so the page and
``autolabel compare`` give the same numbers. An opened image's pairs are matched again among
the masks the sliders keep, in both runs alike, so its outlines show what the filter leaves.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from pipeline.core.executor import ShardPool
from pipeline.core.matching import match
from pipeline.core.storage import Location, as_location
from pipeline.results.compare import Comparison, agreement, compare_runs
from pipeline.web.browse import ImageNotFoundError, RunBrowser, Sliders


class RunComparer:
    """Run A's browser, run B's, and the comparison of the two.

    Args:
        a: the browser of run A (the page's run).
        b: run B (path, URI or ``Location``; opened with A's storage options).
        iou: the IoU at or above which a pair of masks counts as the same mask.
        pool: where the comparison's shards go (default: this process).
    """

    def __init__(
        self,
        a: RunBrowser,
        b: Location | str,
        iou: float = 0.5,
        pool: ShardPool | None = None,
    ) -> None:
        self.a = a
        self.b = RunBrowser(as_location(b, a.location.options), a.storage_flags)
        self.iou = iou
        self.pool = pool
        self.compare()

    def compare(self) -> Comparison:
        """Compare the two runs as they are now; A's pages then show and sort by agreement,
        and say why an image was not compared."""
        self.comparison = compare_runs(self.a.location, self.b.location, self.iou, pool=self.pool)
        rows = {row["image_id"]: row for row in self.comparison.rows}
        self.a.agree_with(rows, self.not_compared(rows))
        return self.comparison

    def not_compared(self, rows: dict[int, dict]) -> dict[int, str]:
        """Why each of A's images without a comparison row has none: an error row in A or in
        B, or no such image in B."""
        status_a = self.a.images.column("status").to_pylist()
        status_b = self.b.images.column("status").to_pylist()
        reasons = {}
        for n, image_id in enumerate(self.a.image_ids.tolist()):
            if image_id in rows:
                continue
            if status_a[n] != "ok":
                reasons[image_id] = "error in A"
            elif image_id in self.b.row_of:
                reasons[image_id] = f"{status_b[self.b.row_of[image_id]]} in B"
            else:
                reasons[image_id] = "not in B"
        return reasons

    def reload(self) -> None:
        """Reopen both runs (shards committed since join) and compare them again."""
        self.a.reload()
        self.b.reload()
        self.compare()

    def summary(self) -> dict[str, Any]:
        """The comparison's totals and the settings that differ, for the page's header."""
        totals = self.comparison.summary()
        del totals["iou_histogram"]
        return {"b": str(self.b.location), **totals}

    def image(self, image_id: int, sliders: Sliders) -> dict[str, Any]:
        """One image in both runs: each run's kept masks (as ``RunBrowser.image_masks``), each
        mask's partner in the other run (``match``: its ``mask_index``, ``pair_iou``: their
        IoU; absent when it has none at or above the bound), the agreement of these masks and
        that of the whole runs. ``b`` is None when run B has no such image. The sliders keep
        B's masks as A's; a run B without prompts ignores the box IoU and category ones."""
        a, rows_a = self.a.image_detail(image_id, sliders)
        if not self.b.prompted:  # B has no box IoU nor categories to keep masks by
            sliders = replace(sliders, min_box_iou=None, categories=None)
        try:
            b, rows_b = self.b.image_detail(image_id, sliders)
        except ImageNotFoundError:
            b, rows_b = None, []
        pairs = [pair for pair in match(rows_a, rows_b) if pair[2] >= self.iou]
        for i, j, iou in pairs:
            a["masks"][i] |= {"match": rows_b[j]["mask_index"], "pair_iou": iou}
            b["masks"][j] |= {"match": rows_a[i]["mask_index"], "pair_iou": iou}
        ious = np.array([iou for _, _, iou in pairs])
        return {
            "a": a,
            "b": b,
            "shown": {
                "matched": len(pairs),
                "only_a": len(rows_a) - len(pairs),
                "only_b": len(rows_b) - len(pairs),
                "agreement": agreement(ious, len(rows_a), len(rows_b)),
            },
            "runs": self.a.agreement_of(image_id),
        }
