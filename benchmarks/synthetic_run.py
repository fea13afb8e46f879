"""Write a large synthetic run (real layout, real RLEs, random scores) for after-the-run
benchmarks, without running a model: ``python -m benchmarks.synthetic_run OUT --images N``.

Masks are drawn from a pool of real COCO RLEs of rectangles and ellipses on a 256×256 image, so
every row decodes and its area and box match its mask; scores are random. Every image row
points at one of the shipped sample scenes, so thumbnails can be drawn.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.core import rle
from pipeline.core.schema import IMAGE_SCHEMA, MASK_SCHEMA
from pipeline.core.storage import Location
from pipeline.core.writer import RunLayout, commit_shard

SIDE = 256
SCENES = Path(__file__).resolve().parents[1] / "samples" / "scenes" / "images"


def mask_pool(count: int, rng: np.random.Generator) -> list[dict]:
    """``count`` real masks (rectangles and ellipses) as records with RLE, area and box."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    pool = []
    for i in range(count):
        x0, y0 = rng.integers(0, SIDE - 8, 2)
        w, h = rng.integers(4, SIDE - max(x0, y0), 2)
        if i % 2:
            cx, cy = x0 + w / 2, y0 + h / 2
            mask = ((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1
        else:
            mask = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        encoded = rle.encode_mask(mask)
        pool.append({"segmentation": encoded, "area": rle.area(encoded), "bbox": rle.bbox(encoded)})
    return pool


def shard_tables(
    first_image: int,
    images: int,
    masks_per_image: int,
    pool: pa.Table,
    uris: list[str],
    rng,
    categories: int = 0,
) -> tuple[pa.Table, pa.Table]:
    """One shard's mask and image tables (image ids ``first_image`` onwards); with
    ``categories``, each mask gets a ``category_id`` from 1 to ``categories`` (as a prompted
    run's masks do)."""
    ids = np.arange(first_image, first_image + images, dtype=np.int64)
    counts = rng.poisson(masks_per_image, images).astype(np.int32)
    image_of = np.repeat(ids, counts)
    n = len(image_of)
    picks = pa.array(rng.integers(0, pool.num_rows, n))
    image_uris = [uris[i % len(uris)] for i in ids]
    uri_of = pa.array(np.array(image_uris, dtype=object)[image_of - first_image], pa.string())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    columns = {
        "image_id": pa.array(image_of),
        "image_uri": uri_of,
        "mask_index": pa.array((np.arange(n) - starts).astype(np.int32)),
        "segmentation": pool.column("segmentation").take(picks),
        "area": pool.column("area").take(picks),
        "bbox": pool.column("bbox").take(picks),
        "predicted_iou": pa.array(rng.beta(8, 1.5, n).astype(np.float32)),
        "stability_score": pa.array(rng.beta(12, 1, n).astype(np.float32)),
    }
    if categories:
        category = rng.integers(1, categories + 1, n)
        columns["category_id"] = pa.array(category, pa.int64())
        columns["category_name"] = pa.array([f"class-{c}" for c in category], pa.string())
    masks = pa.table(
        {
            name: columns.get(name, pa.nulls(n, MASK_SCHEMA.field(name).type))
            for name in MASK_SCHEMA.names
        },
        schema=MASK_SCHEMA,
    )
    images_table = pa.Table.from_pydict(
        {
            "image_id": ids,
            "image_uri": image_uris,
            "width": [SIDE] * images,
            "height": [SIDE] * images,
            "original_width": [SIDE] * images,
            "original_height": [SIDE] * images,
            "num_masks": counts,
            "status": ["ok"] * images,
            "error": [None] * images,
            "shard": [None] * images,
            "seconds": np.zeros(images, np.float32),
            "num_prompts": [None] * images,
            "prompt_errors": [None] * images,
            "error_kind": [None] * images,
        },
        schema=IMAGE_SCHEMA,
    )
    return masks, images_table


def write_synthetic_run(
    out: str,
    images: int,
    masks_per_image: int = 10,
    shard_size: int = 1000,
    seed: int = 0,
    scenes: Path = SCENES,
    categories: int = 0,
    first_id: int = 0,
) -> dict[str, int]:
    """Write a run of ``images`` images with about ``masks_per_image`` masks each.

    Args:
        out: the run's folder (local path or fsspec URI).
        images: how many image rows.
        masks_per_image: the mean of each image's mask count (Poisson).
        shard_size: images per shard.
        seed: makes the run reproducible.
        scenes: the folder of PNGs the image rows point at, in turn (default: the shipped
            sample scenes).
        categories: give each mask a ``category_id`` from 1 to this (0: none).
        first_id: the first image's id (the others follow): runs with ids apart share no
            image.

    Returns:
        The run's counts (images, masks, shards).
    """
    rng = np.random.default_rng(seed)
    pool = pa.Table.from_pylist(
        mask_pool(256, rng),
        schema=pa.schema([MASK_SCHEMA.field(n) for n in ("segmentation", "area", "bbox")]),
    )
    uris = [str(path) for path in sorted(Path(scenes).glob("*.png"))]
    layout = RunLayout(Location(out))
    counts = {"images": 0, "masks": 0, "shards": 0}
    for number, first in enumerate(range(0, images, shard_size)):
        shard = f"shard-{number:05d}"
        size = min(shard_size, images - first)
        masks, image_rows = shard_tables(
            first_id + first, size, masks_per_image, pool, uris, rng, categories
        )
        image_rows = image_rows.set_column(
            image_rows.schema.get_field_index("shard"), "shard", pa.array([shard] * size)
        )
        stats = {"images": size, "ok": size, "errors": 0, "masks": masks.num_rows}
        commit_shard(layout, shard, masks, image_rows, stats)
        counts["images"] += size
        counts["masks"] += masks.num_rows
        counts["shards"] += 1
    layout.manifest.write_json_atomic(
        {
            "format": 1,
            "status": "complete",
            "input": "synthetic",
            "config": {"image": {"max_short_side": 0, "max_pixels": 0}},
            "counts": {**counts, "shards_committed": counts["shards"]},
            "finished_at": time.time(),
        }
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the run's folder")
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--masks-per-image", type=int, default=10)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.time()
    counts = write_synthetic_run(
        args.out, args.images, args.masks_per_image, args.shard_size, args.seed
    )
    print(f"wrote {counts} to {args.out} in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
