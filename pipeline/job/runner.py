"""The driver: plan, launch actors, hand out shards, retry, watch progress, summarise.

The driver never touches per-image data: actors read, compute and commit; only counts come
back.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any

import ray

from pipeline.core.config import JobConfig
from pipeline.core.errors import one_line
from pipeline.core.executor import Progress, connect_ray, pending
from pipeline.core.faults import commonest
from pipeline.core.guard import check_apart, refuse_foreign_files
from pipeline.core.lease import Lease, LeaseLostError
from pipeline.core.storage import (
    TRANSIENT_ERRORS,
    Location,
    StorageUnavailableError,
    with_retries,
)
from pipeline.core.writer import (
    RunLayout,
    listing_files,
    read_markers,
    remove_empty_folder,
    remove_partials,
    remove_run,
)
from pipeline.job.listing import (
    continued_listing,
    listing_shards,
    new_listing,
)
from pipeline.job.manifest import RunConflictError, check_compatible, new_manifest
from pipeline.job.progress import ProgressTracker
from pipeline.job.prompt_plan import PlannedPrompts, install_prompt_blocks, plan_prompts
from pipeline.job.sources import InputListing, Shard, list_input
from pipeline.model.registry import (
    ModelSpec,
    check_checkpoint,
    check_weights,
    checkpoint_location,
    resolve_model,
)

MAX_SHARD_ATTEMPTS = 3
# How long the driver waits for the store to come back before it gives up on the manifest.
PATIENT = {"attempts": 7, "first_delay": 1.0, "what": "manifest"}


@dataclass
class RunPlan:
    """A run ready to execute: checked before anything of an existing run was touched (only
    the lease and the new listing are written), holding the output's lease (a dry run's plan:
    nothing written, no lease).

    ``replaces``: the manifest of the run that ``--overwrite`` replaces; its files are removed
    only once a worker has loaded the model (``execute``), so a run that cannot start leaves
    it whole. ``mode``: ``new``, ``resume`` (the same input over the output's run), ``append``
    or ``replace``. ``dry_run``: planned without writing anything or taking the lease; not to
    be executed.
    """

    job: JobConfig
    model: ModelSpec
    source: Location
    output: Location
    checkpoint: Location | None
    shards: list[Shard]
    todo: list[Shard]
    manifest: dict[str, Any]
    lease: Lease | None = None
    replaces: dict[str, Any] | None = None
    mode: str = "new"
    dry_run: bool = False
    added: tuple[int, int] = (0, 0)  # an append's new images and shards
    weights_checked: bool = True  # False: a dry run did not fetch a remote checkpoint
    expired_lease: str | None = None  # a dry run: the dead holder a run would take over from

    @property
    def num_images(self) -> int:
        return sum(s.size for s in self.shards)


@dataclass
class RunSummary:
    """Counts of a finished run, for the summary table and the manifest."""

    output: str
    images: int = 0
    ok: int = 0
    errors: int = 0
    masks: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    failed_shards: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    images_this_run: int = 0
    masks_this_run: int = 0
    fatal: str | None = None
    nodes: int = 0
    retries: int = 0
    attempts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # failed tries
    prompts: dict[str, Any] | None = None  # a prompted run's matched/unmatched counts
    error_kinds: dict[str, int] = field(default_factory=dict)
    over_budget: str | None = None  # why the error rows failed the run

    @property
    def succeeded(self) -> bool:
        return not self.failed_shards and not self.fatal and not self.over_budget


def plan_run(
    job: JobConfig,
    source: Location,
    output: Location,
    overwrite: bool = False,
    prompts: Location | None = None,
    append: bool = False,
    dry_run: bool = False,
) -> RunPlan:
    """Check model, input, prompts and output, take the output's lease, write the run's
    listing and plan the shards: everything that can fail does so here, before any worker
    starts and before a run that ``overwrite`` replaces is touched.

    Args:
        job: the resolved config.
        source: the ``--input`` (folder, glob, image or manifest).
        output: the ``--output`` folder.
        overwrite: replace an output that holds a run with other settings (its files are
            removed once the new run's workers have started; only its own files).
        prompts: label from these prompts (``--prompts``) instead of the automatic grid.
        append: the output's run may have been planned over fewer images: label the new ones
            into new shards (``--append``).
        dry_run: plan all the same (the same checks, refusals and counts) but write nothing
            and take no lease (``--dry-run``); the plan is only to be looked at.

    Returns:
        The plan, holding the output's lease until ``execute`` ends (a plan that will not be
        executed gives it back with ``plan.lease.release()``; a dry run's holds none).

    Raises:
        UserError: ModelError, InputError, PromptsError, RunConflictError, OutputBusyError,
            with a one-line message.
    """
    check_apart(output, {"input": source, "prompts": prompts}, inside_ok=True)
    layout = RunLayout(output)
    refuse_foreign_files(layout)
    model = resolve_model(
        job.model.name, job.model.config, job.model.checkpoint, job.model.image_size
    )
    checkpoint = checkpoint_location(model.checkpoint, source) if model.checkpoint else None
    weights_checked = True
    if checkpoint is not None:
        check_checkpoint(checkpoint)
        weights_checked = check_weights(model, checkpoint, fetch=not dry_run)
    if append and prompts is not None:
        raise RunConflictError(
            "--append extends automatic runs; label new prompts into another --output"
        )
    listing = list_input(source, exclude=output)
    found = plan_prompts(prompts, listing, job.runtime.shard_size) if prompts else None
    try:
        manifest = new_manifest(job, model, source.uri, found.info if found else None)
        if dry_run:
            expired = Lease(output, "autolabel run").check_free()
            plan = RunPlan(job, model, source, output, checkpoint, [], [], manifest, dry_run=True)
            plan.weights_checked = weights_checked
            plan.expired_lease = expired.describe() if expired else None
            return planned(plan, listing, found, overwrite, append)
        lease = Lease(output, "autolabel run").acquire()
        plan = RunPlan(job, model, source, output, checkpoint, [], [], manifest, lease)
        try:
            return planned(plan, listing, found, overwrite, append)
        except BaseException:
            lease.release()
            raise
    finally:
        if found is not None:
            found.close()


def planned(
    plan: RunPlan,
    listing: InputListing,
    found: PlannedPrompts | None,
    overwrite: bool,
    append: bool,
) -> RunPlan:
    """The rest of ``plan_run``, under the lease (a dry run: none): the listing and the shards
    to do."""
    layout = RunLayout(plan.output)
    shard_size = plan.job.runtime.shard_size
    existing = layout.manifest.read_json()
    skipped = {kind: tally.as_dict() for kind, tally in listing.skipped.items() if tally.count}
    if overwrite and existing is not None:
        plan.replaces, existing, plan.mode = existing, None, "replace"
    check_compatible(existing, plan.manifest)
    if existing is None:
        info = {**new_listing(layout, listing, shard_size, plan.dry_run), "skipped": skipped}
        try:
            return plan_shards(plan, info, found, resume=False)
        except BaseException:
            if not plan.dry_run:
                remove_listing(layout, info)
            raise
    if "listing" not in existing:
        raise RunConflictError(
            f"{plan.output} holds a run of an older autolabel (no stored listing); "
            "use another --output, or --overwrite"
        )
    stored = existing["listing"]
    info = continued_listing(layout, stored, listing, shard_size, append, plan.dry_run)
    plan.mode = "resume" if info is stored else "append"
    plan.added = (info["images"] - stored["images"], info["shards"] - stored["shards"])
    info = {**info, "skipped": skipped}
    return plan_shards(plan, info, found, resume=True)


def plan_shards(
    plan: RunPlan, info: dict[str, Any], found: PlannedPrompts | None, resume: bool
) -> RunPlan:
    """Fill in the plan's shards (with their prompts) and those still to do (``resume``: the
    ones without a marker; else all)."""
    layout = RunLayout(plan.output)
    shards = listing_shards(info, plan.job.runtime.shard_size)
    if found is not None and not plan.dry_run:  # a dry run writes no prompt files
        install_prompt_blocks(layout, shards, found)
        shards = [replace(s, prompted=True) for s in shards]
    plan.manifest["listing"] = info
    plan.manifest["planned"] = {"images": info["images"], "shards": info["shards"]}
    todo = set(pending([s.name for s in shards], read_markers(layout) if resume else ()))
    plan.shards, plan.todo = shards, [s for s in shards if s.name in todo]
    return plan


def actor_resources(job: JobConfig) -> tuple[int, dict[str, float]]:
    """How many actors to start and what each one reserves."""
    rt = job.runtime
    resources = ray.cluster_resources()
    gpus = 0.0 if rt.device == "cpu" else resources.get("GPU", 0.0)
    if gpus > 0:
        count = rt.num_actors or max(1, int(gpus / rt.gpus_per_actor))
        return count, {"num_gpus": rt.gpus_per_actor, "num_cpus": min(rt.cpus_per_actor, 1.0)}
    cpus = resources.get("CPU", 1.0)
    count = rt.num_actors or max(1, int(cpus // rt.cpus_per_actor))
    return count, {"num_gpus": 0, "num_cpus": min(rt.cpus_per_actor, cpus)}


def execute(plan: RunPlan, show_progress: bool = True) -> RunSummary:
    """Run the planned shards on Ray actors and return the run's summary; releases the
    plan's lease at the end, whatever happens.

    With ``plan.replaces`` (``--overwrite`` of a run), the old run's files are removed once a
    worker has loaded the model; a run whose workers cannot start leaves the old run whole.

    Args:
        plan: from ``plan_run``.
        show_progress: draw the live progress bar.
    """
    if plan.dry_run:
        raise ValueError("a dry run's plan is for looking at; plan again to execute")
    try:
        return execute_plan(plan, show_progress)
    except BaseException:  # e.g. Ctrl-C before a replaced run was removed: drop the new plan
        if plan.replaces is not None:
            remove_listing(RunLayout(plan.output), plan.manifest["listing"])
        raise
    finally:
        if plan.lease is not None:
            plan.lease.release()


def execute_plan(plan: RunPlan, show_progress: bool) -> RunSummary:
    """``execute`` under the lease."""
    from pipeline.job.worker import ShardWorker

    layout = RunLayout(plan.output)
    if plan.replaces is None:
        start_output(plan, layout)
    start = time.time()
    summary = RunSummary(
        output=str(plan.output),
        shards_skipped=len(plan.shards) - len(plan.todo),
        prompts=plan.manifest.get("prompts"),
    )
    if plan.todo:
        connect_ray(plan.job.runtime.address)
        tracker = ProgressTracker.options(scheduling_strategy=on_this_node()).remote()
        count, resources = actor_resources(plan.job)
        count = min(count, len(plan.todo))
        remote_worker = ray.remote(max_restarts=0)(ShardWorker).options(**resources)

        def launch():
            args = (plan.job, plan.model, plan.source, plan.output, plan.checkpoint, tracker)
            return remote_worker.remote(*args, prompted=plan.manifest.get("prompts") is not None)

        total = sum(s.size for s in plan.todo)
        view = Progress("labelling", total, "images", extra="masks", enabled=show_progress)
        dispatcher = ShardDispatcher(plan.todo, launch, tracker, view, summary)
        dispatcher.placement_timeout = plan.job.runtime.placement_timeout_s
        dispatcher.lease = plan.lease
        try:
            dispatcher.start(count)
            if plan.replaces is not None:
                dispatcher.wait_ready()
                check_lease(plan)
                remove_run(layout, plan.replaces)
                plan.replaces = None
                start_output(plan, layout)
            with view:
                dispatcher.work()
        except (WorkerStartError, NoWorkerError, LeaseLostError) as error:
            summary.fatal = str(error)
            for shard in plan.todo:
                if shard.name not in dispatcher.done:
                    summary.failed_shards.setdefault(shard.name, summary.fatal)
        finally:  # no worker outlives the driver's hold on the output
            for worker in dispatcher.workers.values():
                ray.kill(worker, no_restart=True)
            ray.kill(tracker)
    summary.seconds = time.time() - start
    if plan.lease is not None and plan.lease.lost:  # another holds the output now
        return summary
    if plan.replaces is not None:  # never started: the old run stays as it was
        abandon_plan(plan, layout, summary)
        return summary
    finish_manifest(plan, summary, layout)
    return summary


def check_lease(plan: RunPlan) -> None:
    """Raise ``LeaseLostError`` when the plan's lease was taken over."""
    if plan.lease is not None:
        plan.lease.check()


def start_output(plan: RunPlan, layout: RunLayout) -> None:
    """Write the run's manifest (status ``running``) and clear a killed writer's partials."""
    layout.manifest.write_json_atomic(plan.manifest)
    remove_partials(layout)


def abandon_plan(plan: RunPlan, layout: RunLayout, summary: RunSummary) -> None:
    """Remove the listing of a plan that never started, and say the old run was kept."""
    remove_listing(layout, plan.manifest["listing"])
    summary.fatal = f"{summary.fatal}; the run at {plan.output} was left as it was"


def remove_listing(layout: RunLayout, info: dict[str, Any]) -> None:
    """Remove a plan's listing files and folder (a plan that will not run)."""
    for entry in listing_files(layout, info):
        entry.remove()
    remove_empty_folder(layout.listing_dir.join(info["folder"]))


def on_this_node():
    """A scheduling strategy that keeps an actor on the driver's node (which outlives the
    others as far as this run is concerned)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


class WorkerStartError(RuntimeError):
    """An actor could not load the model: every shard would fail the same way."""


class NoWorkerError(RuntimeError):
    """No node can hold a worker any more (nodes lost, resources gone)."""


class ShardDispatcher:
    """Hands shards to workers, two in flight each, and retries failed shards on fresh actors.

    A worker whose shard failed (its process died, or the shard raised, e.g. a CUDA error) is
    killed and replaced, so a broken CUDA context never sees another shard. A shard is tried
    ``MAX_SHARD_ATTEMPTS`` times, then recorded as failed. A worker no node takes within
    ``placement_timeout`` seconds (its node lost, the cluster full) is given up: its shards go
    to the others, and with no worker left the run stops with ``NoWorkerError``.

    Args:
        todo: shards to process.
        launch: starts one worker actor and returns its handle.
        tracker: the ``ProgressTracker`` actor; view: the run's ``Progress``.
        summary: counts of this run, updated in place.
    """

    def __init__(self, todo: list[Shard], launch, tracker, view, summary: RunSummary) -> None:
        self.queue = deque((shard, 1) for shard in todo)
        self.in_flight: dict[Any, tuple[Shard, int, Any]] = {}
        self.replaced: dict[int, Any] = {}  # id(dead worker) → its replacement
        self.retired: list[Any] = []  # dead workers, kept so that their ids stay unique
        self.workers: dict[int, Any] = {}  # id → every worker alive or being placed
        self.placing: dict[int, tuple[Any, float]] = {}  # id → (ready ref, since)
        self.placement_timeout = 300.0
        self.done: set[str] = set()
        self.lease: Lease | None = None
        self.launch, self.tracker, self.view, self.summary = launch, tracker, view, summary

    def start(self, num_workers: int) -> None:
        """Launch ``num_workers`` actors (they load the model while placed)."""
        for _ in range(num_workers):
            self.start_worker()

    def wait_ready(self) -> None:
        """Wait until one worker has loaded the model.

        Raises:
            WorkerStartError: a worker failed to start (the cause in one line).
            NoWorkerError: no worker was placed within the placement timeout.
        """
        refs = {ready: key for key, (ready, _) in self.placing.items()}
        deadline = time.monotonic() + self.placement_timeout
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
            for ref in done:
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError as error:
                    raise WorkerStartError(worker_failure(error)) from error
                self.placing.pop(refs[ref], None)
                return
            if time.monotonic() > deadline:
                raise NoWorkerError(
                    f"no worker started within {self.placement_timeout:.0f} s (the cluster "
                    f"has {format_resources(ray.cluster_resources())})"
                )

    def work(self) -> None:
        """Hand out shards until none is queued or in flight."""
        self.fill()
        while self.in_flight or self.queue:
            if self.lease is not None:
                self.lease.check()
            ready = []
            if self.in_flight:
                ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=0.5)
            else:  # every shard queued for a worker still being placed
                time.sleep(0.5)
            for ref in ready:
                self.settle(ref)
            self.check_placement()
            self.show()

    def start_worker(self):
        """Launch a worker and watch for it to be placed on a node."""
        worker = self.launch()
        self.workers[id(worker)] = worker
        self.placing[id(worker)] = (worker.pid.remote(), time.monotonic())
        return worker

    def fill(self) -> None:
        """Give every worker queued shards until it has two in flight."""
        for worker in list(self.workers.values()):
            held = sum(1 for _, _, w in self.in_flight.values() if w is worker)
            for _ in range(2 - held):
                self.submit(worker)

    def check_placement(self) -> None:
        """Give up on workers no node took in time: their shards go back to the queue
        (no attempt spent) for the placed workers; with none left, stop with the reason."""
        for key, (ready, since) in list(self.placing.items()):
            if ray.wait([ready], timeout=0)[0]:
                del self.placing[key]
            elif time.monotonic() - since > self.placement_timeout:
                del self.placing[key]
                self.abandon(self.workers.pop(key))
        if self.queue and not self.workers:
            raise NoWorkerError(
                f"no node can hold a worker any more ({len(self.queue)} shard(s) left; the "
                f"cluster has {format_resources(ray.cluster_resources())}); rerun the same "
                "command on a cluster with room to finish them"
            )
        self.fill()

    def abandon(self, worker) -> None:
        """Kill an unplaced worker and put its (never started) shards back in the queue."""
        logging.getLogger(__name__).warning(
            "a worker found no node in %.0f s; going on with %d worker(s)",
            self.placement_timeout,
            len(self.workers),
        )
        ray.kill(worker, no_restart=True)
        self.retired.append(worker)
        for ref, (shard, attempt, owner) in list(self.in_flight.items()):
            if owner is worker:
                del self.in_flight[ref]
                self.queue.appendleft((shard, attempt))

    def submit(self, worker) -> None:
        """Give ``worker`` the next queued shard, if any."""
        if self.queue and id(worker) in self.workers:
            shard, attempt = self.queue.popleft()
            self.in_flight[worker.process.remote(shard)] = (shard, attempt, worker)

    def settle(self, ref) -> None:
        """Record a finished task: count it, or retry its shard on a fresh worker."""
        shard, attempt, worker = self.in_flight.pop(ref)
        self.tracker.forget.remote(shard.name)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as error:
            if error.actor_init_failed:
                raise WorkerStartError(worker_failure(error)) from error
            self.retry(shard, attempt, f"worker died: {one_line(error)}")
            worker = self.replacement(worker)
        except ray.exceptions.RayTaskError as error:
            cause = error.cause or error
            self.retry(shard, attempt, f"{type(cause).__name__}: {one_line(cause)}")
            worker = self.replacement(worker)
        else:
            self.done.add(shard.name)
            if result.get("already_committed"):
                self.summary.shards_skipped += 1
            else:
                self.summary.shards_done += 1
                self.summary.images_this_run += result["images"]
                self.summary.masks_this_run += result["masks"]
        self.submit(worker)

    def replacement(self, worker):
        """The fresh actor standing in for a failed one (started once per failed actor)."""
        if id(worker) not in self.replaced:
            ray.kill(worker, no_restart=True)
            self.retired.append(worker)
            for ref, (shard, attempt, owner) in list(self.in_flight.items()):
                if owner is worker:  # killed here, not failed: no attempt spent
                    del self.in_flight[ref]
                    self.tracker.forget.remote(shard.name)
                    self.queue.appendleft((shard, attempt))
            self.workers.pop(id(worker), None)
            self.placing.pop(id(worker), None)
            self.replaced[id(worker)] = self.start_worker()
        return self.replaced[id(worker)]

    def retry(self, shard: Shard, attempt: int, reason: str) -> None:
        """Queue a failed shard again, or give up on it after ``MAX_SHARD_ATTEMPTS``."""
        log = logging.getLogger(__name__)
        log.warning("%s attempt %d failed: %s", shard.name, attempt, reason)
        tries = self.summary.attempts.setdefault(shard.name, [])
        tries.append({"attempt": attempt, "error": reason, "at": time.time()})
        if attempt < MAX_SHARD_ATTEMPTS:
            self.summary.retries += 1
            self.queue.append((shard, attempt + 1))
        else:
            self.summary.failed_shards[shard.name] = reason

    def show(self) -> None:
        """Update the progress view: finished shards plus the running ones' reports."""
        running = [shard.name for shard, _, _ in self.in_flight.values()]
        try:
            images, masks = ray.get(self.tracker.totals.remote(running), timeout=10)
        except (ray.exceptions.RayError, TimeoutError):  # its node is gone: count whole shards
            images = masks = 0
        s = self.summary
        self.view.update(s.images_this_run + images, s.masks_this_run + masks)


_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): (.+)$")


