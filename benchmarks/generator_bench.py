"""Benchmark: the fast mask generator against sam2's stock one, and the pipeline's overhead.

Two modes, each writing ``<out>.json`` and ``<out>.md`` (a markdown table):

``generator``: the reference (sam2's ``SAM2AutomaticMaskGenerator``, float32) and one or more
variants of the fast generator run in one process, on the same images and weights, in
alternating rounds (reference, fast, …, reference, fast, …). Reports images/s of each, the
speed-up over the reference, parity with the reference (mean IoU of matched masks, images
whose mask count differs, largest score differences) and peak memory.

``pipeline``: the whole Ray pipeline (``autolabel run``, one actor, the same device) against a
bare loop of the same generator over the same images, already decoded in memory. The overhead
is the pipeline's steady-state time (its actor's seconds on its shards: reading, decoding,
labelling, writing Parquet) over the bare loop's; the Ray and model start-up is reported apart.

Examples::

    # CPU: micro SAM 2 (random weights) on synthetic scenes, default preset geometry
    python benchmarks/generator_bench.py generator --device cpu --images 8 --size 512

    # CUDA: SAM 2.1 Hiera-L layout, random weights, 1024 px, fp32, bf16 and compiled
    python benchmarks/generator_bench.py generator --device cuda \\
        --arch configs/sam2.1/sam2.1_hiera_l.yaml --size 1024 --images 24 \\
        --variants fast,fast-bf16,fast-bf16-compile

    python benchmarks/generator_bench.py pipeline --device cpu --images 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.core.config import JobConfig, load_config  # noqa: E402
from pipeline.core.storage import Location  # noqa: E402
from pipeline.model.parity import Parity  # noqa: E402
from pipeline.model.reference import MaskGenerator  # noqa: E402
from pipeline.model.registry import build_model, resolve_model, save_random_checkpoint  # noqa: E402
from pipeline.synthetic.scenes import make_scene  # noqa: E402

MICRO = str(ROOT / "configs/models/sam2.1_hiera_micro.yaml")
VARIANTS = {
    # name: (dtype, compile, tf32, decoder method)
    "fast": ("float32", False, False, "reassociated"),
    "fast-shared": ("float32", False, False, "shared"),  # the decoder before re-association
    "fast-tf32": ("float32", False, True, "reassociated"),
    "fast-compile": ("float32", True, False, "reassociated"),
    "fast-shared-compile": ("float32", True, False, "shared"),
    "fast-bf16": ("bfloat16", False, False, "reassociated"),
    "fast-bf16-compile": ("bfloat16", True, False, "reassociated"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["generator", "pipeline", "stages"])
    parser.add_argument("--arch", default=MICRO, help="model config; random weights")
    parser.add_argument("--checkpoint", help="weights for --arch (default: random, seed 0)")
    parser.add_argument("--image-size", type=int, help="run the model at this input size")
    parser.add_argument("--preset", default="default", help="config preset (default, sa1b)")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    parser.add_argument("--images", type=int, default=8, help="synthetic scenes to label")
    parser.add_argument("--size", type=int, default=512, help="scene side in pixels")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default="fast", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per generator")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's)")
    parser.add_argument("--name", help="a label for this configuration in the table")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/latest"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark, print its table and write the JSON and markdown files."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = [f"model.image_size={args.image_size}"] if args.image_size else []
    job = load_config(args.preset, [*args.set, *size])
    images = [make_scene(seed, args.size).image for seed in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or save_random_checkpoint(args.arch, f"{tmp}/random.pt")
        run = {
            "generator": generator_benchmark,
            "pipeline": pipeline_benchmark,
            "stages": stages_benchmark,
        }[args.mode]
        result = run(args, job, checkpoint, images, tmp)
    result["machine"] = machine(args.device)
    result["setup"] = {
        "name": args.name or f"{Path(args.arch).stem} {args.preset} {args.size}px",
        "arch": args.arch,
        "random_weights": args.checkpoint is None,
        "image_size": args.image_size,
        "preset": args.preset,
        "overrides": args.set,
        "images": args.images,
        "scene_px": args.size,
        "rounds": args.rounds,
        "points_per_side": job.amg.points_per_side,
        "crop_n_layers": job.amg.crop_n_layers,
    }
    table = markdown(result)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def load(args: argparse.Namespace, job: JobConfig, checkpoint: str) -> Any:
    """The benchmark's model on its device."""
    spec = resolve_model(None, args.arch, checkpoint, job.model.image_size)
    return build_model(spec, args.device)


