"""How ``autolabel view`` scales with the run: each request of the page, timed on synthetic runs
of growing size (``benchmarks.synthetic_run``), in one process, as the server answers them.

    python -m benchmarks.view_bench --images 100 10000 100000 --out benchmarks/results/view.md
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.report import report
from benchmarks.synthetic_run import write_synthetic_run
from pipeline.core.storage import Location
from pipeline.web.browse import RunBrowser, Sliders

STEPS = (
    "open the run",
    "counts + histograms, no filter",
    "counts + histograms, IoU ≥ 0.9 (new filter)",
    "same filter again (cached)",
    "first page of 24",
    "last page of 24",
    "sorted by kept masks, first page",
    "a thumbnail (cold)",
    "one image's masks as outlines",
)


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """Milliseconds of one call (its result JSON-encoded, as the server sends it)."""
    start = time.perf_counter()
    result = call()
    if not isinstance(result, bytes | RunBrowser):
        json.dumps(result)
    return (time.perf_counter() - start) * 1000, result


def measure(run: str) -> list[float]:
    """The page's requests on one run, in the order a user makes them."""
    times = []
    t, browser = timed(lambda: RunBrowser(Location(run)))
    times.append(t)
    strict = Sliders(min_predicted_iou=0.9)
    times.append(timed(lambda: browser.summary(Sliders()))[0])
    times.append(timed(lambda: browser.summary(strict))[0])
    times.append(timed(lambda: browser.summary(strict))[0])
    times.append(timed(lambda: browser.page(strict, "image", 0, 24))[0])
    last = browser.page(strict, "image", 0, 24)["pages"] - 1
    times.append(timed(lambda: browser.page(strict, "image", last, 24))[0])
    t, page = timed(lambda: browser.page(strict, "masks-desc", 0, 24))
    times.append(t)
    image_id = int(page["images"][0]["image_id"])
    times.append(timed(lambda: browser.picture(image_id, strict, 256))[0])
    times.append(timed(lambda: browser.image_masks(image_id, strict))[0])
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[100, 10_000, 100_000])
    parser.add_argument("--masks-per-image", type=int, default=10)
    parser.add_argument("--out", help="write the markdown table here too")
    args = parser.parse_args(argv)
    columns = []
    for images in args.images:
        with tempfile.TemporaryDirectory() as folder:
            run = str(Path(folder) / "run")
            counts = write_synthetic_run(run, images, args.masks_per_image)
            columns.append((counts, measure(run)))
            print(f"{images} images, {counts['masks']} masks: done", flush=True)
    header = " | ".join(f"{c['images']:,} img / {c['masks']:,} masks" for c, _ in columns)
    lines = [f"| request (ms) | {header} |", "|---" * (len(columns) + 1) + "|"]
    for i, step in enumerate(STEPS):
        lines.append(f"| {step} | " + " | ".join(f"{t[i]:,.0f}" for _, t in columns) + " |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append(f"\npeak memory of the process (all runs): {peak:,.0f} MB")
    report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
