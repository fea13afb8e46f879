"""The fast generator gives the stock generator's masks, whatever the AMG settings."""

import numpy as np
import pytest

from pipeline.core import rle
from pipeline.core.config import ConfigError, load_config
from pipeline.model.factory import make_generator
from pipeline.model.fast import FastMaskGenerator
from pipeline.model.parity import Parity
from pipeline.model.reference import MaskGenerator
from pipeline.model.registry import build_model, resolve_model
from tests.conftest import MICRO_CONFIG, PERMISSIVE, make_scene


@pytest.fixture(scope="module")
def micro_model(micro_checkpoint):
    return build_model(resolve_model(None, MICRO_CONFIG, micro_checkpoint), "cpu")


def assert_same_masks(model, overrides, sizes=((96, 72), (80, 64)), min_masks=4, **fast_options):
    """Both generators on a few scenes: same masks, same scores; returns the parity."""
    amg = load_config(None, [*PERMISSIVE, *overrides]).amg
    reference = MaskGenerator(model, amg)
    fast = FastMaskGenerator(model, amg, **fast_options)
    parity = Parity()
    for seed, (w, h) in enumerate(sizes):
        image = np.array(make_scene(w, h, seed))
        expected, got = reference.generate(image), fast.generate(image)
        parity.add(expected, got)
        assert [r["segmentation"]["size"] for r in got] == [[h, w]] * len(got)
        for mine, theirs in zip(got, expected, strict=False):
            assert mine["area"] == int(rle.decode(mine["segmentation"]).sum())
            assert mine["crop_box"] == pytest.approx(theirs["crop_box"])
    assert parity.reference_masks >= min_masks
    assert parity.count_mismatches == 0
    assert parity.mean_iou > 0.999
    assert parity.max_predicted_iou_diff < 1e-4
    assert parity.max_stability_diff < 1e-3
    return parity


def test_same_masks_whole_image(micro_model):
    assert_same_masks(micro_model, [], points_per_batch=7)


def test_same_masks_with_real_thresholds(micro_model):
    """Thresholds at the lower quartile of the scores, so both filters drop masks."""
    amg = load_config(None, PERMISSIVE).amg
    everything = MaskGenerator(micro_model, amg).generate(np.array(make_scene(96, 72, 0)))
    iou = float(np.quantile([r["predicted_iou"] for r in everything], 0.25))
    stability = float(np.quantile([r["stability_score"] for r in everything], 0.25))
    overrides = [f"amg.pred_iou_thresh={iou}", f"amg.stability_score_thresh={stability}"]
    parity = assert_same_masks(micro_model, overrides)
    assert parity.reference_masks < 2 * len(everything)


def test_same_masks_single_output_with_thresholds(micro_model):
    """One mask per prompt, picked by sam2's stability rule, then the IoU filter."""
    amg = load_config(None, [*PERMISSIVE, "amg.multimask_output=false"]).amg
    everything = MaskGenerator(micro_model, amg).generate(np.array(make_scene(96, 72, 0)))
    iou = float(np.quantile([r["predicted_iou"] for r in everything], 0.5))
    overrides = ["amg.multimask_output=false", f"amg.pred_iou_thresh={iou}"]
    parity = assert_same_masks(micro_model, overrides)
    assert parity.reference_masks < 2 * len(everything)


def test_same_masks_after_box_nms(micro_model):
    """sam2's default NMS (random weights give near-identical masks: most are duplicates)."""
    assert_same_masks(micro_model, ["amg.box_nms_thresh=0.7"], min_masks=2)
    crops = ["amg.box_nms_thresh=0.7", "amg.crop_n_layers=1", "amg.min_mask_region_area=20"]
    assert_same_masks(micro_model, crops, min_masks=2, encoder_batch=2)


def test_same_masks_with_crops_and_small_region_removal(micro_model):
    overrides = [
        "amg.crop_n_layers=1",
        "amg.points_per_side=3",
        "amg.crop_nms_thresh=1.0",
        "amg.min_mask_region_area=20",
    ]
    assert_same_masks(micro_model, overrides, encoder_batch=3)


def test_same_masks_with_m2m_single_mask_and_area_limit(micro_model):
    overrides = [
        "amg.use_m2m=true",
        "amg.multimask_output=false",
        "amg.max_mask_area_fraction=0.5",
    ]
    assert_same_masks(micro_model, overrides, points_per_batch=5)


def test_generate_many_keeps_order_and_passes_errors_through(micro_model):
    amg = load_config(None, [*PERMISSIVE, "amg.crop_n_layers=1"]).amg
    fast = FastMaskGenerator(micro_model, amg, encoder_batch=4)
    images = [np.array(make_scene(64 + 8 * i, 48, i)) for i in range(4)]
    failed = ValueError("unreadable")
    broken = np.zeros((0, 5, 3), dtype=np.uint8)  # no pixels: this image's generation fails
    flat = np.zeros((4, 5), dtype=np.uint8)  # not an RGB array
    items = [
        ("a", images[0]),
        ("b", failed),
        ("c", images[1]),
        ("d", broken),
        ("e", images[2]),
        ("f", flat),
    ]
    results = list(fast.generate_many(items))
    assert [key for key, _ in results] == ["a", "b", "c", "d", "e", "f"]
    assert results[1][1] is failed
    assert isinstance(results[3][1], Exception)
    assert isinstance(results[5][1], Exception)
    for (_, outcome), image in zip((results[0], results[2], results[4]), images, strict=False):
        assert outcome == fast.generate(image)


def test_job_config_selects_the_implementation(micro_model):
    job = load_config(None, PERMISSIVE)
    assert job.generator.impl == "fast"
    assert isinstance(
        make_generator(micro_model, job.amg, job.generator, "float32", "cpu"), FastMaskGenerator
    )
    with pytest.raises(ConfigError, match="generator.impl must be one of fast, reference"):
        load_config(None, ["generator.impl=stock"])
    job = load_config(None, [*PERMISSIVE, "generator.impl=reference"])
    assert isinstance(
        make_generator(micro_model, job.amg, job.generator, "float32", "cpu"), MaskGenerator
    )


def test_same_masks_on_a_real_architecture(tmp_path):
    """Hiera-T's layout (random weights) at 512 px, a 16x16 grid."""
    from pipeline.model.registry import save_random_checkpoint

    config = "configs/sam2.1/sam2.1_hiera_t.yaml"
    ckpt = save_random_checkpoint(config, str(tmp_path / "t.pt"))
    model = build_model(resolve_model(None, config, ckpt, image_size=512), "cpu")
    assert_same_masks(model, ["amg.points_per_side=16"], sizes=((160, 120),))
