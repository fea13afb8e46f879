"""The structured job config: defaults, presets, ``key=value`` overrides, validation.

Everything a run needs is one ``JobConfig``. Presets are yaml files merged over the defaults,
then command-line overrides are merged over that; omegaconf rejects unknown keys and wrong
types, and ``validate`` checks ranges. Every failure is a ``ConfigError`` with a one-line
message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.core.errors import UserError

# The presets, model configs and shipped models travel inside the package (``pipeline/configs``,
# which in the repository links to its top-level ``configs/`` and in a wheel is that folder's
# copy): a checkout, an editable install, a wheel and the Docker image find them alike.
CONFIG_DIR = Path(str(resources.files("pipeline") / "configs"))
PRESET_DIR = CONFIG_DIR


class ConfigError(UserError, ValueError):
    """A config the job cannot run with; the message is one line for the user."""


@dataclass
class ModelConfig:
    """Which SAM 2 to run: ``name`` (official), or ``config`` + ``checkpoint`` overrides."""

    name: str | None = "sam2.1-hiera-large"
    config: str | None = None
    checkpoint: str | None = None
    # float32 | bfloat16 | float16; None picks bfloat16 on CUDA and float32 on the CPU.
    dtype: str | None = None
    # Run the model at this input size instead of its own (e.g. 512 for a 1024-px checkpoint:
    # about 4x less encoder work, coarser masks); a multiple of 32. None keeps the model's.
    image_size: int | None = None


@dataclass
class AMGConfig:
    """Arguments of sam2's ``SAM2AutomaticMaskGenerator`` (same names, same defaults)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    use_m2m: bool = False
    multimask_output: bool = True
    # Ours: drop masks covering more than this fraction of the image.
    max_mask_area_fraction: float = 1.0


@dataclass
class GeneratorConfig:
    """Which mask generator runs the AMG settings, and how the fast one batches its work."""

    # fast: pipeline.model.fast (same masks, several times faster); reference: sam2's own.
    impl: str = "fast"
    # Fast generator only: prompts decoded per batch (about 12 MB of device memory each at
    # 1024 px; amg.points_per_batch stays the stock generator's); 0 picks 256 on CUDA and 32
    # on the CPU, where small batches stay in cache.
    points_per_batch: int = 0
    # Fast generator only: crops, of one image or several, per image-encoder batch; 0 picks
    # 8 on CUDA and 1 on the CPU.
    encoder_batch: int = 0
    # Fast generator only: how the mask decoder's per-prompt work is done (see
    # pipeline.model.decoder): reassociated (products on the token side, the default) or
    # shared (only the first block's image side shared; kept for comparison).
    decoder: str = "reassociated"
    # Fast generator only: torch.compile the image encoder and the mask decoder's transformer
    # (slow first image).
    compile: bool = False
    # Fast generator only: TensorFloat-32 for float32 matrix products on CUDA (faster, masks
    # differ slightly; see the README's performance table).
    tf32: bool = False


@dataclass
class ImageConfig:
    """How images are decoded before the model sees them."""

    # Downscale so the short side is at most this many pixels (0: keep the size).
    max_short_side: int = 0
    # Refuse images with more pixels than this (decompression bombs); 0: no limit.
    max_pixels: int = 178_956_970


@dataclass
class PromptsConfig:
    """How ``run --prompts`` turns box prompts into masks."""

    # A box whose longer side is under this many pixels at the model's input (e.g. 96 of
    # 1024; of 512 for sam2-tiny-synthetic, i.e. boxes under 48 px of a 256-px image) is
    # segmented again on a square crop around it, resized to the input:
    # the mask grid, a quarter of the input size, then has more cells on the object. Costs
    # one more image-encoder pass per such box. 0 turns zooming off.
    zoom_below: int = 96
    # The crop's side, in multiples of the box's longer side (the object and its
    # surroundings), and at least an eighth of the input size; at least 1.
    zoom_context: float = 3.0


@dataclass
class RuntimeConfig:
    """Where and how the work runs on the Ray cluster."""

    shard_size: int = 1000
    # None: one actor per GPU (divided by gpus_per_actor), or CPU actors when there is none.
    num_actors: int | None = None
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 2.0
    # Threads reading and decoding images ahead of the model, per actor.
    read_threads: int = 4
    # Images decoded ahead of the model, per actor.
    prefetch: int = 8
    # "auto" uses CUDA when the actor has a GPU; "cpu" forces the CPU.
    device: str = "auto"
    # Ray address; None joins a running cluster or starts a local one.
    address: str | None = None
    # A worker not placed on any node after this long is given up (its shards go to the
    # others); with no worker left, the run fails with a message instead of waiting forever.
    placement_timeout_s: float = 300.0
    # The run fails (exit 1) when more than this fraction of its images are error rows: a
    # wrong prefix, a format nobody can decode or a broken setup must not end "complete".
    # 0.5 tolerates a messy crawl (a few % unreadable is common) and catches those; 1.0 accepts
    # any number of error rows.
    max_error_fraction: float = 0.5


@dataclass
class OutputConfig:
    """How shards are written."""

    # Rows per Parquet row group in mask files: small enough that score filters skip most.
    mask_row_group_size: int = 2000
    compression: str = "zstd"


@dataclass
class StorageConfig:
    """fsspec options (endpoint, credentials …) for input, output and checkpoints."""

    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobConfig:
    """The whole job."""

    model: ModelConfig = field(default_factory=ModelConfig)
    amg: AMGConfig = field(default_factory=AMGConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)


