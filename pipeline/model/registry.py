"""Model identity: official names → sam2 config + checkpoint URL, checkpoint fetching, building.

Checkpoints use the official layout (a ``torch.save``-d dict whose ``"model"`` entry is the
state dict), so a random test checkpoint and a downloaded one go through the same loader.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from pipeline.core.config import CONFIG_DIR
from pipeline.core.errors import UserError, one_line, redact
from pipeline.core.storage import Location, strip_protocol

CHECKPOINT_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2"

# name → (sam2 config name, checkpoint URL); the eight checkpoints Meta publishes.
OFFICIAL_MODELS: dict[str, tuple[str, str]] = {
    "sam2-hiera-tiny": ("configs/sam2/sam2_hiera_t.yaml", "072824/sam2_hiera_tiny.pt"),
    "sam2-hiera-small": ("configs/sam2/sam2_hiera_s.yaml", "072824/sam2_hiera_small.pt"),
    "sam2-hiera-base-plus": (
        "configs/sam2/sam2_hiera_b+.yaml",
        "072824/sam2_hiera_base_plus.pt",
    ),
    "sam2-hiera-large": ("configs/sam2/sam2_hiera_l.yaml", "072824/sam2_hiera_large.pt"),
    "sam2.1-hiera-tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "092824/sam2.1_hiera_tiny.pt"),
    "sam2.1-hiera-small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "092824/sam2.1_hiera_small.pt"),
    "sam2.1-hiera-base-plus": (
        "configs/sam2.1/sam2.1_hiera_b+.yaml",
        "092824/sam2.1_hiera_base_plus.pt",
    ),
    "sam2.1-hiera-large": ("configs/sam2.1/sam2.1_hiera_l.yaml", "092824/sam2.1_hiera_large.pt"),
}
OFFICIAL_MODELS = {
    name: (config, f"{CHECKPOINT_BASE}/{path}") for name, (config, path) in OFFICIAL_MODELS.items()
}

# Models trained here and shipped in configs/models/ (yaml + checkpoint in the official layout),
# which the package carries (``pipeline.core.config.CONFIG_DIR``).
SHIPPED_DIR = CONFIG_DIR / "models"
SHIPPED_MODELS: dict[str, tuple[str, str]] = {
    # 512-px SAM 2 trained on synthetic scenes (training/README.md): it knows shapes, not photos.
    "sam2-tiny-synthetic": (
        str(SHIPPED_DIR / "sam2_tiny_synthetic.yaml"),
        str(SHIPPED_DIR / "sam2_tiny_synthetic.pt"),
    ),
}
KNOWN_MODELS = {**OFFICIAL_MODELS, **SHIPPED_MODELS}

# Same switches sam2's build_sam2 applies with apply_postprocessing=True.
POSTPROCESSING_OVERRIDES = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
}


class ModelError(UserError, ValueError):
    """A model that cannot be resolved or loaded; the message is one line for the user."""


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a sam2 config (package name or yaml path) and a checkpoint URI."""

    config: str
    checkpoint: str | None
    name: str | None = None
    image_size: int | None = None  # run at this input size instead of the config's


def resolve_model(
    name: str | None, config: str | None, checkpoint: str | None, image_size: int | None = None
) -> ModelSpec:
    """Turn the ``model.*`` settings into a concrete config and checkpoint.

    Args:
        name: one of ``OFFICIAL_MODELS`` or ``SHIPPED_MODELS``, or None.
        config: a sam2 config name (``configs/sam2.1/sam2.1_hiera_t.yaml``) or a yaml path;
            overrides the name's config.
        checkpoint: local path or fsspec URI (``s3://``, ``https://`` …); overrides the
            name's download URL.
        image_size: run the model at this input size (None: the config's).
    """
    if name is not None and name not in KNOWN_MODELS:
        known = ", ".join(KNOWN_MODELS)
        raise ModelError(f"unknown model.name {name!r}; expected one of: {known}")
    default_config, default_url = KNOWN_MODELS.get(name, (None, None))
    config = config or default_config
    checkpoint = checkpoint or default_url
    if config is None:
        raise ModelError("set model.name, or model.config and model.checkpoint")
    if not is_package_config(config) and not Path(config).is_file():
        raise ModelError(f"model.config {config!r} is neither a sam2 config nor a yaml file")
    # A name whose config was swapped for another no longer names the model that runs.
    return ModelSpec(
        config=config,
        checkpoint=checkpoint,
        name=name if config == default_config else None,
        image_size=image_size,
    )


def is_package_config(config: str) -> bool:
    """True when ``config`` names a yaml shipped inside the sam2 package."""
    import importlib.util

    spec = importlib.util.find_spec("sam2")
    root = Path(spec.origin).parent if spec and spec.origin else None
    return root is not None and config.startswith("configs/") and (root / config).is_file()


