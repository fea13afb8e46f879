"""Work over a run shard by shard: in this process (the default on one machine), or as Ray tasks
on a cluster (``--ray``), so that ``filter``, ``stats`` and ``export`` use the cluster that made
the run. Either way results come back in shard order, and a progress bar counts shards.

A task gets the run's ``Location`` and a shard name and reads only that shard's files; what it
returns travels back through Ray's object store. At most a few tasks per CPU are in flight, so a
run of 10k shards never has all its results in memory at once.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

IN_FLIGHT_PER_CPU = 2


class ShardPool:
    """Runs one function over many shards' arguments, here or on Ray.

    Args:
        use_ray: run the shards as Ray tasks (join ``address``, a running cluster, or start a
            local one); False runs them one after another in this process.
        address: the Ray cluster to join (``ray://…``, ``host:port`` or ``auto``); None: the
            ``RAY_ADDRESS`` variable, a running cluster, or a new local one.
        show_progress: draw a progress bar on stderr.
    """

    def __init__(
        self, use_ray: bool = False, address: str | None = None, show_progress: bool = False
    ) -> None:
        self.use_ray = use_ray or address is not None
        self.address = address
        self.show_progress = show_progress
        if self.use_ray:
            import ray

            if not ray.is_initialized():
                ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False)

    def share(self, value: Any) -> Any:
        """``value`` as every task should receive it: put once in Ray's object store."""
        if not self.use_ray:
            return value
        import ray

        return ray.put(value)

    def map(
        self, work: Callable[..., Any], tasks: Iterable[tuple], total: int, what: str
    ) -> Iterator[Any]:
        """``work(*args)`` for each ``args`` of ``tasks``, results in order.

        In this process ``tasks`` is read one item at a time, after the previous result was
        taken, so an argument may depend on the results before it.
        """
        with ProgressBar(what, total, self.show_progress) as advance:
            results = self.on_ray(work, tasks) if self.use_ray else (work(*a) for a in tasks)
            for result in results:
                yield result
                advance()

    def on_ray(self, work: Callable[..., Any], tasks: Iterable[tuple]) -> Iterator[Any]:
        """Ray tasks over ``tasks``, a bounded window in flight, results in order."""
        import ray

        remote = ray.remote(num_cpus=1, max_retries=3)(work)
        window = max(2, IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
        pending: deque = deque()
        for args in tasks:
            pending.append(remote.remote(*args))
            if len(pending) >= window:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())


class ProgressBar:
    """A shard counter on stderr (a no-op when hidden); entering gives ``advance()``."""

    def __init__(self, what: str, total: int, show: bool) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("shards"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not show,
            transient=False,
        )
        self.task = self.progress.add_task(what, total=total)

    def __enter__(self) -> Callable[[], None]:
        self.progress.__enter__()
        return lambda: self.progress.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)
