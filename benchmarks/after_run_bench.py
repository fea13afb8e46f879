"""After-the-run throughput, one process vs Ray tasks on the same machine: ``stats``, a score
``filter``, ``export`` (coco, png label maps, cutouts of the best two masks per image) and
``compare`` with a second run of other masks over the same images, over a synthetic run (built
here, not committed).

    python -m benchmarks.after_run_bench --images 500000 --out benchmarks/results/after_run.md
    python -m benchmarks.after_run_bench --images 100000 --only compare png cutouts

The run has ~10 masks per image (``benchmarks.synthetic_run``); masks/s counts the run's masks
read per second of the command (the export's file is written to a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.report import report
from benchmarks.synthetic_run import SCENES, write_synthetic_run
from pipeline.core.executor import ShardPool
from pipeline.core.storage import Location
from pipeline.results.compare import compare_runs
from pipeline.results.export import export_coco
from pipeline.results.filters import MaskFilter, filter_run
from pipeline.results.maps import export_cutouts, export_png
from pipeline.results.stats import run_stats


def commands(
    run: Location, other: Location, scratch: Path
) -> dict[str, Callable[[ShardPool, str], object]]:
    """Each measured command, writing into ``scratch`` under a name per pool (``other``: a run
    of other masks over the same images, for ``compare``)."""
    strict = MaskFilter(min_predicted_iou=0.9)
    return {
        "stats": lambda pool, name: run_stats(run, pool=pool),
        "filter --min-predicted-iou 0.9": lambda pool, name: filter_run(
            run, Location(str(scratch / f"filtered-{name}")), strict, pool=pool
        ),
        "export --format coco": lambda pool, name: export_coco(
            run, Location(str(scratch / f"coco-{name}.json")), pool=pool
        ),
        "export --format png": lambda pool, name: export_png(
            run, Location(str(scratch / f"png-{name}")), pool=pool
        ),
        "export --format cutouts --top-k 2": lambda pool, name: export_cutouts(
            run, Location(str(scratch / f"cutouts-{name}")), MaskFilter(top_k=2), pool=pool
        ),
        "compare A B": lambda pool, name: compare_runs(run, other, pool=pool),
    }


def unique_scenes(folder: Path, count: int) -> Path:
    """``count`` links to the sample scenes, in turn, so that each image row of the run has a
    file of its own (label maps and cut-outs are named by image, and are all written)."""
    scenes = sorted(SCENES.glob("*.png"))
    folder.mkdir()
    for number in range(count):
        (folder / f"img_{number:08d}.png").symlink_to(scenes[number % len(scenes)])
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500_000)
    parser.add_argument("--out", help="write the markdown table here too")
    parser.add_argument(
        "--only", nargs="*", help="measure the commands whose name holds one of these words"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        start = time.perf_counter()
        scenes = unique_scenes(scratch / "scenes", args.images)
        counts = write_synthetic_run(str(scratch / "run"), args.images, scenes=scenes)
        measured = commands(Location(str(scratch / "run")), Location(str(scratch / "b")), scratch)
        if args.only:
            measured = {k: v for k, v in measured.items() if any(w in k for w in args.only)}
        if any(command.startswith("compare") for command in measured):
            write_synthetic_run(str(scratch / "b"), args.images, seed=1, scenes=scenes)
        print(f"built {counts} in {time.perf_counter() - start:.0f} s", flush=True)
        pools = {"one process": ShardPool(), "Ray tasks": ShardPool(use_ray=True)}
        rows = []
        for command, call in measured.items():
            seconds = {}
            for name, pool in pools.items():
                start = time.perf_counter()
                call(pool, name.replace(" ", "-"))
                seconds[name] = time.perf_counter() - start
                print(f"{command}, {name}: {seconds[name]:.1f} s", flush=True)
            rows.append((command, seconds))
    masks = counts["masks"]
    lines = [
        f"{counts['images']:,} images, {masks:,} masks, {counts['shards']} shards; "
        f"{os.cpu_count()} CPUs (Ray: one task per shard, 1 CPU each)",
        "",
        "| command | one process (s) | masks/s | Ray tasks (s) | masks/s |",
        "|---|---|---|---|---|",
    ]
    for command, seconds in rows:
        one, ray_ = seconds["one process"], seconds["Ray tasks"]
        lines.append(
            f"| `{command}` | {one:.1f} | {masks / one:,.0f} | {ray_:.1f} | {masks / ray_:,.0f} |"
        )
    report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
