"""``export --format png`` and ``--format cutouts`` (issue 23): label maps and cut-outs that
agree pixel for pixel with the run's masks, decoded by pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from benchmarks.synthetic_run import write_synthetic_run
from pipeline.results.dataset import open_run
from tests.conftest import autolabel


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Five images of overlapping masks with categories (as a prompted run has), two shards."""
    out = tmp_path_factory.mktemp("maps") / "run"
    write_synthetic_run(str(out), images=5, masks_per_image=6, shard_size=3, seed=8, categories=3)
    return out


def masks_by_image(run: Path) -> dict[str, list[dict]]:
    """Each image URI's mask rows, by ``mask_index``."""
    grouped: dict[str, list[dict]] = {}
    for row in open_run(str(run)).masks.to_table().to_pylist():
        grouped.setdefault(row["image_uri"], []).append(row)
    return {uri: sorted(rows, key=lambda r: r["mask_index"]) for uri, rows in grouped.items()}


def decoded(row: dict) -> np.ndarray:
    return mask_utils.decode(row["segmentation"]).astype(bool)


def test_label_maps_hold_exactly_the_masks(run, tmp_path):
    out = tmp_path / "maps"
    done = autolabel("export", str(run), "--format", "png", "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    images = open_run(str(run)).images.to_table().to_pylist()
    masks = masks_by_image(run)
    assert f"{len(images)} maps" in done.stdout
    for image in images:
        name = Path(image["image_uri"]).stem
        index = json.loads((out / f"{name}.json").read_text())
        assert index["image_uri"] == image["image_uri"]
        with Image.open(out / f"{name}.png") as picture:
            labels = np.asarray(picture)
        assert labels.dtype == np.uint16 or picture.mode.startswith("I")
        rows = {row["mask_index"]: row for row in masks.get(image["image_uri"], [])}
        union = np.zeros(labels.shape, bool)
        for row in rows.values():
            union |= decoded(row)
        assert np.array_equal(labels > 0, union)  # labelled pixels: the union of the masks
        assert set(index["mask_index"].values()) == set(rows)
        for value in np.unique(labels[labels > 0]):
            owner = rows[index["mask_index"][str(value)]]
            owned = labels == value
            assert decoded(owner)[owned].all()  # every value maps to a mask that covers it
            covering = [r for r in rows.values() if decoded(r)[owned].any()]
            best = max(r["predicted_iou"] for r in covering)
            assert owner["predicted_iou"] == best  # overlaps go to the higher predicted IoU
        with Image.open(out / f"{name}.categories.png") as picture:
            categories = np.asarray(picture).astype(np.int64)
        expected = np.zeros(labels.shape, np.int64)
        for value, mask_index in index["mask_index"].items():
            expected[labels == int(value)] = rows[mask_index]["category_id"]
        assert np.array_equal(categories, expected) and categories.max() > 0


def test_an_image_whose_masks_are_all_filtered_out_gets_an_empty_map(run, tmp_path):
    out = tmp_path / "maps"
    done = autolabel(
        "export", str(run), "--format", "png", "--out", str(out), "--min-predicted-iou", "1.0"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    maps = sorted(out.glob("*.png"))
    assert len(maps) == 5  # no categories.png: no mask was kept
    for path in maps:
        with Image.open(path) as picture:
            assert picture.size == (256, 256) and not np.asarray(picture).any()


def test_cutouts_are_the_masks_inside_their_boxes(run, tmp_path):
    out = tmp_path / "cutouts"
    args = ["export", str(run), "--format", "cutouts", "--out", str(out), "--top-k", "2"]
    done = autolabel(*args, "--min-area", "50")
    assert done.returncode == 0, done.stderr[-2000:]
    written = sorted(out.glob("*.png"))
    kept = []
    for uri, rows in masks_by_image(run).items():
        large = [r for r in rows if r["area"] >= 50]
        kept += [(uri, r) for r in sorted(large, key=lambda r: -r["predicted_iou"])[:2]]
    assert len(written) == len(kept) > 0
    for uri, row in kept:
        path = out / f"{Path(uri).stem}.{row['mask_index']}.png"
        with Image.open(path) as picture:
            assert picture.mode == "RGBA"
            rgba = np.asarray(picture)
        x, y, w, h = (int(v) for v in row["bbox"])
        assert rgba.shape == (h, w, 4)
        mask = decoded(row)
        assert np.array_equal(rgba[..., 3] == 255, mask[y : y + h, x : x + w])
        assert mask[y : y + h, x : x + w].sum() == mask.sum()  # the box holds the whole mask
        with Image.open(uri) as source:
            pixels = np.asarray(source.convert("RGB"))[y : y + h, x : x + w]
        opaque = rgba[..., 3] == 255
        assert np.array_equal(rgba[..., :3][opaque], pixels[opaque])
        assert not rgba[..., 3][~opaque].any()


def test_cutouts_of_a_gone_image_are_reported_and_the_rest_written(tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for source in sorted(Path(__file__).parents[1].glob("samples/scenes/images/*.png"))[:2]:
        (scenes / source.name).write_bytes(source.read_bytes())
    run = tmp_path / "run"
    write_synthetic_run(str(run), images=2, masks_per_image=3, scenes=scenes)
    gone = sorted(scenes.glob("*.png"))[0]
    gone.unlink()
    done = autolabel(
        "export", str(run), "--format", "cutouts", "--out", str(tmp_path / "c"), "--no-progress"
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"not cut out: {gone}: cannot read file")
    left = masks_by_image(run)[str(sorted(scenes.glob("*.png"))[0])]
    written = sorted(p.name for p in (tmp_path / "c").glob("*.png"))
    assert written == sorted(f"{Path(r['image_uri']).stem}.{r['mask_index']}.png" for r in left)
    assert f"{len(left)} cutouts" in done.stdout


def test_maps_never_replace_the_images(tmp_path):
    """``--out`` that is the images' folder (where ``a.png``'s map would be ``a.png``) is
    refused before anything is written."""
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for source in sorted(Path(__file__).parents[1].glob("samples/scenes/images/*.png"))[:2]:
        (scenes / source.name).write_bytes(source.read_bytes())
    before = {p.name: p.read_bytes() for p in scenes.iterdir()}
    run = tmp_path / "run"
    write_synthetic_run(str(run), images=2, masks_per_image=3, scenes=scenes)
    for fmt in ("png", "cutouts"):
        done = autolabel("export", str(run), "--format", fmt, "--out", str(scenes))
        assert done.returncode == 2, done.stderr[-2000:]
        assert "is the images' folder or a folder above it" in done.stderr
    assert {p.name: p.read_bytes() for p in scenes.iterdir()} == before