def generator_benchmark(
    args: argparse.Namespace, job: JobConfig, checkpoint: str, images: list, tmp: str
) -> dict[str, Any]:
    """Reference and fast variants in alternating rounds over the same images."""
    from pipeline.model.factory import make_generator

    model = load(args, job, checkpoint)
    generators: dict[str, Callable[[list], list]] = {}
    reference = MaskGenerator(model, job.amg, dtype="float32")
    generators["reference"] = lambda batch: [
        outcome for _, outcome in reference.generate_many((None, image) for image in batch)
    ]
    for name in args.variants.split(","):
        dtype, job.generator.compile, job.generator.tf32, job.generator.decoder = VARIANTS[name]
        fast = make_generator(model, job.amg, job.generator, dtype, args.device)
        generators[name] = lambda batch, fast=fast: [
            records for _, records in fast.generate_many((None, image) for image in batch)
        ]
    # Warm-up: allocations, kernels, compilation; on CUDA a whole encoder batch (8 images),
    # so that cuDNN's autotuning of the batched shapes is not timed either.
    warm_up = images[: 8 if args.device.startswith("cuda") else 2]
    for run in generators.values():
        run(warm_up)
    seconds = {name: 0.0 for name in generators}
    peak = {name: 0.0 for name in generators}
    outputs: dict[str, list] = {}
    for round_index in range(args.rounds):
        for name, run in generators.items():
            elapsed, memory, outputs[name] = timed(run, images, args.device)
            seconds[name] += elapsed
            peak[name] = max(peak[name], memory)
            print(f"round {round_index + 1}: {name} {len(images) / elapsed:.3f} img/s", flush=True)
    rows = []
    for name in generators:
        parity = Parity()
        for expected, got in zip(outputs["reference"], outputs[name], strict=True):
            if not isinstance(expected, BaseException) and not isinstance(got, BaseException):
                parity.add(expected, got)  # failed images are counted apart
        rate = args.rounds * len(images) / seconds[name]
        rows.append(
            {
                "generator": name,
                "dtype": VARIANTS.get(name, ("float32",))[0],
                "compile": VARIANTS.get(name, ("float32", False))[1],
                "tf32": VARIANTS.get(name, ("float32", False, False))[2],
                "decoder": VARIANTS.get(name, (None, None, None, "sam2"))[3],
                "failed_images": sum(isinstance(o, BaseException) for o in outputs[name]),
                "first_error": next(
                    (str(o)[:200] for o in outputs[name] if isinstance(o, BaseException)), None
                ),
                "images_per_s": rate,
                "speedup": seconds["reference"] / seconds[name],
                "peak_memory_mb": peak[name],
                "masks_per_image": parity.candidate_masks / max(parity.images, 1),
                "parity": parity.summary(),
            }
        )
    return {"mode": "generator", "device": args.device, "rows": rows}


def stages_benchmark(
    args: argparse.Namespace, job: JobConfig, checkpoint: str, images: list, tmp: str
) -> dict[str, Any]:
    """Milliseconds per image of the fast generator's stages: encoder (one image, and the
    encoder batch), sam2's decoder against the fast one (shared image side, upscaling only
    for prompts that pass ``pred_iou_thresh``), and the whole image."""

    model = load(args, job, checkpoint)
    rows = []
    for name in args.variants.split(","):
        ms = stage_times(model, job, name, images, args.device)
        rows.append({"generator": name, "ms_per_image": ms})
        print(name, {k: round(v, 1) for k, v in ms.items()}, flush=True)
    return {"mode": "stages", "device": args.device, "rows": rows}


def stage_times(model: Any, job: JobConfig, name: str, images: list, device: str) -> dict:
    """Milliseconds per image of each stage for one fast-generator variant."""
    from pipeline.model.fast import FastMaskGenerator

    dtype, compiled, tf32, method = VARIANTS[name]
    ppb = job.generator.points_per_batch or (256 if device.startswith("cuda") else 32)
    fast = FastMaskGenerator(model, job.amg, dtype, ppb, 8, compiled, tf32, method)
    features = fast.encode([images[0]])[0][0][2]
    points = torch.rand(ppb, 2, device=device) * model.image_size
    batches = job.amg.points_per_side**2 / ppb
    stages = {
        "encode_1": lambda: fast.encode(images[:1]),
        "encode_8_per_image": lambda: fast.encode(images[:8]),
        "decode_stock": lambda: fast.crop.predict(features, points, job.amg.multimask_output),
        "decode_fast": lambda: fast.crop.predict_kept(features, points),
        "generate": lambda: fast.generate(images[0]),
    }
    ms = {key: best_ms(run, device) for key, run in stages.items()}
    ms["encode_8_per_image"] /= 8
    ms["decode_stock"] *= batches
    ms["decode_fast"] *= batches
    return ms


def best_ms(run: Callable[[], Any], device: str, repeats: int = 3) -> float:
    """The fastest of a few timed calls after one warm-up, in milliseconds."""
    run()
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def timed(run: Callable[[list], list], images: list, device: str) -> tuple[float, float, list]:
    """Seconds and peak memory (MB: CUDA allocations, or the process's RSS on the CPU)."""
    sampler = MemorySampler(device)
    with sampler:
        start = time.perf_counter()
        output = run(images)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return elapsed, sampler.peak_mb, output


