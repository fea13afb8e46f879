"""``autolabel run`` as a user times it: the default generator against sam2's.

Writes unseen synthetic scenes, then runs the whole command once per generator
(``generator.impl=fast`` and ``generator.impl=reference``) on the shipped model, timing the
wall clock from the command's start to its exit (Ray and model start-up included), and
compares the two runs' masks image by image (pycocotools IoU of one-to-one matched masks).
Writes ``<out>.json`` and ``<out>.md``.

Usage: ``python benchmarks/cli_bench.py [--images 32] [--size 256] [--out PATH] [k=v ...]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.dataset import open_run  # noqa: E402
from pipeline.model.parity import Parity  # noqa: E402


def autolabel(*args: str) -> float:
    """Run the CLI from the project root; its wall-clock seconds (raises if it fails)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], check=True, cwd=ROOT)
    return time.perf_counter() - start


def masks_by_image(run: Path) -> dict[str, list[dict]]:
    """A run's mask records by image URI, in mask order."""
    dataset = open_run(str(run))
    uris = {r["image_id"]: r["image_uri"] for r in dataset.images.to_table().to_pylist()}
    found: dict[str, list[dict]] = {uri: [] for uri in uris.values()}
    table = dataset.masks.to_table(
        columns=["image_id", "mask_index", "segmentation", "predicted_iou", "stability_score"]
    )
    for row in sorted(table.to_pylist(), key=lambda r: (r["image_id"], r["mask_index"])):
        found[uris[row["image_id"]]].append(row)
    return found


def main(argv: list[str] | None = None) -> int:
    """Time both runs, compare their masks, write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=77_000, help="scenes unseen in training")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu_cli_256"))
    parser.add_argument("overrides", nargs="*", help="config overrides for both runs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        scenes = Path(tmp) / "scenes"
        autolabel(
            "synth", "--n", str(args.images), "--seed", str(args.seed),
            "--size", str(args.size), "--out", str(scenes),
        )  # fmt: skip
        seconds, runs = {}, {}
        for impl in ("reference", "fast"):
            runs[impl] = Path(tmp) / impl
            seconds[impl] = autolabel(
                "run", "--input", str(scenes / "images"), "--output", str(runs[impl]),
                "--no-progress", "model.name=sam2-tiny-synthetic", f"generator.impl={impl}",
                *args.overrides,
            )  # fmt: skip
        reference, fast = masks_by_image(runs["reference"]), masks_by_image(runs["fast"])
        parity = Parity()
        for uri, expected in reference.items():
            parity.add(expected, fast[uri])
    result = {
        "images": args.images,
        "size": args.size,
        "overrides": args.overrides,
        "seconds": seconds,
        "speedup": seconds["reference"] / seconds["fast"],
        "parity": parity.summary(),
    }
    table = "\n".join(
        [
            "| generator | wall s (start-up included) | img/s | speed-up |",
            "|---|---:|---:|---:|",
            *(
                f"| {impl} | {s:.1f} | {args.images / s:.3f} | {seconds['reference'] / s:.2f}× |"
                for impl, s in seconds.items()
            ),
            "",
            f"`autolabel run` on {args.images} unseen {args.size}-px synthetic scenes, "
            f"sam2-tiny-synthetic; the fast run's masks against the reference run's: mIoU "
            f"{parity.mean_iou:.4f}, {parity.count_mismatches}/{parity.images} images whose "
            f"mask count differs, max Δ predicted IoU {parity.max_predicted_iou_diff:.1e}",
        ]
    )
    print(table)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
