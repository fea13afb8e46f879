"""What failed, and what it costs: the one classifier of faults met while labelling an image.

- ``read``: the image itself (unreadable, undecodable, too many pixels, a store that says this
  one object is missing or forbidden) → the image's error row.
- ``generation``: mask generation raised on this image → the image's error row, marked as a
  generation failure; but when generation fails on every image of a shard attempt (or on the
  first ``SYSTEMATIC_AFTER`` in a row) the fault is the setup's, not the images':
  ``SystematicFaultError`` fails the attempt (retried on a fresh actor, then the shard fails).
- ``shard``: the environment (the store unreachable after retries, a CUDA error, out of
  memory) → the shard attempt fails and is retried on a fresh actor; no error row.
"""

from __future__ import annotations

import re
from collections import Counter

from pipeline.core.errors import one_line

READ = "read"
GENERATION = "generation"
SHARD = "shard"
# An attempt whose first this-many generations all failed stops there: it is the setup.
SYSTEMATIC_AFTER = 3
DEVICE_MARKERS = ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "CUDA out of memory")


class SystematicFaultError(RuntimeError):
    """Mask generation failed on every image tried: a fault of the model, the settings or the
    device, never of the images. Fails the shard attempt."""


def is_device_failure(error: BaseException) -> bool:
    """CUDA errors and out-of-memory: the device, not the image, is at fault."""
    if isinstance(error, MemoryError):
        return True
    try:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return any(marker in str(error) for marker in DEVICE_MARKERS)


def classify(error: BaseException, stage: str) -> str:
    """The kind of a fault met at ``stage`` (``read`` or ``generation``) of one image:
    ``read`` or ``generation`` (the image's error row), or ``shard`` (the attempt fails)."""
    from pipeline.core.storage import StorageUnavailableError

    if isinstance(error, StorageUnavailableError):
        return SHARD
    if stage == READ:  # no device is involved in reading (a decode out of memory: the image)
        return READ
    return SHARD if is_device_failure(error) else GENERATION


class GenerationWatch:
    """Counts one shard attempt's generations and raises ``SystematicFaultError`` when the
    failures say the setup, not the images, is at fault."""

    def __init__(self) -> None:
        self.tried = 0
        self.failed = 0
        self.first: BaseException | None = None

    def record(self, error: BaseException | None) -> None:
        """One image reached generation; ``error`` is its failure (None: it worked)."""
        self.tried += 1
        if error is not None:
            self.failed += 1
            self.first = self.first or error
        if self.failed == self.tried == SYSTEMATIC_AFTER:
            raise self.fault()

    def finish(self) -> None:
        """At the end of the attempt: every generation (two or more) failed → the fault."""
        if self.tried >= 2 and self.failed == self.tried:
            raise self.fault()

    def fault(self) -> SystematicFaultError:
        assert self.first is not None
        return SystematicFaultError(
            f"mask generation failed on all {self.failed} image(s) tried: "
            f"{type(self.first).__name__}: {one_line(self.first)}"
        )


_VOLATILE = re.compile(r"0x[0-9a-fA-F]+|\b\d+\b")


def reason_key(reason: str) -> str:
    """An error row's reason without addresses and numbers, so that like reasons count
    together (``cannot identify image file <_io.BytesIO object at 0x…>``)."""
    return _VOLATILE.sub("…", reason)[:120]


def commonest(reasons: Counter, limit: int = 3) -> str:
    """``"cannot decode image: … (4), empty file (2)"``: the commonest reasons."""
    return ", ".join(f"{reason} ({count})" for reason, count in reasons.most_common(limit))
