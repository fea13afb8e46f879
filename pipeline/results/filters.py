"""Keep only the good masks: score, area and custom predicates, pushed down to Parquet.

Score and area bounds and ``--where`` become one pyarrow expression, so a reader skips row
groups (mask files are sorted by predicted IoU) and columns it does not need. The area fraction
and the per-image top-k need the rows themselves and run on each shard in memory; a shard holds
all masks of its images, so the result is exact.
"""

from __future__ import annotations

import ast
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.core.errors import UserError
from pipeline.core.executor import ShardPool, pending
from pipeline.core.guard import refuse_foreign_files
from pipeline.core.lease import Lease
from pipeline.core.schema import MASK_SCHEMA
from pipeline.core.storage import Location
from pipeline.core.writer import (
    RunLayout,
    commit_shard,
    read_markers,
    remove_partials,
    remove_run,
)
from pipeline.results.dataset import Run, open_source_run, shard_images, shard_masks

# Columns ``--where`` may use: the scalar ones of a mask row.
WHERE_COLUMNS = (
    "image_id",
    "mask_index",
    "area",
    "predicted_iou",
    "stability_score",
    # prompted runs (null elsewhere)
    "box_iou",
    "category_id",
    "source_score",
)


# What the source's manifest says of its own outcome; not the filtered run's.
SOURCE_OUTCOME = (
    "reason",
    "over_budget",
    "failed_shards",
    "fatal",
    "shard_attempts",
    "shard_retries",
    "error_reasons",
)


class FilterError(UserError, ValueError):
    """A filter that cannot be applied; the message is one line for the user."""


@dataclass(frozen=True)
class MaskFilter:
    """Which masks to keep. Every bound is inclusive; None means no bound.

    Args:
        min_predicted_iou: keep masks with ``predicted_iou`` at least this.
        min_stability_score: keep masks with ``stability_score`` at least this.
        min_area: keep masks of at least this many pixels.
        max_area: keep masks of at most this many pixels.
        min_area_fraction: keep masks covering at least this fraction of their image.
        max_area_fraction: keep masks covering at most this fraction of their image.
        top_k: keep at most this many masks per image, the highest predicted IoU first.
        where: any other predicate over the mask columns, in Python syntax, e.g.
            ``"predicted_iou * stability_score > 0.85 and area < 50_000"``.
    """

    min_predicted_iou: float | None = None
    min_stability_score: float | None = None
    min_area: int | None = None
    max_area: int | None = None
    min_area_fraction: float | None = None
    max_area_fraction: float | None = None
    top_k: int | None = None
    where: str | None = None

    def expression(self) -> ds.Expression | None:
        """The part of the filter a Parquet reader can push down (None: keep all rows)."""
        parts = []
        bounds = (
            ("predicted_iou", ">=", self.min_predicted_iou),
            ("stability_score", ">=", self.min_stability_score),
            ("area", ">=", self.min_area),
            ("area", "<=", self.max_area),
        )
        for column, op, value in bounds:
            if value is not None:
                field = ds.field(column)
                parts.append(field >= value if op == ">=" else field <= value)
        if self.where:
            parts.append(parse_where(self.where))
        if not parts:
            return None
        combined = parts[0]
        for part in parts[1:]:
            combined = combined & part
        return combined

    def apply_in_memory(self, masks: pa.Table) -> pa.Table:
        """The filters that need the rows: area fraction, then top-k per image."""
        if self.min_area_fraction is not None and masks.num_rows:
            masks = masks.filter(pc.greater_equal(area_fraction(masks), self.min_area_fraction))
        if self.max_area_fraction is not None and masks.num_rows:
            masks = masks.filter(pc.less_equal(area_fraction(masks), self.max_area_fraction))
        if self.top_k is not None and masks.num_rows:
            masks = top_k_per_image(masks, self.top_k)
        return masks

    def describe(self) -> dict[str, Any]:
        """The filter's settings, for the manifest (unset bounds left out)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def area_fraction(masks: pa.Table) -> pa.Array:
    """Each mask's area divided by its image's area (from the RLE's size)."""
    sizes = pc.struct_field(masks.column("segmentation"), "size")
    height = pc.list_element(sizes, 0).cast(pa.float64())
    width = pc.list_element(sizes, 1).cast(pa.float64())
    return pc.divide(masks.column("area").cast(pa.float64()), pc.multiply(height, width))


def top_k_per_image(masks: pa.Table, k: int) -> pa.Table:
    """At most ``k`` masks per image, those with the highest predicted IoU."""
    order = pc.sort_indices(
        masks, sort_keys=[("image_id", "ascending"), ("predicted_iou", "descending")]
    )
    ranked = masks.take(order)
    ids = ranked.column("image_id").to_numpy()
    starts = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(ids)]))
    rank = np.arange(len(ids)) - group_start
    return ranked.filter(pa.array(rank < k))