def worker_failure(error: BaseException) -> str:
    """Why a worker could not start, in one line: the innermost ``SomeError: message`` of
    Ray's wrapped text (the traceback of the actor's constructor), not the wrapping."""
    text = str(error)
    causes = [m for m in map(_ERROR_LINE.match, text.splitlines()) if m]
    reason = f"{causes[-1].group(1)}: {causes[-1].group(2)}" if causes else one_line(error)
    return f"a worker could not start: {' '.join(reason.split())[:300]}"


def format_resources(resources: dict[str, float]) -> str:
    """``{"CPU": 2.0, "GPU": 0.0, "memory": …}`` → ``2 CPU, 0 GPU``."""
    return ", ".join(f"{resources.get(name, 0):g} {name}" for name in ("CPU", "GPU"))


def finish_manifest(plan: RunPlan, summary: RunSummary, layout: RunLayout) -> None:
    """Total the committed shards and record the outcome in the manifest, waiting out a store
    that is briefly away (a minute or two) before giving up with a one-line error."""
    try:
        markers = with_retries(lambda: read_markers(layout), **PATIENT)
    except TRANSIENT_ERRORS as error:
        raise StorageUnavailableError(
            f"the store is unreachable, so the run's manifest was not written "
            f"({one_line(error)}); committed shards are safe: rerun the same command"
        ) from error
    # Ray node ids are per cluster start: count the nodes of this run's shards only (a resumed
    # run's earlier shards were written by nodes of another start, maybe the same machines)
    todo = {shard.name for shard in plan.todo}
    summary.nodes = len({m.get("node") for name, m in markers.items() if name in todo})
    reasons: Counter = Counter()
    for marker in markers.values():
        summary.images += marker["images"]
        summary.ok += marker["ok"]
        summary.errors += marker["errors"]
        summary.masks += marker["masks"]
        reasons.update(marker.get("error_reasons") or {})
        for kind, count in (marker.get("error_kinds") or {}).items():
            summary.error_kinds[kind] = summary.error_kinds.get(kind, 0) + count
    summary.over_budget = error_budget(summary, reasons, plan.job.runtime.max_error_fraction)
    manifest = {
        **plan.manifest,
        "finished_at": time.time(),
        "status": "complete" if summary.succeeded else "failed",
        "reason": failure_reason(summary),
        "counts": {
            "images": summary.images,
            "ok": summary.ok,
            "errors": summary.errors,
            "masks": summary.masks,
            "shards_committed": summary.shards_done + summary.shards_skipped,
        },
        "failed_shards": summary.failed_shards,
        "error_kinds": summary.error_kinds,
        "error_reasons": dict(reasons.most_common(10)),
        "over_budget": summary.over_budget,
        "shard_retries": summary.retries,
        "shard_attempts": summary.attempts,
        "fatal": summary.fatal,
        "seconds": summary.seconds,
    }
    with_retries(lambda: layout.manifest.write_json_atomic(manifest), **PATIENT)


def error_budget(summary: RunSummary, reasons: Counter, max_fraction: float) -> str | None:
    """Why the run's error rows fail it (None: within ``runtime.max_error_fraction``)."""
    if not summary.images or summary.errors <= max_fraction * summary.images:
        return None
    kinds = summary.error_kinds
    what = "failed to read" if kinds.get("read", 0) == summary.errors else "failed"
    if kinds.get("generation", 0) == summary.errors:
        what = "failed mask generation"
    return (
        f"{summary.errors} of {summary.images} images {what}: {commonest(reasons)} "
        f"(more than runtime.max_error_fraction={max_fraction:g} of the run)"
    )


def failure_reason(summary: RunSummary) -> str | None:
    """Why the run failed, in one line (None when it did not): what stopped it, else its
    error rows over budget, else the first failed shard's last reason."""
    if summary.fatal or summary.over_budget:
        return summary.fatal or summary.over_budget
    failed = sorted(summary.failed_shards)
    return f"{failed[0]}: {summary.failed_shards[failed[0]]}" if failed else None
