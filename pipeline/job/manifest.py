"""The run manifest (``_run.json``): what produced the data, and whether a rerun may join it."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from importlib import metadata
from typing import Any

from pipeline.core.config import JobConfig, to_dict
from pipeline.core.errors import UserError, redact
from pipeline.model.registry import SHIPPED_MODELS, ModelSpec

PACKAGES = ("autolabel", "sam2", "torch", "torchvision", "ray", "pycocotools", "pyarrow", "numpy")

# Settings that change the masks or the shard plan; the rest may differ between reruns.
FINGERPRINT_SECTIONS = ("model", "amg", "image")
FINGERPRINT_RUNTIME = ("shard_size",)
FINGERPRINT_GENERATOR = ("impl",)
# The prompt settings of a prompted run written before boxes were zoomed.
UNZOOMED = {"zoom_below": 0, "zoom_context": 3.0}


class RunConflictError(UserError, ValueError):
    """The output already holds a run made with other settings."""


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the output."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def fingerprint(job: JobConfig, model: ModelSpec, prompts: str | None = None) -> str:
    """A hash of everything that decides the masks: model identity, generator settings and, in
    a prompted run, the prompts (``prompts``: their hash) and how boxes are zoomed."""
    config = to_dict(job)
    identity = {section: config[section] for section in FINGERPRINT_SECTIONS}
    identity["runtime"] = {key: config["runtime"][key] for key in FINGERPRINT_RUNTIME}
    identity["generator"] = {key: config["generator"][key] for key in FINGERPRINT_GENERATOR}
    identity["resolved_model"] = model_identity(model)
    if prompts is not None:
        identity["prompts"] = prompts
        if config["prompts"]["zoom_below"]:  # unzoomed: as runs from before zooming
            identity["prompt_settings"] = config["prompts"]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def model_identity(model: ModelSpec) -> dict[str, Any]:
    """What names the model in a fingerprint: its config and checkpoint, or, for a model the
    package ships, its name and the checkpoint's content (where the package is installed,
    a checkout, a wheel, an image, says nothing about the weights)."""
    if model.name in SHIPPED_MODELS and model.checkpoint == SHIPPED_MODELS[model.name][1]:
        digest = hashlib.sha256()
        with open(model.checkpoint, "rb") as weights:
            for block in iter(lambda: weights.read(1 << 20), b""):
                digest.update(block)
        return {"name": model.name, "checkpoint_sha256": digest.hexdigest()}
    return {"config": model.config, "checkpoint": model.checkpoint}


def new_manifest(
    job: JobConfig,
    model: ModelSpec,
    source: str,
    prompts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest written when a run starts (the plan adds its ``listing`` and ``planned``
    counts once the listing is written).

    Args:
        job: the resolved config.
        model: the resolved model (config + checkpoint).
        source: the ``--input`` as given.
        prompts: a prompted run's prompts: source, hash, matched and unmatched counts.
    """
    return {
        "format": "autolabel-run/2",
        "fingerprint": fingerprint(job, model, prompts["hash"] if prompts else None),
        "prompts": prompts,
        "config": to_dict(job),
        "model": {
            "name": model.name,
            "config": model.config,
            "checkpoint": redact(model.checkpoint) if model.checkpoint else None,
        },
        "input": redact(source),
        "versions": package_versions(),
        "started_at": time.time(),
        "status": "running",
    }


def zooming(config: dict[str, Any]) -> dict[str, Any]:
    """A prompted run's zoom settings as they decide its masks (any with zooming off are
    alike; a config from before zooming has none)."""
    settings = config.get("prompts", UNZOOMED)
    return settings if settings["zoom_below"] else UNZOOMED


def check_compatible(existing: dict[str, Any] | None, manifest: dict[str, Any]) -> None:
    """Refuse to mix runs: the output's manifest must have the same fingerprint.

    Raises:
        RunConflictError: the output holds a run with a different config or model.
    """
    if existing is None or existing.get("fingerprint") == manifest["fingerprint"]:
        return
    old = existing.get("config", {})
    differences = [
        section
        for section in FINGERPRINT_SECTIONS
        if old.get(section) != manifest["config"][section]
    ]
    differences += [
        f"runtime.{key}"
        for key in FINGERPRINT_RUNTIME
        if old.get("runtime", {}).get(key) != manifest["config"]["runtime"][key]
    ]
    if (existing.get("prompts") or {}).get("hash") != (manifest.get("prompts") or {}).get("hash"):
        differences.append("prompts")
    elif manifest.get("prompts") and zooming(old) != zooming(manifest["config"]):
        before = "prompts" not in old  # written by a version that did not zoom boxes
        differences.append(
            "prompts.zoom_below/zoom_context"
            + ("; it was labelled before boxes were zoomed: add prompts.zoom_below=0" * before)
        )
    what = ", ".join(differences) or "model"
    raise RunConflictError(
        f"the output holds a run with different settings ({what}); "
        "use another --output, or --overwrite to replace it"
    )
