"""How planning scales: time and peak driver memory of ``plan_run`` over manifests of 100 k to
10 M URIs (the listing written into the output, no model loaded, no image read).

    python -m benchmarks.plan_bench --uris 100000 1000000 10000000 --out benchmarks/results/plan.md

Each size runs in a fresh process (peak RSS is the process's own): a dry run (``--dry-run``:
the plan, nothing written), a first plan, then a rerun over the same input (resume: relist and
compare), then an append of 1 % more URIs (a streaming merge with the run's listing files).

    python -m benchmarks.plan_bench --uris 10000000 --prompts 1000000 10000000 --dry-prompts 5000000

With ``--prompts``, each count of prompts is planned over a manifest of the largest ``--uris``
(a prompted run's first plan: listing, prompts streamed, matched and written as the run's
prompt files), from a Parquet table (``image_uri``, ``box``, ``category_id``, ``score``) and
from a COCO JSON (ten boxes an image); ``--dry-prompts`` adds dry runs with a table.
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


def write_prompt_table(path: Path, count: int, images: int, seed: int = 1) -> None:
    """``count`` box prompts over the first ``images`` URIs of ``write_manifest``, one row
    each, in random image order (a detector's dump), as Parquet."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    with pq.ParquetWriter(path, prompt_table_schema(pa)) as writer:
        for start in range(0, count, 1_000_000):
            size = min(1_000_000, count - start)
            numbers = pa.array(rng.integers(0, images, size))
            uris = pc.binary_join_element_wise(
                "s3://bucket/images/", pc.utf8_lpad(pc.cast(numbers, pa.string()), 10, "0"), ""
            )
            uris = pc.binary_join_element_wise(uris, ".jpg", "")
            flat = pa.array(rng.uniform(0, 500, size * 4).round(1))
            boxes = pa.ListArray.from_arrays(
                pa.array(np.arange(0, size * 4 + 1, 4, np.int32)), flat
            )
            table = pa.table(
                {
                    "image_uri": uris,
                    "box": boxes,
                    "category_id": pa.array(rng.integers(0, 80, size)),
                    "score": pa.array(rng.uniform(0.3, 1, size).round(3)),
                },
                schema=prompt_table_schema(pa),
            )
            writer.write_table(table, row_group_size=100_000)


def prompt_table_schema(pa):
    return pa.schema(
        [
            ("image_uri", pa.string()),
            ("box", pa.list_(pa.float64())),
            ("category_id", pa.int64()),
            ("score", pa.float64()),
        ]
    )


def write_coco(path: Path, count: int, seed: int = 2) -> None:
    """``count`` box annotations, ten an image, as a COCO JSON (the images' ``file_name`` is
    ``images/NNNNNNNNNN.jpg``, which ends the manifest's URIs)."""
    rng = np.random.default_rng(seed)
    images = max(1, count // 10)
    with path.open("w") as f:
        f.write('{"images": [')
        f.write(
            ",".join(f'{{"id": {n}, "file_name": "images/{n:010d}.jpg"}}' for n in range(images))
        )
        f.write(
            '], "categories": [' + ",".join(f'{{"id": {c}, "name": "c{c}"}}' for c in range(80))
        )
        f.write('], "annotations": [')
        for start in range(0, count, 1_000_000):
            size = min(1_000_000, count - start)
            owners, boxes = rng.integers(0, images, size), rng.uniform(0, 500, (size, 4)).round(1)
            categories = rng.integers(0, 80, size)
            f.write("," if start else "")
            f.write(
                ",".join(
                    f'{{"id": {start + k}, "image_id": {image}, "category_id": {category}, '
                    f'"bbox": [{b[0]}, {b[1]}, {b[2]}, {b[3]}], "score": 0.5}}'
                    for k, (image, category, b) in enumerate(
                        zip(owners.tolist(), categories.tolist(), boxes.tolist(), strict=True)
                    )
                )
            )
        f.write("]}")


def plan_once(
    manifest: str, output: str, append: bool, dry_run: bool = False, prompts: str | None = None
) -> dict:
    """One ``plan_run`` in this process: seconds, and what it planned."""
    from pipeline.core.config import load_config
    from pipeline.core.storage import Location
    from pipeline.job.runner import plan_run

    job = load_config(None, ["model.name=sam2-tiny-synthetic", "runtime.shard_size=1000"])
    start = time.perf_counter()
    plan = plan_run(
        job,
        Location(manifest),
        Location(output),
        append=append,
        dry_run=dry_run,
        prompts=Location(prompts) if prompts else None,
    )
    seconds = time.perf_counter() - start
    matched = (plan.manifest.get("prompts") or {}).get("matched")
    if dry_run:
        return {"seconds": seconds, "images": plan.num_images, "matched": matched}
    plan.lease.release()  # a plan not executed gives the output back
    if not append:  # stand in for execute(): the manifest is what a rerun compares with
        from pipeline.core.writer import RunLayout

        RunLayout(Location(output)).manifest.write_json_atomic(plan.manifest)
    return {"seconds": seconds, "images": plan.num_images, "matched": matched}


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
    result = plan_once(args.child[0], args.child[1], args.append, args.dry_run, args.prompts_file)
    result["peak_mb"] = peak_mb()
    result["after_imports_mb"] = before
    print(json.dumps(result))
    return 0


def measure(
    manifest: Path,
    output: Path,
    append: bool = False,
    dry_run: bool = False,
    prompts: Path | None = None,
) -> dict:
    """One plan in a fresh process: its seconds, counts and peak memory."""
    command = [sys.executable, "-m", "benchmarks.plan_bench", "--child", str(manifest), str(output)]
    command += ["--append"] if append else []
    command += ["--dry-run"] if dry_run else []
    command += ["--prompts-file", str(prompts)] if prompts else []
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uris", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--prompts", type=int, nargs="*", default=[], help="prompt counts")
    parser.add_argument("--dry-prompts", type=int, nargs="*", default=[], help="dry runs")
    parser.add_argument("--out", help="write the markdown table here too")
    parser.add_argument("--prompts-file", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--append", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    lines = listing_rows(args.uris) if not (args.prompts or args.dry_prompts) else []
    if args.prompts or args.dry_prompts:
        lines += prompt_rows(max(args.uris), args.prompts, args.dry_prompts)
    report(lines, args.out)
    return 0


def listing_rows(counts: list[int]) -> list[str]:
    """The planning table: dry run, first plan, rerun and append, per listing size."""
    lines = [
        "| URIs | dry run (s) | dry-run peak (MB) | first plan (s) | peak driver memory (MB) "
        "| rerun (s) | rerun peak (MB) | append 1 % (s) | append peak (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for count in counts:
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
    return lines


def prompt_rows(uris: int, counts: list[int], dry_counts: list[int]) -> list[str]:
    """The prompts table: a prompted first plan (or a dry run) over ``uris`` URIs."""
    lines = [
        "| URIs | prompts | from | plan | seconds | peak driver memory (MB) | matched |",
        "|---|---|---|---|---|---|---|",
    ]
    cases = [(n, kind, False) for n in counts for kind in ("table", "coco")]
    cases += [(n, "table", True) for n in dry_counts]
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "images.txt"
        write_manifest(manifest, 100)  # a first plan verifies the model's weights once
        measure(manifest, Path(folder) / "warm-up")
        write_manifest(manifest, uris)
        for count, kind, dry_run in cases:
            prompts = Path(folder) / ("prompts.parquet" if kind == "table" else "prompts.json")
            if kind == "table":
                write_prompt_table(prompts, count, uris)
            else:
                write_coco(prompts, count)
            output = Path(folder) / f"run-{count}-{kind}-{dry_run}"
            result = measure(manifest, output, dry_run=dry_run, prompts=prompts)
            prompts.unlink()
            lines.append(
                f"| {uris:,} | {count:,} | {'COCO JSON' if kind == 'coco' else 'Parquet table'} "
                f"| {'dry run' if dry_run else 'first plan'} | {result['seconds']:.1f} "
                f"| {result['peak_mb']:,.0f} | {result['matched']:,} |"
            )
            print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
