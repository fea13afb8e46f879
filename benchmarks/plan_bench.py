"""How planning scales: time and peak driver memory of ``plan_run`` over manifests of 100 k to
10 M URIs (the listing written into the output, no model loaded, no image read).

    python -m benchmarks.plan_bench --uris 100000 1000000 10000000 --out benchmarks/results/plan.md

Each size runs in a fresh process (peak RSS is the process's own): a dry run (``--dry-run``:
the plan, nothing written), a first plan, then a rerun over the same input (resume: relist and
compare), then an append of 1 % more URIs (a streaming merge with the run's listing files).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import report


def write_manifest(path: Path, count: int, start: int = 0, seed: int = 0) -> None:
    """``count`` URIs in shuffled order, one a line (as a crawler's dump would be)."""
    numbers = np.random.default_rng(seed).permutation(count) + start
    with path.open("w") as f:
        for chunk in range(0, count, 100_000):
            part = numbers[chunk : chunk + 100_000].tolist()
            f.write("".join(f"s3://bucket/images/{n:010d}.jpg\n" for n in part))


def plan_once(manifest: str, output: str, append: bool, dry_run: bool = False) -> dict:
    """One ``plan_run`` in this process: seconds, and what it planned."""
    from pipeline.core.config import load_config
    from pipeline.core.storage import Location
    from pipeline.job.runner import plan_run

    job = load_config(None, ["model.name=sam2-tiny-synthetic", "runtime.shard_size=1000"])
    start = time.perf_counter()
    plan = plan_run(job, Location(manifest), Location(output), append=append, dry_run=dry_run)
    seconds = time.perf_counter() - start
    if dry_run:
        return {"seconds": seconds, "images": plan.num_images, "todo": len(plan.todo)}
    plan.lease.release()  # a plan not executed gives the output back
    if not append:  # stand in for execute(): the manifest is what a rerun compares with
        from pipeline.core.writer import RunLayout

        RunLayout(Location(output)).manifest.write_json_atomic(plan.manifest)
    return {"seconds": seconds, "images": plan.num_images, "todo": len(plan.todo)}


def peak_mb() -> float:
    """This process's peak resident memory (``VmHWM``: its own, not the parent's before exec,
    which ``ru_maxrss`` keeps)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(args: argparse.Namespace) -> int:
    """The measured process: imports, then one plan; prints JSON."""
    import pipeline.job.runner  # noqa: F401 (imports are not the plan's memory)

    before = peak_mb()
    result = plan_once(args.child[0], args.child[1], args.append, args.dry_run)
    result["peak_mb"] = peak_mb()
    result["after_imports_mb"] = before
    print(json.dumps(result))
    return 0


def measure(manifest: Path, output: Path, append: bool = False, dry_run: bool = False) -> dict:
    command = [sys.executable, "-m", "benchmarks.plan_bench", "--child", str(manifest), str(output)]
    command += ["--append"] if append else []
    command += ["--dry-run"] if dry_run else []
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uris", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--out", help="write the markdown table here too")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--append", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    lines = [
        "| URIs | dry run (s) | dry-run peak (MB) | first plan (s) | peak driver memory (MB) "
        "| rerun (s) | rerun peak (MB) | append 1 % (s) | append peak (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for count in args.uris:
        with tempfile.TemporaryDirectory() as folder:
            manifest, output = Path(folder) / "images.txt", Path(folder) / "run"
            write_manifest(manifest, count)
            dry = measure(manifest, output, dry_run=True)
            assert not output.exists(), "a dry run writes nothing"
            first = measure(manifest, output)
            rerun = measure(manifest, output)
            with manifest.open("a") as f:
                f.writelines(f"s3://bucket/new/{n:010d}.jpg\n" for n in range(count // 100))
            grown = measure(manifest, output, append=True)
        lines.append(
            f"| {count:,} | {dry['seconds']:.1f} | {dry['peak_mb']:,.0f} "
            f"| {first['seconds']:.1f} | {first['peak_mb']:,.0f} "
            f"| {rerun['seconds']:.1f} | {rerun['peak_mb']:,.0f} "
            f"| {grown['seconds']:.1f} | {grown['peak_mb']:,.0f} |"
        )
        print(lines[-1], f"(after imports: {first['after_imports_mb']:,.0f} MB)", flush=True)
    report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