COMPARISONS = {
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
}


def true_divide(left: Any, right: Any) -> ds.Expression:
    """``/`` as Python means it on numbers: in floating point, where ``x / 0`` is inf or nan
    (a mask row, not the command, meets a zero); Arrow's integer division would fail."""
    as_float = [as_expression(side).cast(pa.float64()) for side in (left, right)]
    return pc.divide(*as_float)


ARITHMETIC = {
    ast.Add: pc.add,
    ast.Sub: pc.subtract,
    ast.Mult: pc.multiply,
    ast.Div: true_divide,
}


def parse_where(text: str) -> ds.Expression:
    """Turn a Python-syntax predicate over mask columns into a pyarrow expression.

    Supports ``and``/``or``/``not``, comparisons (chained too), ``+ - * /``, numbers, and
    ``column in (v1, v2, …)``. Nothing is evaluated as Python.

    Raises:
        FilterError: a syntax error, an unknown column or an unsupported construct.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise FilterError(f"--where {text!r}: {error.msg}") from error
    expression = to_expression(tree.body, text)
    check_condition(expression, text)
    return expression


def check_condition(expression: Any, text: str) -> None:
    """Refuse an expression that is not a true/false condition on a mask row (a bare number,
    ``not area``, ``area + 1``): tried on one row of the mask columns' own types.

    Raises:
        FilterError: one line, with an example of a condition.
    """
    fix = "give a condition on the mask columns, e.g. 'area > 100'"
    if not isinstance(expression, ds.Expression):
        raise FilterError(f"--where {text!r} is not a condition; {fix}")
    row = pa.table({name: pa.array([1], MASK_SCHEMA.field(name).type) for name in WHERE_COLUMNS})
    try:
        ds.dataset(row).to_table(filter=expression)
    except (pa.ArrowException, TypeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        if "evaluates to " in reason:  # Arrow spells the whole expression out before it
            reason = f"it gives {reason.rsplit('evaluates to ', 1)[1]}, not true or false"
        raise FilterError(f"--where {text!r} is not a condition ({reason}); {fix}") from error


def to_expression(node: ast.AST, text: str) -> Any:
    """One AST node → pyarrow expression or scalar (see ``parse_where``)."""
    if isinstance(node, ast.BoolOp):
        parts = [to_expression(value, text) for value in node.values]
        combined = parts[0]
        for part in parts[1:]:
            combined = combined & part if isinstance(node.op, ast.And) else combined | part
        return combined
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~to_expression(node.operand, text)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return pc.negate(to_expression(node.operand, text))
    if isinstance(node, ast.Compare):
        return compare(node, text)
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        left, right = to_expression(node.left, text), to_expression(node.right, text)
        return ARITHMETIC[type(node.op)](left, right)
    if isinstance(node, ast.Name):
        if node.id not in WHERE_COLUMNS:
            known = ", ".join(WHERE_COLUMNS)
            raise FilterError(f"--where: unknown column {node.id!r} (use {known})")
        return ds.field(node.id)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    raise FilterError(f"--where {text!r}: unsupported expression {ast.unparse(node)!r}")


def compare(node: ast.Compare, text: str) -> ds.Expression:
    """A (possibly chained) comparison, or ``column in (…)``."""
    parts = []
    left = node.left
    for op, right in zip(node.ops, node.comparators, strict=True):
        if isinstance(op, ast.In | ast.NotIn) and isinstance(right, ast.Tuple | ast.List):
            values = [to_expression(element, text) for element in right.elts]
            member = pc.is_in(to_expression(left, text), value_set=pa.array(values))
            parts.append(member if isinstance(op, ast.In) else ~member)
        elif type(op) in COMPARISONS:
            a, b = to_expression(left, text), to_expression(right, text)
            parts.append(COMPARISONS[type(op)](as_expression(a), b))
        else:
            raise FilterError(f"--where {text!r}: unsupported comparison")
        left = right
    combined = parts[0]
    for part in parts[1:]:
        combined = combined & part
    return combined


def as_expression(value: Any) -> ds.Expression:
    """Wrap a plain number so that comparisons build expressions, not booleans."""
    return value if isinstance(value, ds.Expression) else pc.scalar(value)


def score_projection() -> dict[str, ds.Expression]:
    """A Parquet projection of a mask row's scalar columns (``WHERE_COLUMNS``) and its image
    size (``segmentation.size``, for the area fraction): everything but the RLE counts."""
    columns = {name: ds.field(name) for name in WHERE_COLUMNS}
    size = ds.field("segmentation", "size")
    columns["segmentation"] = pc.make_struct(size, field_names=["size"])
    return columns


def kept_scores(run: Run, mask_filter: MaskFilter) -> pa.Table:
    """The score columns of every mask of ``run`` that passes ``mask_filter``.

    The same two steps as ``filter_run`` (the pushdown expression, then the in-memory part),
    over the whole run at once and without the masks' RLE counts: ``num_rows`` is what
    ``autolabel filter`` keeps.
    """
    table = run.masks.to_table(columns=score_projection(), filter=mask_filter.expression())
    return mask_filter.apply_in_memory(table)


def shard_kept_count(source: Location, shard: str, mask_filter: MaskFilter) -> int:
    """How many masks of one shard pass ``mask_filter`` (score columns only)."""
    table = shard_masks(source, shard, score_projection(), mask_filter.expression())
    return mask_filter.apply_in_memory(table).num_rows


def filtered_shard(
    source: Location, shard: str, mask_filter: MaskFilter
) -> tuple[pa.Table, pa.Table]:
    """One shard's kept mask rows and its image rows with ``num_masks`` recounted."""
    masks = shard_masks(source, shard, filter=mask_filter.expression())
    masks = mask_filter.apply_in_memory(masks)
    images = shard_images(source, shard)
    kept = pc.value_counts(masks.column("image_id")) if masks.num_rows else None
    counts: dict[int, int] = {}
    if kept is not None:
        counts = dict(
            zip(kept.field("values").to_pylist(), kept.field("counts").to_pylist(), strict=True)
        )
    num_masks = pa.array(
        [counts.get(i, 0) for i in images.column("image_id").to_pylist()], pa.int32()
    )
    images = images.set_column(images.schema.get_field_index("num_masks"), "num_masks", num_masks)
    return masks.cast(MASK_SCHEMA), images


