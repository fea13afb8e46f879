"""What runs inside one Ray actor: load the model once, then turn shards into committed files.

Reading and decoding run in a thread pool ahead of the model, so I/O overlaps inference.
Only counts go back to the driver; rows go straight to storage.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.core.config import JobConfig
from pipeline.core.errors import one_line
from pipeline.core.faults import (
    GENERATION,
    READ,
    SHARD,
    GenerationWatch,
    classify,
    reason_key,
)
from pipeline.core.imageio import DecodedImage, ImageReadError, load_image
from pipeline.core.schema import IMAGE_SCHEMA, MASK_SCHEMA, image_row, image_table, mask_rows
from pipeline.core.storage import Location
from pipeline.core.writer import RunLayout, commit_shard
from pipeline.job.listing import read_shard_prompts, read_shard_uris
from pipeline.job.sources import ImageRef, Shard, image_id_for, listing_hash
from pipeline.model.registry import ModelSpec


def pick_device(requested: str) -> str:
    """``cuda`` when asked for or available (``auto``), else ``cpu``."""
    import torch

    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or torch.cuda.is_available():
        return "cuda"
    return "cpu"


def current_node() -> str:
    """The Ray node this process runs on ("local" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


# Tests set this variable to ``generation`` to make every generation raise, as a broken setup
# (a bad model/setting pair, a broken CUDA install) would, or to ``load`` to make the worker
# fail to load its model (a node without the checkpoint, a GPU out of memory); never set in
# production.
FAULT_HOOK = "AUTOLABEL_TEST_FAULT"


class FailingGenerator:
    """A generator that raises on every image (the ``FAULT_HOOK`` test double of a broken
    setup; it stands in for the generator, not for the pipeline around it)."""

    def generate_many(self, items):
        for key, image in items:
            failure = RuntimeError("injected generation fault (AUTOLABEL_TEST_FAULT)")
            yield key, image if isinstance(image, BaseException) else failure

    def generate(self, image, prompts=None):
        raise RuntimeError("injected generation fault (AUTOLABEL_TEST_FAULT)")


@dataclass
class PromptedOutcome:
    """One image's prompted result: a record per prompt that got a mask, a reason per one that
    did not."""

    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def read_result(loaded: Future) -> DecodedImage | ImageReadError:
    """A decode future's image, or its failure as an ``ImageReadError`` (a fault of the store
    or of memory is raised: the shard fails and is retried, the image itself may be fine)."""
    try:
        return loaded.result()
    except ImageReadError as error:
        return error
    except Exception as error:
        if classify(error, READ) == SHARD:
            raise
        return ImageReadError(f"cannot read image: {one_line(error)}")


def xywh_iou(a: list[float], b: tuple[float, ...]) -> float:
    """IoU of two (x, y, w, h) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class ShardWorker:
    """Holds one model and processes shards, one at a time.

    Args:
        job: the resolved job config.
        model: the resolved model spec.
        source: the run's input (its options open every listed image).
        output: the run's output root.
        checkpoint: where the model's checkpoint is (None: the spec's, with no options).
        progress: an actor handle with ``report(shard, images, masks)``, or None.
        prompted: label the shards' prompts (``--prompts``) instead of the automatic grid.
    """

    def __init__(
        self,
        job: JobConfig,
        model: ModelSpec,
        source: Location,
        output: Location,
        checkpoint: Location | None = None,
        progress: Any = None,
        prompted: bool = False,
    ):
        import torch

        from pipeline.model.factory import default_dtype, make_generator
        from pipeline.model.prompted import PromptedGenerator
        from pipeline.model.registry import build_model

        if os.environ.get(FAULT_HOOK) == "load":
            raise RuntimeError("injected model load fault (AUTOLABEL_TEST_FAULT)")
        logging.getLogger("root").setLevel(logging.WARNING)
        # sam2 builds with torch.jit.script, which torch now flags on every model load.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        self.job = job
        self.layout = RunLayout(output)
        self.progress = progress
        self.source = source
        self.device = pick_device(job.runtime.device)
        if self.device == "cpu":
            torch.set_num_threads(max(1, int(job.runtime.cpus_per_actor)))
        dtype = job.model.dtype or default_dtype(self.device)
        sam = build_model(model, self.device, checkpoint)
        if prompted:
            self.generator = PromptedGenerator(sam, job.amg, dtype=dtype, zoom=job.prompts)
        else:
            self.generator = make_generator(sam, job.amg, job.generator, dtype, self.device)
        if os.environ.get(FAULT_HOOK) == "generation":
            self.generator = FailingGenerator()
        self.readers = ThreadPoolExecutor(job.runtime.read_threads, thread_name_prefix="read")
        self.node = current_node()

    def pid(self) -> int:
        """The actor's process id (tests kill it to simulate a crash)."""
        return os.getpid()

    def process(self, shard: Shard) -> dict[str, Any]:
        """Generate masks for every image of ``shard`` and commit its files.

        A shard whose marker is already written (a retry or another driver got there
        first) is not written again: its marker's counts are returned.

        Returns:
            The shard's counts: images, ok, errors, masks, seconds.

        Raises:
            SystematicFaultError: generation failed on every image tried (the setup's fault).
        """
        uris = read_shard_uris(self.layout, shard)
        digest = listing_hash(uris)
        done = self.committed(shard, digest)
        if done is not None:
            return done
        start = time.perf_counter()
        tables: list[pa.Table] = []
        rows: list[dict[str, Any]] = []
        masks_done = 0
        images = tuple(ImageRef(image_id_for(uri), uri) for uri in uris)
        watch = GenerationWatch()
        own = read_shard_prompts(self.layout, shard, len(images)) if shard.prompted else None
        labelled = self.labelled(images) if own is None else self.prompted(images, own)
        for index, (ref, image, outcome, seconds) in enumerate(labelled):
            prompts = len(own[index]) if own is not None else None
            row, table = self.image_result(ref, image, outcome, seconds, shard.name, prompts)
            if image is not None:
                watch.record(outcome if isinstance(outcome, BaseException) else None)
            rows.append(row)
            if table is not None:
                tables.append(table)
                masks_done += table.num_rows
            self.report(shard.name, len(rows), masks_done)
        watch.finish()
        masks = pa.concat_tables(tables) if tables else MASK_SCHEMA.empty_table()
        stats = {
            **shard_counts(rows),
            "masks": masks.num_rows,
            "seconds": time.perf_counter() - start,
            "listing_hash": digest,
            "node": self.node,
        }
        done = self.committed(shard, digest)  # committed meanwhile (another attempt): keep it
        if done is not None:
            return done
        commit_shard(
            self.layout,
            shard.name,
            masks,
            image_table(rows) if rows else IMAGE_SCHEMA.empty_table(),
            stats,
            row_group_size=self.job.output.mask_row_group_size,
            compression=self.job.output.compression,
        )
        return {**stats, "shard": shard.name}

    def committed(self, shard: Shard, digest: str) -> dict[str, Any] | None:
        """The shard's counts when its marker is written for these very images (``digest``:
        their ``listing_hash``; a marker left by another run, of other images, does not
        count: the shard is redone)."""
        marker = self.layout.marker(shard.name).read_json()
        if marker is None or marker.get("listing_hash") != digest:
            return None
        return {**marker, "shard": shard.name, "already_committed": True}

    def decoded(self, images: tuple[ImageRef, ...]) -> Iterator[tuple[ImageRef, Future]]:
        """Yield each image with its decode future, keeping ``prefetch`` decodes in flight."""
        pending: deque[tuple[ImageRef, Future]] = deque()
        queue = iter(images)
        for ref in queue:
            pending.append((ref, self.readers.submit(self.load, ref.uri)))
            if len(pending) >= self.job.runtime.prefetch:
                yield pending.popleft()
        while pending:
            yield pending.popleft()

    def load(self, uri: str) -> DecodedImage:
        """Read and decode one image with the job's limits."""
        return load_image(
            self.source.at(uri),
            max_short_side=self.job.image.max_short_side,
            max_pixels=self.job.image.max_pixels,
        )

    def labelled(self, images: tuple[ImageRef, ...]) -> Iterator[tuple[Any, ...]]:
        """Each image with its decoded pixels (or read error), its masks (or generation error)
        and the seconds since the previous image was done."""

        def inputs() -> Iterator[tuple[tuple[ImageRef, Any], Any]]:
            for ref, loaded in self.decoded(images):
                image = read_result(loaded)
                if isinstance(image, ImageReadError):
                    yield (ref, None), image
                else:
                    yield (ref, image), image.pixels

        last = time.perf_counter()
        for (ref, image), outcome in self.generator.generate_many(inputs()):
            now = time.perf_counter()
            yield ref, image, outcome, now - last
            last = now

    def prompted(
        self, images: tuple[ImageRef, ...], prompts: tuple[tuple, ...]
    ) -> Iterator[tuple[Any, ...]]:
        """``labelled`` for a prompted shard: each image's prompts → ``PromptedOutcome``."""
        last = time.perf_counter()
        for (ref, loaded), own in zip(self.decoded(images), prompts, strict=True):
            image = read_result(loaded)
            if isinstance(image, ImageReadError):
                outcome, image = image, None
            else:
                try:
                    outcome = self.label_prompts(image, own)
                except Exception as error:  # an error row, or a device failure to retry
                    outcome = error
            now = time.perf_counter()
            yield ref, image, outcome, now - last
            last = now

    def label_prompts(self, image: DecodedImage, prompts: tuple) -> PromptedOutcome:
        """One mask per prompt (coordinates follow the image's downscaling), or its reason."""
        factor_x = image.width / image.original_width
        factor_y = image.height / image.original_height
        scaled = [
            p.in_pixels(image.original_width, image.original_height).scaled(factor_x, factor_y)
            for p in prompts
        ]
        outcome = PromptedOutcome()
        for index, (prompt, result) in enumerate(
            zip(scaled, self.generator.generate(image.pixels, scaled), strict=True)
        ):
            if isinstance(result, str):
                outcome.errors.append(f"prompt {prompt.source_id or index}: {result}")
                continue
            box_iou = xywh_iou(result["bbox"], prompt.box) if prompt.box is not None else None
            outcome.records.append({**result, **prompt.columns(), "box_iou": box_iou})
        return outcome

    def image_result(
        self,
        ref: ImageRef,
        image: DecodedImage | None,
        outcome: Any,
        seconds: float,
        shard: str,
        prompts: int | None = None,
    ) -> tuple[dict[str, Any], pa.Table | None]:
        """One image's row and mask table; a failed read or generation becomes an error row.

        ``prompts``: in a prompted run, the image's prompt count (kept on error rows too, so
        every prompt is accounted for).
        """
        if isinstance(outcome, ImageReadError) or image is None:
            return error_row(ref, shard, str(outcome), READ, prompts), None
        if isinstance(outcome, BaseException):
            if classify(outcome, GENERATION) == SHARD:
                raise outcome  # the shard is retried on a fresh actor with a fresh CUDA context
            reason = f"mask generation failed: {type(outcome).__name__}: {one_line(outcome)}"
            return error_row(ref, shard, reason, GENERATION, prompts), None
        prompted = outcome if isinstance(outcome, PromptedOutcome) else None
        records = prompted.records if prompted else outcome
        row = image_row(
            ref.image_id,
            ref.uri,
            shard,
            width=image.width,
            height=image.height,
            original_width=image.original_width,
            original_height=image.original_height,
            num_masks=len(records),
            seconds=seconds,
            num_prompts=prompts,
            prompt_errors=prompted.errors if prompted else None,
        )
        return row, mask_rows(ref.image_id, ref.uri, records)

    def report(self, shard: str, images: int, masks: int) -> None:
        """Tell the driver's progress tracker how far this shard is (fire and forget)."""
        if self.progress is not None:
            self.progress.report.remote(shard, images, masks)


def error_row(
    ref: ImageRef, shard: str, reason: str, kind: str, prompts: int | None
) -> dict[str, Any]:
    """An image's error row: its reason and kind (``read`` or ``generation``)."""
    return image_row(
        ref.image_id, ref.uri, shard, error=reason, error_kind=kind, num_prompts=prompts
    )


def shard_counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A shard's image counts for its marker: ok and error rows, errors by kind, and the
    commonest reasons (like reasons counted together)."""
    errors = [row for row in rows if row["status"] == "error"]
    reasons = Counter(reason_key(row["error"]) for row in errors)
    return {
        "images": len(rows),
        "ok": len(rows) - len(errors),
        "errors": len(errors),
        "error_kinds": dict(Counter(row["error_kind"] for row in errors)),
        "error_reasons": dict(reasons.most_common(5)),
    }