class MemorySampler:
    """Peak memory while a block runs: CUDA's allocator peak, or sampled RSS on the CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak_mb = 0.0
        self.running = False
        self.thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.running = True
            self.thread = threading.Thread(target=self.sample, daemon=True)
            self.thread.start()
        return self

    def sample(self) -> None:
        import psutil

        process = psutil.Process()
        while self.running:
            self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.running = False
            if self.thread is not None:
                self.thread.join()


def pipeline_benchmark(
    args: argparse.Namespace, job: JobConfig, checkpoint: str, images: list, tmp: str
) -> dict[str, Any]:
    """``autolabel run`` with one actor against a bare read-decode-generate loop."""
    from PIL import Image

    from pipeline.core.imageio import load_image
    from pipeline.job.runner import execute, plan_run
    from pipeline.model.factory import default_dtype, make_generator

    folder = Path(tmp) / "images"
    folder.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"scene_{index:05d}.png")
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    overrides = [
        f"model.config={args.arch}",
        f"model.checkpoint={checkpoint}",
        "model.name=null",
        f"runtime.device={device}",
        "runtime.num_actors=1",
        f"runtime.shard_size={max(1, len(images) // 4)}",
        f"runtime.cpus_per_actor={max(1, os.cpu_count() or 1)}",
        *args.set,
    ]
    if job.model.image_size:
        overrides.append(f"model.image_size={job.model.image_size}")
    pipeline_job = load_config(args.preset, overrides)
    model = load(args, pipeline_job, checkpoint)
    dtype = pipeline_job.model.dtype or default_dtype(device)
    generator = make_generator(model, pipeline_job.amg, pipeline_job.generator, dtype, device)
    files = sorted(str(p) for p in folder.iterdir())

    decoded = [
        load_image(Location(f)).pixels for f in files
    ]  # the bare loop is the generator alone

    def bare_loop() -> None:
        for _ in generator.generate_many((None, pixels) for pixels in decoded):
            pass

    bare_loop()  # warm-up
    bare = min(timed(lambda _: bare_loop(), [], args.device)[0] for _ in range(args.rounds))
    start = time.perf_counter()
    places = (Location(str(folder)), Location(str(Path(tmp) / "out")))
    summary = execute(plan_run(pipeline_job, *places), False)
    total = time.perf_counter() - start
    steady = shard_seconds(Path(tmp) / "out")
    import ray

    ray.shutdown()
    return {
        "mode": "pipeline",
        "device": args.device,
        "images": len(files),
        "ok": summary.ok,
        "bare_loop_s": bare,
        "pipeline_steady_s": steady,
        "pipeline_total_s": total,
        "startup_s": total - steady,
        "overhead": steady / bare - 1,
    }


def shard_seconds(output: Path) -> float:
    """Seconds the actor spent on its shards (labelling and committing), from their markers."""
    return sum(json.loads(p.read_text())["seconds"] for p in (output / "_shards").glob("*.json"))


def machine(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else info["cpu"]
    except OSError:
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table, with the machine and setup under it."""
    setup, host = result["setup"], result["machine"]
    where = host.get("gpu") or f"{host['cpu']} ({host['torch_threads']} threads)"
    caption = (
        f"{setup['name']}: {setup['images']} synthetic {setup['scene_px']}-px scenes, "
        f"{setup['points_per_side']}x{setup['points_per_side']} points, "
        f"crop layers {setup['crop_n_layers']}, "
        f"{'random' if setup['random_weights'] else 'trained'} weights; "
        f"{result['device']} on {where}, torch {host['torch']}, {host['date']}"
    )
    if result["mode"] == "stages":
        keys = list(result["rows"][0]["ms_per_image"])
        lines = [
            "| generator | " + " | ".join(f"{k} ms" for k in keys) + " |",
            "|---|" + "---:|" * len(keys),
        ]
        for row in result["rows"]:
            values = " | ".join(f"{row['ms_per_image'][k]:.1f}" for k in keys)
            lines.append(f"| {row['generator']} | {values} |")
        return "\n".join(lines) + f"\n\n{caption}"
    if result["mode"] == "pipeline":
        lines = [
            "| images | bare loop s | pipeline s (steady) | overhead | start-up s |",
            "|---:|---:|---:|---:|---:|",
            f"| {result['images']} | {result['bare_loop_s']:.2f} | "
            f"{result['pipeline_steady_s']:.2f} | {100 * result['overhead']:+.1f} % | "
            f"{result['startup_s']:.1f} |",
        ]
        return "\n".join(lines) + f"\n\n{caption}"
    lines = [
        "| generator | dtype | compile | img/s | speed-up | mIoU | count mismatches "
        "| max Δ pred IoU | max Δ stability | masks/img | peak MB | failed images |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        p = row["parity"]
        lines.append(
            f"| {row['generator']} | {row['dtype']}{' (tf32)' if row['tf32'] else ''} "
            f"| {'yes' if row['compile'] else 'no'} "
            f"| {row['images_per_s']:.3f} | {row['speedup']:.2f}x | {p['mean_iou']:.4f} "
            f"| {p['count_mismatches']}/{p['images']} | {p['max_predicted_iou_diff']:.2g} "
            f"| {p['max_stability_diff']:.2g} | {row['masks_per_image']:.1f} "
            f"| {row['peak_memory_mb']:.0f} | {row['failed_images']} |"
        )
    return "\n".join(lines) + f"\n\n{caption}"


if __name__ == "__main__":
    sys.exit(main())
