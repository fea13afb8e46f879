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


@pytest.fixture()
def web_folder(tmp_path):
    """An HTTP server on loopback over an empty folder (every file is a 404)."""
    import functools
    import http.server
    import threading

    (tmp_path / "web").mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=tmp_path / "web")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


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
        (  # offline, or a host that refuses: said so, with the way out (issue 22)
            ["--input", "{images}", "model.checkpoint=http://127.0.0.1:9/sam2.pt"],
            "cannot reach checkpoint http://127.0.0.1:9/sam2.pt (Cannot connect to host",
        ),
        (
            ["--input", "{images}", "model.checkpoint=http://127.0.0.1:9/sam2.pt"],
            "give model.checkpoint=PATH",
        ),
        (  # a server that answers 404 is a missing file
            ["--input", "{images}", "model.checkpoint={http}/missing.pt"],
            "checkpoint not found: http://127.0.0.1:",
        ),
    ],
)
def test_cli_input_and_model_errors(
    tmp_path, image_folder, micro_overrides, web_folder, args, message
):
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.parquet").write_bytes(b"PAR1 this is not parquet")
    args = [
        a.format(
            empty=tmp_path / "empty",
            images=image_folder,
            bad_manifest=tmp_path / "list.parquet",
            http=web_folder,
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


def test_overrides_go_anywhere_among_the_options():
    """``key=value`` before, between and after options, as people type them (issue 22)."""
    from pipeline.cli import parse

    shown = autolabel(
        "config", "amg.points_per_side=8", "--config", "sa1b", "amg.box_nms_thresh=0.5"
    )
    assert shown.returncode == 0, shown.stderr
    assert "points_per_side: 8" in shown.stdout and "box_nms_thresh: 0.5" in shown.stdout
    assert "crop_n_layers: 2" in shown.stdout  # the preset still applies
    args = parse(["run", "amg.points_per_side=8", "--input", "in/", "--output", "out/", "a.b=1"])
    assert (args.command, args.input, args.output) == ("run", "in/", "out/")
    assert args.overrides == ["amg.points_per_side=8", "a.b=1"]
    args = parse(["tune", "amg.points_per_side=8", "--input", "in/", "amg.box_nms_thresh=0.5"])
    assert args.overrides == ["amg.points_per_side=8", "amg.box_nms_thresh=0.5"]
    wrong = autolabel("config", "--config", "sa1b", "--bogus", "amg.points_per_side=8")
    assert wrong.returncode == 2 and "unrecognized arguments: --bogus" in wrong.stderr


def test_storage_options_have_one_spelling_on_every_command():
    """``--storage-option KEY=VALUE`` on run, config and tune too, the same setting as
    ``storage.options.KEY=VALUE`` (issue 22); every command that reads storage lists it."""
    endpoint = "client_kwargs.endpoint_url=http://127.0.0.1:9"
    flag = ["--storage-option", endpoint, "--storage-option", "anon=true"]
    by_flag = autolabel("config", *flag)
    by_override = autolabel(
        "config",
        "storage.options.client_kwargs.endpoint_url=http://127.0.0.1:9",
        "storage.options.anon=true",
    )
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_flag.stdout == by_override.stdout
    assert "endpoint_url: http://127.0.0.1:9" in by_flag.stdout
    # values read as every other command reads them (JSON, else a string), not as YAML
    kept = autolabel("config", "--storage-option", "region=0123", "--storage-option", "n=[1,2]")
    assert "region: '0123'" in kept.stdout and "- 1" in kept.stdout, kept.stdout
    bad = autolabel("config", "--storage-option", "anon")
    assert bad.returncode == 2 and "is not KEY=VALUE" in bad.stderr
    commands = ("run", "config", "tune", "filter", "stats", "export", "show", "eval", "view")
    commands += ("synth", "compare")
    for command in commands:
        shown = autolabel(command, "--help")
        assert "--storage-option" in shown.stdout, command


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "RUN", "--out", "o", "--sample", "-3"], "--sample: must be at least 1, not -3"),
        (["filter", "RUN", "OUT", "--top-k", "-1"], "--top-k: must be at least 1, not -1"),
        (["filter", "RUN", "OUT", "--max-area-fraction", "-1"], "must be from 0 to 1, not -1"),
        (["filter", "RUN", "OUT", "--max-area", "-5"], "--max-area: must be at least 0"),
        (["export", "RUN", "--format", "coco", "--out", "o", "--top-k", "0"], "at least 1"),
        (["synth", "--n", "-2", "--out", "s"], "--n: must be at least 1, not -2"),
        (["synth", "--n", "2", "--out", "s", "--difficulty", "5"], "must be from 0 to 1, not 5"),
        (["tune", "--input", "in", "--sample", "0"], "--sample: must be at least 1, not 0"),
        (["synth", "--n", "two", "--out", "s"], "invalid int value: 'two'"),
    ],
)
def test_out_of_range_flags_are_usage_errors(args, message):
    """Counts and fractions out of range end in argparse's usage error (exit 2), never a
    traceback or a command that silently keeps or writes nothing (issue 22)."""
    result = autolabel(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_where_help_lists_every_column_it_accepts():
    from pipeline.results.filters import WHERE_COLUMNS

    shown = " ".join(autolabel("filter", "--help").stdout.split())
    assert all(column in shown for column in WHERE_COLUMNS)