def filter_shard(
    source: Location, output: Location, shard: str, mask_filter: MaskFilter
) -> dict[str, int]:
    """Filter one shard of ``source`` into the same shard of ``output`` (a task of its own on
    a cluster); returns its counts."""
    masks, images = filtered_shard(source, shard, mask_filter)
    errors = sum(status == "error" for status in images.column("status").to_pylist())
    stats = {
        "images": images.num_rows,
        "ok": images.num_rows - errors,
        "errors": errors,
        "masks": masks.num_rows,
    }
    commit_shard(RunLayout(output), shard, masks, images, stats)
    return stats


def filter_run(
    source: Location,
    output: Location,
    mask_filter: MaskFilter,
    overwrite: bool = False,
    pool: ShardPool | None = None,
    partial: bool = False,
) -> dict[str, Any]:
    """Write a new run holding only the masks that pass ``mask_filter``.

    The new run has the same layout and schema; its image rows carry the new ``num_masks``,
    and its manifest records the filter and the source run. It is written like ``run``
    writes: under the output's lease, shard by shard with commit markers, so the same
    command after a kill resumes where it stopped.

    Args:
        source: the run to read.
        output: where to write the filtered run: neither the source, nor above or inside it;
            must not hold another run unless ``overwrite``.
        mask_filter: what to keep.
        overwrite: replace a run already at ``output`` (only its own files are removed).
        pool: where the shards are filtered (default: this process; ``ShardPool(use_ray=True)``
            for the cluster).
        partial: filter an unfinished run's committed shards (default: refuse it).

    Returns:
        The new run's counts.

    Raises:
        UserError: overlapping folders, another run at ``output``, its lease held.
    """
    run = open_source_run(source, output, "OUT", "filter", partial)
    layout = RunLayout(output)
    refuse_foreign_files(layout)
    with Lease(output, "autolabel filter") as lease:
        manifest = filter_manifest(run, source, mask_filter)
        existing = layout.manifest.read_json()
        if existing is not None and not overwrite:
            if existing.get("fingerprint") != manifest["fingerprint"]:
                raise FilterError(
                    f"{output} already holds a run (not this filter of {source}); use "
                    "--overwrite to replace it"
                )
        elif existing is not None:
            remove_run(layout, existing)
        layout.manifest.write_json_atomic(manifest)
        remove_partials(layout)
        return filter_shards(run, output, mask_filter, manifest, pool or ShardPool(), lease)


