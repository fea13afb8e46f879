"""The generator a job asks for: the one place that knows both implementations."""

from __future__ import annotations

from typing import Any

from pipeline.core.config import AMGConfig, GeneratorConfig
from pipeline.model.fast import FastMaskGenerator
from pipeline.model.records import default_dtype
from pipeline.model.reference import MaskGenerator

__all__ = ["default_dtype", "make_generator"]


def make_generator(
    model: Any, amg: AMGConfig, generator: GeneratorConfig, dtype: str, device: str
) -> MaskGenerator | FastMaskGenerator:
    """The generator a job asks for (``generator.impl``), built on ``model``.

    Args:
        model: a built SAM 2 model, on ``device``.
        amg: the mask generator settings.
        generator: which implementation, and the fast one's batch sizes and compilation.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device: ``cpu`` or ``cuda`` (picks the automatic encoder batch).
    """
    if generator.impl == "reference":
        return MaskGenerator(model, amg, dtype=dtype)
    cuda = device.startswith("cuda")
    return FastMaskGenerator(
        model,
        amg,
        dtype=dtype,
        points_per_batch=generator.points_per_batch or (256 if cuda else 32),
        encoder_batch=generator.encoder_batch or (8 if cuda else 1),
        compile=generator.compile,
        tf32=generator.tf32,
        decoder_method=generator.decoder,
    )
