"""The fast generator gives the stock generator's masks, whatever the AMG settings."""

from pathlib import Path

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
    job = load_config(None, [*PERMISSIVE, "generator.decoder=shared"])
    fast = make_generator(micro_model, job.amg, job.generator, "float32", "cpu")
    assert fast.crop.method == "shared"
    with pytest.raises(ConfigError, match="generator.decoder must be one of"):
        load_config(None, ["generator.decoder=fused"])
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


@pytest.mark.parametrize("method", ["reassociated", "shared"])
@pytest.mark.parametrize("high_res", [True, False], ids=["high-res", "no-high-res"])
def test_each_decoder_method_gives_sams_masks_with_and_without_high_res_features(
    tmp_path, method, high_res
):
    """Multimask and single-mask, on a micro model with and without sam2's high-resolution
    features in the decoder (another checkpoint layout: no conv_s0/conv_s1)."""
    from pipeline.model.registry import save_random_checkpoint

    config = tmp_path / "micro.yaml"
    text = Path(MICRO_CONFIG).read_text()
    config.write_text(
        text.replace(
            "use_high_res_features_in_sam: true",
            f"use_high_res_features_in_sam: {str(high_res).lower()}",
        )
    )
    model = build_model(
        resolve_model(
            None, str(config), save_random_checkpoint(str(config), str(tmp_path / "m.pt"))
        ),
        "cpu",
    )
    assert model.sam_mask_decoder.use_high_res_features is high_res
    for single in ([], ["amg.multimask_output=false"]):
        assert_same_masks(model, single, sizes=((96, 72),), decoder_method=method)


def click_prompts(model, count: int, seed: int):
    """A scene's features and ``count`` random click prompts' embeddings:
    ``(features, sparse, dense)`` (call it under ``torch.inference_mode``)."""
    import torch

    fast = FastMaskGenerator(model, load_config(None, PERMISSIVE).amg)
    [[(_, _, features)]] = fast.encode([np.array(make_scene(96, 72, 3))])
    points = torch.rand(count, 2, generator=torch.Generator().manual_seed(seed)) * 256
    return (features, *fast.crop.prompt_embeddings(points))


def test_the_reassociated_decoder_equals_sams_modules_to_float_rounding(micro_model):
    """The transformer against sam2's TwoWayTransformer (float32, and bfloat16 autocast), the
    upscaling in token order against sam2's (``shared_heads``), 24 click prompts at once."""
    import torch

    from pipeline.model import decoder

    with torch.inference_mode():
        features, sparse, dense = click_prompts(micro_model, 24, seed=0)
        dec = micro_model.sam_mask_decoder
        tokens = decoder.output_tokens(dec, sparse)
        src, pe = features[-1] + dense[:1], micro_model.sam_prompt_encoder.get_dense_pe()
        # sam2's own TwoWayTransformer, the image repeated for every prompt
        q0, k0 = dec.transformer(src.expand(len(tokens), -1, -1, -1), pe, tokens)
        q1, k1 = decoder.reassociated_transformer(dec.transformer, src, pe, tokens)
        assert torch.allclose(q0, q1, atol=1e-4) and torch.allclose(k0, k1, atol=1e-4)
        # the last attention for some tokens only: theirs, in the order asked
        needed = [5, 1, 2]
        for method in decoder.METHODS.values():
            q4, k4 = method[0](dec.transformer, src, pe, tokens, needed)
            assert q4.shape == (24, 3, q0.shape[-1])
            assert torch.allclose(q4, q0[:, needed], atol=1e-4)
            assert torch.allclose(k4, k0, atol=1e-4)
        # bfloat16 autocast: no further from sam2 under autocast than sam2's own rounding
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q2, _ = dec.transformer(src.expand(len(tokens), -1, -1, -1), pe, tokens)
            q3, _ = decoder.reassociated_transformer(dec.transformer, src, pe, tokens)
        sam2_rounding = (q2.float() - q0).abs().max()
        assert (q3.float() - q0).abs().max() <= 2 * sam2_rounding
        shape, high = features[-1].shape, features[:-1]
        first = 1 if dec.pred_obj_scores else 0
        for outputs in (range(0, 1), range(1, 4), range(4)):
            mask_queries = q0[:, [first + 1 + i for i in outputs]]
            before = decoder.shared_heads(dec, mask_queries, k0, shape, high, outputs)
            after = decoder.token_order_heads(dec, mask_queries, k0, shape, high, outputs)
            assert before.shape == after.shape == (24, len(outputs), 64, 64)
            assert torch.allclose(before, after, atol=1e-3)


def test_generator_compile_compiles_the_transformer_and_keeps_its_values(micro_model):
    """``generator.compile=true`` runs the decoder's transformer under torch.compile: the
    same kept masks, IoUs to float rounding, for a padded batch of click prompts."""
    import torch

    from pipeline.model import decoder

    with torch.inference_mode():
        features, sparse, dense = click_prompts(micro_model, 16, seed=1)
        dec = micro_model.sam_mask_decoder
        args = (dec, features[-1], micro_model.sam_prompt_encoder.get_dense_pe(), sparse, dense)
        every = decoder.decode(*args, features[:-1], True, 0.0, 12)[1]
        rest = (features[:-1], True, float(every.median()), 12)  # drops about half
        eager = decoder.decode(*args, *rest)
        compiled = decoder.decode(*args, *rest, compiled=True)
    assert "reassociated" in decoder.COMPILED
    assert torch.equal(eager[2], compiled[2]) and 0 < len(eager[2]) < 12 * 3
    assert torch.allclose(eager[1], compiled[1], atol=1e-5)
    assert torch.allclose(eager[0], compiled[0], atol=1e-3)


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("default", ["amg.points_per_side=16"]),
        ("default", ["amg.points_per_side=16", "amg.multimask_output=false"]),
        ("sa1b", ["amg.points_per_side=8", "image.max_short_side=0"]),
    ],
    ids=["default", "default-single-mask", "sa1b"],
)
def test_the_shipped_model_keeps_parity_at_the_presets(preset, overrides):
    """sam2-tiny-synthetic on unseen synthetic scenes, the presets' own thresholds (so masks
    are dropped by every filter): the issue's parity bar, float32."""
    from pipeline.synthetic.scenes import make_scene as synthetic_scene

    # at 256-px input, as trained until its 512-px fine-tune: parity does not depend on the
    # input size, and tests/test_trained_model.py checks it at the shipped size
    model = build_model(resolve_model("sam2-tiny-synthetic", None, None, image_size=256), "cpu")
    amg = load_config(preset, overrides).amg
    reference, fast = MaskGenerator(model, amg), FastMaskGenerator(model, amg, points_per_batch=32)
    parity = Parity()
    for seed in (90_001, 90_002):
        image = synthetic_scene(seed, 256, 1.0).image
        parity.add(reference.generate(image), fast.generate(image))
    assert parity.reference_masks >= 4
    assert parity.count_mismatches == 0
    assert parity.mean_iou >= 0.999
    assert parity.max_predicted_iou_diff <= 1e-4
