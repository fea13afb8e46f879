"""What ``autolabel tune`` does, without the HTTP: run the project's generator over a few sample
images with settings edited on the page, keep each try, and turn a try into overrides and a
preset.

One process, no Ray: the model is built once per model setting and reused across tries; each
try is the job's own ``make_generator`` on the job's own decoded images, so what the page shows
is what ``autolabel run`` with the same settings writes.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from PIL import Image

from pipeline.core import rle
from pipeline.core.config import ConfigError, JobConfig, as_dictconfig, load_config
from pipeline.core.imageio import ImageReadError, load_image
from pipeline.core.storage import Location
from pipeline.job.sources import list_images
from pipeline.model.factory import default_dtype, make_generator
from pipeline.model.registry import build_model, checkpoint_location, resolve_model
from pipeline.results.overlays import draw_overlay, placeholder

# The settings the page edits: config key → (label, type).
TUNABLE: dict[str, tuple[str, type]] = {
    "amg.points_per_side": ("points per side", int),
    "amg.pred_iou_thresh": ("predicted IoU threshold", float),
    "amg.stability_score_thresh": ("stability score threshold", float),
    "amg.box_nms_thresh": ("box NMS threshold", float),
    "amg.crop_n_layers": ("crop layers", int),
    "amg.min_mask_region_area": ("min region area (px)", int),
    "amg.max_mask_area_fraction": ("max mask area fraction", float),
    "image.max_short_side": ("image short side (px, 0 = as is)", int),
}
MAX_TRIES = 20


@dataclass
class Try:
    """One press of "run": its settings, and per sample image the masks, time and overlay."""

    number: int
    overrides: list[str]
    images: list[dict[str, Any]] = field(default_factory=list)
    overlays: list[bytes] = field(default_factory=list)
    seconds_per_image: float = 0.0
    preset_yaml: str = ""  # the try's whole config as a preset (``Tuner.preset_yaml``)

    def summary(self) -> dict[str, Any]:
        """The try as plain data for the page (overlays by URL), with its settings as
        ``key=value`` arguments and as a preset."""
        return {
            "number": self.number,
            "overrides": self.overrides,
            "args": " ".join(self.overrides),
            "preset_yaml": self.preset_yaml,
            "images": self.images,
            "masks": sum(image["masks"] for image in self.images),
            "seconds_per_image": self.seconds_per_image,
        }


class Tuner:
    """Tries generator settings on a few images of an input.

    Args:
        source: the input (folder, glob, manifest; local or object storage).
        preset: the preset the page starts from (name or yaml path), or None.
        overrides: ``key=value`` settings on top of the preset (the model is chosen here).
        sample: how many images of the input to try on (the first ones by URI).
    """

    def __init__(
        self,
        source: Location,
        preset: str | None = None,
        overrides: list[str] | None = None,
        sample: int = 4,
    ) -> None:
        self.source = source
        self.preset = preset
        self.base_overrides = list(overrides or [])
        self.base = load_config(preset, self.base_overrides)
        self.uris = [image.uri for image in list_images(source)[:sample]]
        self.tries: list[Try] = []
        self.numbered = 0
        self.models: dict[Any, Any] = {}
        self.lock = threading.Lock()

    def settings(self, job: JobConfig | None = None) -> dict[str, Any]:
        """The tunable settings' current values (of ``job``, default the starting config)."""
        config = as_dictconfig(job or self.base)
        return {key: OmegaConf.select(config, key) for key in TUNABLE}

    def job_for(self, settings: dict[str, Any]) -> tuple[JobConfig, list[str]]:
        """The job config for edited ``settings`` and the overrides that make it.

        Raises:
            ConfigError: an unknown key or a value out of range (one line).
        """
        # One override per key: the starting ones, those the page changed replaced in place.
        overrides = {item.partition("=")[0]: item for item in self.base_overrides}
        start = self.settings()
        for key, value in settings.items():
            if key not in TUNABLE:
                raise ConfigError(f"{key} is not a setting the tune page edits")
            try:
                value = TUNABLE[key][1](value)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"{key}: {value!r} is not a number") from error
            if str(value) != str(start[key]) or key in overrides:
                overrides[key] = f"{key}={value}"
        return load_config(self.preset, list(overrides.values())), list(overrides.values())

    def run(self, settings: dict[str, Any]) -> Try:
        """Label the sample images with ``settings`` (one try at a time) and keep the try."""
        job, overrides = self.job_for(settings)
        with self.lock:
            generator = self.generator(job)
            self.numbered += 1  # not len(tries): only the last MAX_TRIES are kept
            attempt = Try(number=self.numbered, overrides=overrides)
            attempt.preset_yaml = self.preset_yaml(attempt)
            total = 0.0
            for uri in self.uris:
                name = uri.rsplit("/", 1)[-1]
                try:
                    pixels = self.pixels(uri, job)
                except ImageReadError as error:  # the others are still labelled
                    attempt.images.append(
                        {"name": name, "masks": 0, "seconds": 0.0, "error": str(error)}
                    )
                    attempt.overlays.append(placeholder(str(error), 256))
                    continue
                start = time.perf_counter()
                records = generator.generate(pixels)
                seconds = time.perf_counter() - start
                total += seconds
                masks = [rle.decode(record["segmentation"]) for record in records]
                attempt.images.append({"name": name, "masks": len(records), "seconds": seconds})
                attempt.overlays.append(png(draw_overlay(pixels, masks)))
            labelled = sum("error" not in image for image in attempt.images)
            attempt.seconds_per_image = total / max(1, labelled)
            self.tries.append(attempt)
            del self.tries[:-MAX_TRIES]
        return attempt

    def find(self, number: int) -> Try:
        """A kept try by number (raises ``KeyError``)."""
        for attempt in self.tries:
            if attempt.number == number:
                return attempt
        raise KeyError(number)

    def pixels(self, uri: str, job: JobConfig):
        """A sample image decoded as the job decodes it."""
        return load_image(
            self.source.at(uri), job.image.max_short_side, job.image.max_pixels
        ).pixels

    def generator(self, job: JobConfig):
        """The job's generator on a model built once per model setting (CPU or CUDA)."""
        import torch

        device = "cuda" if torch.cuda.is_available() and job.runtime.device != "cpu" else "cpu"
        spec = resolve_model(
            job.model.name, job.model.config, job.model.checkpoint, job.model.image_size
        )
        if spec not in self.models:
            checkpoint = (
                checkpoint_location(spec.checkpoint, self.source) if spec.checkpoint else None
            )
            self.models[spec] = build_model(spec, device, checkpoint)
        dtype = job.model.dtype or default_dtype(device)
        return make_generator(self.models[spec], job.amg, job.generator, dtype, device)

    def preset_yaml(self, attempt: Try) -> str:
        """A try's whole config as a preset ``autolabel run --config`` accepts (no storage
        options: credentials stay in the environment)."""
        config = OmegaConf.to_container(as_dictconfig(load_config(self.preset, attempt.overrides)))
        assert isinstance(config, dict)
        config.pop("storage")
        return OmegaConf.to_yaml(config)


def png(pixels) -> bytes:
    """RGB pixels → PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
