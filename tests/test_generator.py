"""The mask generator: same masks as sam2's stock generator, plus SA-1B's clean-ups."""

import cv2
import numpy as np
import pytest
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

from pipeline.core import rle
from pipeline.core.config import load_config
from pipeline.model.records import fix_feature_sizes
from pipeline.model.reference import SAM2_ARGUMENTS, MaskGenerator
from pipeline.model.registry import build_model, resolve_model
from tests.conftest import MICRO_CONFIG, PERMISSIVE, make_scene


@pytest.fixture(scope="module")
def micro_model(micro_checkpoint):
    return build_model(resolve_model(None, MICRO_CONFIG, micro_checkpoint), "cpu")


def stock_masks(model, amg, image):
    stock = SAM2AutomaticMaskGenerator(
        model,
        output_mode="coco_rle",
        min_mask_region_area=0,
        **{name: getattr(amg, name) for name in SAM2_ARGUMENTS},
    )
    fix_feature_sizes(stock.predictor)
    return [r for r in stock.generate(image) if r["area"] > 0]  # we drop empty masks


@pytest.mark.parametrize(
    "extra", [[], ["amg.crop_n_layers=1", "amg.points_per_side=3", "amg.crop_nms_thresh=1.0"]]
)
def test_same_masks_as_stock_generator(micro_model, extra):
    amg = load_config(None, PERMISSIVE + extra).amg
    ours = MaskGenerator(micro_model, amg)
    for seed in range(2):
        image = np.array(make_scene(72, 56, seed))
        expected = stock_masks(micro_model, amg, image)
        got = ours.generate(image)
        assert len(got) == len(expected) > 3
        for mine, theirs in zip(got, expected, strict=True):
            assert mine["segmentation"]["counts"] == theirs["segmentation"]["counts"]
            assert mine["segmentation"]["size"] == list(theirs["segmentation"]["size"])
            assert mine["area"] == theirs["area"]
            assert mine["predicted_iou"] == pytest.approx(theirs["predicted_iou"])
            assert mine["stability_score"] == pytest.approx(theirs["stability_score"])
            assert mine["point_coords"][0] == pytest.approx(theirs["point_coords"][0])
            assert mine["crop_box"] == pytest.approx(theirs["crop_box"])


def test_boxes_and_areas_match_the_decoded_masks(micro_model):
    amg = load_config(None, PERMISSIVE).amg
    image = np.array(make_scene(64, 48, 3))
    for record in MaskGenerator(micro_model, amg).generate(image):
        mask = rle.decode(record["segmentation"])
        assert mask.shape == (48, 64)
        ys, xs = np.nonzero(mask)
        assert record["area"] == len(xs)
        x0, y0 = xs.min(), ys.min()
        assert record["bbox"] == [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]


def small_components(mask: np.ndarray, min_area: int) -> tuple[int, int]:
    """(islands, holes) smaller than min_area in a binary mask."""
    counts = []
    for working in (mask, 1 - mask):
        n, _, stats, _ = cv2.connectedComponentsWithStats(working.astype(np.uint8), 8)
        counts.append(int((stats[1:, cv2.CC_STAT_AREA] < min_area).sum()))
    return counts[0], counts[1]


def test_min_mask_region_area_removes_small_holes_and_islands(micro_model):
    image = np.array(make_scene(96, 72, 5))
    raw = MaskGenerator(micro_model, load_config(None, PERMISSIVE).amg).generate(image)
    noisy = sum(sum(small_components(rle.decode(r["segmentation"]), 20)) for r in raw)
    assert noisy > 0, "random weights should give speckled masks"
    amg = load_config(None, [*PERMISSIVE, "amg.min_mask_region_area=20"]).amg
    cleaned = MaskGenerator(micro_model, amg).generate(image)
    assert cleaned
    for record in cleaned:
        mask = rle.decode(record["segmentation"])
        assert small_components(mask, 20) == (0, 0)
        assert record["area"] == int(mask.sum())
        ys, xs = np.nonzero(mask)
        assert record["bbox"][:2] == [xs.min(), ys.min()]


def test_max_mask_area_fraction_drops_big_masks(micro_model):
    image = np.array(make_scene(64, 48, 1))
    everything = MaskGenerator(micro_model, load_config(None, PERMISSIVE).amg).generate(image)
    limit = float(np.median([r["area"] for r in everything])) / (64 * 48)
    amg = load_config(None, [*PERMISSIVE, f"amg.max_mask_area_fraction={limit}"]).amg
    kept = MaskGenerator(micro_model, amg).generate(image)
    assert 0 < len(kept) < len(everything)
    assert all(r["area"] <= limit * 64 * 48 for r in kept)
    assert len(kept) == sum(r["area"] <= limit * 64 * 48 for r in everything)


def test_real_architecture_runs_at_reduced_resolution(tmp_path):
    """A 1024-px checkpoint (Hiera-T layout) run at 512 px: the speed option users ask for."""
    from pipeline.model.registry import save_random_checkpoint

    ckpt = save_random_checkpoint("configs/sam2.1/sam2.1_hiera_t.yaml", str(tmp_path / "t.pt"))
    spec = resolve_model(None, "configs/sam2.1/sam2.1_hiera_t.yaml", ckpt, image_size=512)
    model = build_model(spec, "cpu")
    assert model.image_size == 512
    generator = MaskGenerator(model, load_config(None, PERMISSIVE).amg)
    assert generator.sam2_generator.predictor._bb_feat_sizes == [(128, 128), (64, 64), (32, 32)]
    records = generator.generate(np.array(make_scene(80, 60, 2)))
    assert records and all(rle.decode(r["segmentation"]).shape == (60, 80) for r in records)