DTYPES = ("float32", "bfloat16", "float16")
IMPLS = ("fast", "reference")
DECODERS = ("reassociated", "shared")


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Build the job config from defaults, a preset file and ``key=value`` overrides.

    Args:
        preset: path to a yaml file, or the name of one in ``configs/`` (``sa1b``); None
            keeps the defaults.
        overrides: ``key=value`` strings, e.g. ``amg.points_per_side=16``.

    Raises:
        ConfigError: unknown key, wrong type, out-of-range value, missing preset.
    """
    cfg = OmegaConf.structured(JobConfig)
    try:
        if preset:
            cfg = OmegaConf.merge(cfg, read_preset(preset_path(preset)))
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
    except OmegaConfBaseException as error:
        raise ConfigError(describe_omegaconf_error(error)) from error
    job: JobConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(job)
    return job


def read_preset(path: Path) -> DictConfig:
    """A preset file's settings.

    Raises:
        ConfigError: it is not YAML (a syntax error, a key given twice), or not a mapping.
    """
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"--config {path} is not valid YAML{where}: {problem}") from error
    if not isinstance(loaded, DictConfig):
        raise ConfigError(
            f"--config {path} holds a list, not settings "
            "(a mapping such as 'amg: {points_per_side: 16}')"
        )
    return loaded


def preset_path(preset: str) -> Path:
    """Resolve a preset name (``sa1b``) or path to an existing yaml file."""
    for candidate in (Path(preset), PRESET_DIR / preset, PRESET_DIR / f"{preset}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file not found: {preset}")


def describe_omegaconf_error(error: OmegaConfBaseException) -> str:
    """One line out of omegaconf's multi-line messages, naming the key."""
    first = str(error).strip().splitlines()[0]
    key = getattr(error, "full_key", None)
    if "not in struct" in first or "Key '" in first and "not" in first:
        return f"unknown config key: {key or first}"
    return f"bad value for {key}: {first}" if key else first


def validate(job: JobConfig) -> None:
    """Range checks omegaconf's types cannot express."""
    amg, rt = job.amg, job.runtime
    checks = [
        (amg.points_per_side >= 1, "amg.points_per_side must be >= 1"),
        (amg.points_per_batch >= 1, "amg.points_per_batch must be >= 1"),
        (0 <= amg.pred_iou_thresh <= 1, "amg.pred_iou_thresh must be in [0, 1]"),
        (0 <= amg.stability_score_thresh <= 1, "amg.stability_score_thresh must be in [0, 1]"),
        (0 < amg.box_nms_thresh <= 1, "amg.box_nms_thresh must be in (0, 1]"),
        (0 < amg.crop_nms_thresh <= 1, "amg.crop_nms_thresh must be in (0, 1]"),
        (amg.crop_n_layers >= 0, "amg.crop_n_layers must be >= 0"),
        (0 <= amg.crop_overlap_ratio < 1, "amg.crop_overlap_ratio must be in [0, 1)"),
        (amg.crop_n_points_downscale_factor >= 1, "amg.crop_n_points_downscale_factor >= 1"),
        (amg.min_mask_region_area >= 0, "amg.min_mask_region_area must be >= 0"),
        (0 < amg.max_mask_area_fraction <= 1, "amg.max_mask_area_fraction must be in (0, 1]"),
        (job.generator.impl in IMPLS, f"generator.impl must be one of {', '.join(IMPLS)}"),
        (
            job.generator.decoder in DECODERS,
            f"generator.decoder must be one of {', '.join(DECODERS)}",
        ),
        (job.generator.points_per_batch >= 0, "generator.points_per_batch must be >= 0"),
        (job.generator.encoder_batch >= 0, "generator.encoder_batch must be >= 0"),
        (job.image.max_short_side >= 0, "image.max_short_side must be >= 0"),
        (job.image.max_pixels >= 0, "image.max_pixels must be >= 0"),
        (rt.shard_size >= 1, "runtime.shard_size must be >= 1"),
        (rt.num_actors is None or rt.num_actors >= 1, "runtime.num_actors must be >= 1"),
        (rt.gpus_per_actor > 0, "runtime.gpus_per_actor must be > 0"),
        (rt.cpus_per_actor > 0, "runtime.cpus_per_actor must be > 0"),
        (rt.read_threads >= 1, "runtime.read_threads must be >= 1"),
        (rt.prefetch >= 1, "runtime.prefetch must be >= 1"),
        (rt.placement_timeout_s > 0, "runtime.placement_timeout_s must be > 0"),
        (0 <= rt.max_error_fraction <= 1, "runtime.max_error_fraction must be in [0, 1]"),
        (rt.device in ("auto", "cpu", "cuda"), "runtime.device must be auto, cpu or cuda"),
        (job.model.dtype in (None, *DTYPES), f"model.dtype must be one of {', '.join(DTYPES)}"),
        (
            job.model.image_size is None
            or (job.model.image_size >= 64 and job.model.image_size % 32 == 0),
            "model.image_size must be a multiple of 32, at least 64",
        ),
        (job.prompts.zoom_below >= 0, "prompts.zoom_below must be >= 0"),
        (job.prompts.zoom_context >= 1, "prompts.zoom_context must be >= 1"),
        (job.output.mask_row_group_size >= 1, "output.mask_row_group_size must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def to_dict(job: JobConfig) -> dict[str, Any]:
    """The resolved config as plain data, for the run manifest (storage secrets removed)."""
    data = OmegaConf.to_container(OmegaConf.structured(job), resolve=True)
    assert isinstance(data, dict)
    data["storage"] = {"options": {k: "***" for k in data["storage"]["options"]}}
    return data


def as_dictconfig(job: JobConfig) -> DictConfig:
    """The config as an OmegaConf object (for printing as yaml)."""
    return OmegaConf.structured(job)