def filter_manifest(run: Run, source: Location, mask_filter: MaskFilter) -> dict[str, Any]:
    """The filtered run's manifest as it starts: the source's, with the filter, the source's
    committed shards as its plan, and a fingerprint that a rerun of the same filter shares."""
    described = {"source": str(source), **mask_filter.describe()}
    source_id = [run.manifest.get(key) for key in ("fingerprint", "started_at", "finished_at")]
    identity = json.dumps([source_id, described, run.shards])
    return {
        **{k: v for k, v in run.manifest.items() if k not in SOURCE_OUTCOME},
        "fingerprint": hashlib.sha256(identity.encode()).hexdigest()[:16],
        "status": "running",
        "started_at": time.time(),
        "filter": described,
        "filter_of": {"shards": run.shards},
        "planned": {"shards": len(run.shards), "images": None},
    }


def filter_shards(
    run: Run,
    output: Location,
    mask_filter: MaskFilter,
    manifest: dict[str, Any],
    pool: ShardPool,
    lease: Lease,
) -> dict[str, Any]:
    """Filter the shards not committed yet, then total every committed one (stopping as
    soon as the output's lease is found taken over)."""
    layout = RunLayout(output)
    done = read_markers(layout)
    todo = pending(run.shards, done)
    start = time.time()
    tasks = ((run.location, output, shard, mask_filter) for shard in todo)
    for _ in pool.map(filter_shard, tasks, len(todo), "filter"):
        lease.check()
    lease.check()
    counts = {"images": 0, "ok": 0, "errors": 0, "masks": 0}
    for marker in read_markers(layout).values():
        for key in counts:
            counts[key] += marker[key]
    counts["masks_before"] = run.manifest.get("counts", {}).get("masks")
    finished = {
        **manifest,
        "status": "complete",
        "counts": {**counts, "shards_committed": len(run.shards)},
        "planned": {"shards": len(run.shards), "images": counts["images"]},
        "finished_at": time.time(),
        "seconds": time.time() - start,
        "resumed_shards": len(done),
    }
    layout.manifest.write_json_atomic(finished)
    return finished["counts"]