def checkpoint_location(uri: str, storage: Location | None = None) -> Location:
    """The checkpoint's location, opened with ``storage``'s options when given (a checkpoint
    in the same object store as the job's data), else with none (local files, public URLs)."""
    try:
        return storage.at(uri) if storage is not None else Location(uri)
    except Exception as error:  # any filesystem error means "cannot read it"
        raise ModelError(f"cannot read checkpoint {redact(uri)}: {one_line(error)}") from error


def check_checkpoint(checkpoint: Location) -> None:
    """Fail fast (before any model loads) when a checkpoint cannot be found.

    Args:
        checkpoint: where the checkpoint is.
    """
    try:
        found = checkpoint.exists()
    except Exception as error:  # any filesystem error means "cannot read it"
        raise ModelError(f"cannot read checkpoint {checkpoint}: {one_line(error)}") from error
    if not found and checkpoint.uri.startswith(("http://", "https://")):
        unreachable = reach_error(checkpoint)
        if unreachable:
            raise ModelError(
                f"cannot reach checkpoint {checkpoint} ({unreachable}); fetch it where there is "
                "a network and give model.checkpoint=PATH (a local path or a bucket URI)"
            )
    if not found:
        raise ModelError(f"checkpoint not found: {checkpoint}")


def reach_error(checkpoint: Location) -> str | None:
    """Why a web checkpoint that ``exists()`` calls missing could not be asked for (fsspec's
    HTTP filesystem answers False for a host it cannot reach too); None when the server
    answered that it has no such file."""
    import aiohttp

    try:
        checkpoint.fs.info(checkpoint.path)
    except Exception as error:  # fsspec wraps a failed connection in FileNotFoundError
        cause = error.__cause__ or error
        if isinstance(cause, aiohttp.ClientConnectionError | OSError) and not isinstance(
            cause, FileNotFoundError
        ):  # offline, DNS, refused, TLS: the server never answered
            return one_line(cause)
    return None


def check_weights(spec: ModelSpec, checkpoint: Location, fetch: bool = True) -> bool:
    """Fail fast (before any output is touched) when the checkpoint cannot be loaded or does
    not fit the model config: the same test sam2's strict ``load_state_dict`` makes, on a model
    built without weights (no memory for them). A remote checkpoint is fetched into this
    node's cache, where a worker on this node finds it.

    Args:
        spec: the resolved config (and input size).
        checkpoint: where ``spec.checkpoint`` is.
        fetch: False (``run --dry-run``): write nothing, so a remote checkpoint is not
            fetched (nor checked) and no "verified" stamp is left.

    Returns:
        Whether the weights were checked (False only for a remote one with ``fetch`` off).

    Raises:
        ModelError: unreadable (corrupt, truncated, not a torch file), not in the official
            layout, or with missing, unexpected or misshapen weights; one line.
    """
    if not fetch and not checkpoint.is_local:
        return False
    try:
        path = local_checkpoint(checkpoint)
    except Exception as error:
        raise ModelError(f"cannot read checkpoint {checkpoint}: {one_line(error)}") from error
    stamp = verified_stamp(spec, path)
    if stamp.exists():  # this file was checked against this config before, on this node
        return True
    load_weights_for(spec, checkpoint, path)
    if fetch:
        with contextlib.suppress(OSError):  # a read-only cache only costs the next run the check
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()
    return True


def verified_stamp(spec: ModelSpec, path: str) -> Path:
    """The file that says this checkpoint (by path, size and modification time) fits this
    config: ``check_weights`` pays for a model build once per node, not once per run."""
    info = os.stat(path)
    config = Path(spec.config).read_bytes() if Path(spec.config).is_file() else spec.config
    identity = repr(
        (os.path.realpath(path), info.st_size, info.st_mtime_ns, config, spec.image_size)
    )
    return cache_dir() / "verified" / hashlib.sha256(identity.encode()).hexdigest()[:24]


def load_weights_for(spec: ModelSpec, checkpoint: Location, path: str) -> None:
    """The body of ``check_weights``: load the file, compare its weights with the model's."""
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # an old-format file cannot be memory-mapped; a bad one says why
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelError(f"cannot load checkpoint {checkpoint}: {load_failure(error)}") from error
    weights = state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise ModelError(f"{checkpoint} is not a SAM 2 checkpoint (no 'model' state dict)")
    expected = {name: tuple(t.shape) for name, t in empty_model(spec).state_dict().items()}
    problems = [f"missing {name}" for name in expected if name not in weights]
    problems += [f"unexpected {name}" for name in weights if name not in expected]
    problems += [
        f"{name} is {tuple(weights[name].shape)}, not {shape}"
        for name, shape in expected.items()
        if name in weights and tuple(weights[name].shape) != shape
    ]
    if problems:
        shown = "; ".join(problems[:3]) + (f" … ({len(problems)} in all)" if problems[3:] else "")
        raise ModelError(f"{checkpoint} does not fit model config {spec.config}: {shown}")


