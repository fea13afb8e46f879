"""Config: presets, overrides and one-line errors before anything loads."""

import pytest

from pipeline.core.config import ConfigError, load_config
from pipeline.model.reference import SAM2_ARGUMENTS
from tests.conftest import autolabel


def test_defaults_match_sam2_generator():
    import inspect

    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    amg = load_config().amg
    params = inspect.signature(SAM2AutomaticMaskGenerator.__init__).parameters
    for name in (*SAM2_ARGUMENTS, "min_mask_region_area"):
        assert getattr(amg, name) == pytest.approx(params[name].default), name
    assert load_config("default").amg == amg


def test_sa1b_preset_has_the_automatic_stage_settings():
    job = load_config("sa1b")
    assert (job.amg.points_per_side, job.amg.crop_n_layers) == (32, 2)
    assert job.amg.crop_n_points_downscale_factor == 2
    assert job.amg.pred_iou_thresh == pytest.approx(0.88)
    assert job.amg.stability_score_thresh == pytest.approx(0.95)
    assert job.amg.stability_score_offset == 1.0
    assert job.amg.box_nms_thresh == pytest.approx(0.7)
    assert job.amg.min_mask_region_area == 100
    assert job.amg.max_mask_area_fraction == pytest.approx(0.95)
    assert job.image.max_short_side == 1500


def test_overrides_win_over_preset():
    job = load_config("sa1b", ["amg.points_per_side=8", "runtime.gpus_per_actor=0.5"])
    assert job.amg.points_per_side == 8
    assert job.runtime.gpus_per_actor == 0.5


@pytest.mark.parametrize(
    "override, message",
    [
        ("amg.no_such_key=1", "unknown config key: amg.no_such_key"),
        ("nosection.x=1", "unknown config key"),
        ("amg.points_per_side=many", "bad value for amg.points_per_side"),
        ("amg.pred_iou_thresh=1.5", "amg.pred_iou_thresh must be in [0, 1]"),
        ("model.dtype=float8", "model.dtype must be one of"),
        ("runtime.shard_size=0", "runtime.shard_size must be >= 1"),
        ("points_per_side", "is not of the form key=value"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as raised:
        load_config(None, [override])
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_cli_rejects_bad_key_before_loading_anything(tmp_path):
    result = autolabel(
        "run", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "amg.points_per_sid=4"
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "autolabel: error: unknown config key: amg.points_per_sid"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "/no/such/folder"], "input not found: /no/such/folder"),
        (["--input", "{empty}"], "no images found in"),
        (["--input", "{bad_manifest}"], "cannot read manifest"),
        (
            ["--input", "{images}", "model.checkpoint=/no/such.pt"],
            "checkpoint not found: /no/such.pt",
        ),
        (["--input", "{images}", "model.name=sam3-huge"], "unknown model.name 'sam3-huge'"),
    ],
)
def test_cli_input_and_model_errors(tmp_path, image_folder, micro_overrides, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.parquet").write_bytes(b"PAR1 this is not parquet")
    args = [
        a.format(
            empty=tmp_path / "empty", images=image_folder, bad_manifest=tmp_path / "list.parquet"
        )
        for a in args
    ]
    overrides = [o for o in micro_overrides if not o.startswith("model.checkpoint")]
    if not any(a.startswith("model.checkpoint") for a in args):
        overrides = micro_overrides
    if any(a.startswith("model.name") for a in args):
        overrides = []
    result = autolabel("run", "--output", str(tmp_path / "out"), *args, *overrides)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