def load_failure(error: BaseException) -> str:
    """A ``torch.load`` failure in one line: torch's weights-only message wraps the cause
    (``invalid load key``) in advice meant for code that trusts the file; keep the cause."""
    text = " ".join(str(error).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text[text.index(marker) + len(marker) :].split(" Check the documentation")[0]
    return f"{type(error).__name__}: {text.strip()[:200] or 'unreadable'}"


def empty_model(spec: ModelSpec):
    """The model of ``spec`` with its parameters on the meta device (shapes, no memory)."""
    import torch
    from hydra.utils import instantiate

    original = torch.nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None:
            kind = type(module._parameters[name])
            module._parameters[name] = kind(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register
    try:
        return instantiate(load_model_config(spec.config, spec.image_size).model, _recursive_=True)
    finally:
        torch.nn.Module.register_parameter = original


def cache_dir() -> Path:
    """Per-node checkpoint cache: ``$AUTOLABEL_CACHE`` or ``~/.cache/autolabel/checkpoints``."""
    default = Path.home() / ".cache" / "autolabel" / "checkpoints"
    return Path(os.environ.get("AUTOLABEL_CACHE", default))


def local_checkpoint(checkpoint: Location) -> str:
    """Return a local path for ``checkpoint``, downloading a remote one once per node.

    Concurrent callers (several actors starting on one node) serialise on a file lock; the
    file is written under a temporary name and renamed, so a reader never sees a partial one.

    Args:
        checkpoint: where the checkpoint is.
    """
    fs, path, uri = checkpoint.fs, checkpoint.path, checkpoint.uri
    if "file" in as_tuple(fs.protocol):
        return strip_protocol(uri)
    from filelock import FileLock

    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = cache_dir() / f"{digest}-{Path(path).name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.exists():
            partial = target.with_name(target.name + ".partial")
            fs.get_file(path, str(partial))
            os.replace(partial, target)
    return str(target)


def as_tuple(protocol: str | tuple[str, ...]) -> tuple[str, ...]:
    """fsspec's ``protocol`` is a string or a tuple; make it a tuple."""
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def load_model_config(config: str, image_size: int | None = None) -> Any:
    """Load a sam2 model config, by package name through hydra or by path, as an OmegaConf.

    Args:
        config: a sam2 config name or yaml path.
        image_size: override the model's input size (None keeps it).
    """
    from omegaconf import OmegaConf

    if is_package_config(config):
        import sam2  # noqa: F401  (initialises hydra's search path on the sam2 package)
        from hydra import compose

        cfg = compose(config_name=config)
    else:
        cfg = OmegaConf.load(config)
    overrides = dict(POSTPROCESSING_OVERRIDES)
    if image_size:
        overrides["model.image_size"] = image_size
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    return cfg


def build_model(spec: ModelSpec, device: str, checkpoint: Location | None = None):
    """Build a SAM 2 model in eval mode on ``device`` with the checkpoint's weights.

    Package configs go through sam2's own ``build_sam2``; a yaml path is loaded the same way
    (same post-processing switches, same checkpoint loader).

    Args:
        spec: the resolved config and checkpoint.
        device: ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``.
        checkpoint: where ``spec.checkpoint`` is, opened with the job's storage options
            (default: ``checkpoint_location(spec.checkpoint)``, no options).
    """
    if checkpoint is None and spec.checkpoint:
        checkpoint = checkpoint_location(spec.checkpoint)
    ckpt = local_checkpoint(checkpoint) if checkpoint is not None else None
    if is_package_config(spec.config):
        from sam2.build_sam import build_sam2

        extra = [f"++model.image_size={spec.image_size}"] if spec.image_size else []
        return build_sam2(
            spec.config, ckpt, device=device, mode="eval", hydra_overrides_extra=extra
        )
    from hydra.utils import instantiate
    from sam2.build_sam import _load_checkpoint

    model = instantiate(load_model_config(spec.config, spec.image_size).model, _recursive_=True)
    _load_checkpoint(model, ckpt)
    return model.to(device).eval()


def save_random_checkpoint(config: str, out: str, seed: int = 0) -> str:
    """Write a randomly initialised model for ``config`` in the official checkpoint layout.

    Used by the offline demo and tests, where official weights cannot be downloaded.

    Args:
        config: a sam2 config name or yaml path.
        out: where to write the ``.pt`` file (local path or fsspec URI).
        seed: torch seed, so the same seed gives the same weights.
    """
    import torch
    from hydra.utils import instantiate

    torch.manual_seed(seed)
    model = instantiate(load_model_config(config).model, _recursive_=True)
    with fsspec.open(out, "wb") as f:
        torch.save({"model": model.state_dict()}, f)
    return out
