"""Where shard work runs: the one Ray start-up, the one progress display, and the pool that
runs a step over many shards, here or as Ray tasks.

A *step* says what happens to one shard: a function of the shard's arguments for ``filter``,
``stats`` and the exports; a worker class that keeps its model between shards for ``run``
(``job/runner``, which hands shards to such workers on Ray actors). Both kinds start Ray here
(``connect_ray``), show ``Progress``, and follow the same commit rules: a shard is done when
its marker is written, a command that writes an output holds its lease (``core/lease``), and
the same command after a kill resumes with the shards that have no marker (``pending``).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

IN_FLIGHT_PER_CPU = 2
# Without a terminal (CI logs, `ray job submit`), print a plain line this often instead.
PLAIN_INTERVAL_S = 10.0


def connect_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` (``ray://…``, ``host:port``, ``auto``), else the
    ``RAY_ADDRESS`` variable's or a running one, else start a local one; once per process."""
    import ray

    if not ray.is_initialized():
        on_sigterm = signal.getsignal(signal.SIGTERM)
        ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False)
        if threading.current_thread() is threading.main_thread() and on_sigterm is not None:
            signal.signal(signal.SIGTERM, on_sigterm)  # ray.init put sys.exit in its place


def pending(names: Iterable[str], committed: Iterable[str]) -> list[str]:
    """The shards of ``names`` (in order) whose marker is not in ``committed``."""
    done = set(committed)
    return [name for name in names if name not in done]


class Progress:
    """Units done of a total (shards, images), with rates and the time left: a live bar on a
    terminal, a plain line every ``PLAIN_INTERVAL_S`` otherwise, nothing when disabled.

    Args:
        what: the label before the bar (``labelling``, ``filter``).
        total: units to do.
        unit: what is counted (``images``, ``shards``).
        extra: a second count shown as a rate (``masks``), or None.
        enabled: False shows nothing (tests, library use).
    """

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "shards",
        extra: str | None = None,
        enabled: bool = True,
    ) -> None:
        self.what, self.total, self.unit, self.extra = what, total, unit, extra
        self.enabled = enabled
        self.console = Console(file=sys.stderr)
        self.live = enabled and self.console.is_terminal
        self.start = time.time()
        self.last_line = 0.0
        self.done = 0
        rates = f"{unit} · {{task.fields[rate]:.2f}} {unit}/s"
        if extra:
            rates += f" · {{task.fields[extra_rate]:.1f}} {extra}/s"
        self.progress = RichProgress(
            TextColumn(f"[bold]{what}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(rates),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self.task = self.progress.add_task(what, total=total, rate=0.0, extra_rate=0.0)

    def __enter__(self) -> Progress:
        self.start = time.time()
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def advance(self, units: int = 1) -> None:
        """Count ``units`` more done."""
        self.update(self.done + units)

    def update(self, done: int, extra: int = 0) -> None:
        """Show the latest totals: ``done`` units and ``extra`` of the second count."""
        self.done = done
        elapsed = max(time.time() - self.start, 1e-6)
        rate, extra_rate = done / elapsed, extra / elapsed
        self.progress.update(self.task, completed=done, rate=rate, extra_rate=extra_rate)
        if self.enabled and not self.live and time.time() - self.last_line >= PLAIN_INTERVAL_S:
            self.last_line = time.time()
            eta = f"{(self.total - done) / rate:.0f} s" if rate > 0 else "?"
            extra_text = f", {extra_rate:.1f} {self.extra}/s" if self.extra else ""
            self.console.print(
                f"{self.what}: {done}/{self.total} {self.unit}, {rate:.2f} {self.unit}/s"
                f"{extra_text}, ETA {eta}",
                highlight=False,
            )


class ShardPool:
    """Runs one step over many shards' arguments, here or as Ray tasks; results in order.

    Args:
        use_ray: run the shards as Ray tasks (join ``address``, a running cluster, or start a
            local one); False runs them one after another in this process.
        address: the Ray cluster to join; None: ``RAY_ADDRESS``, a running one or a new one.
        show_progress: draw a progress bar on stderr.
    """

    def __init__(
        self, use_ray: bool = False, address: str | None = None, show_progress: bool = False
    ) -> None:
        self.use_ray = use_ray or address is not None
        self.address = address
        self.show_progress = show_progress
        if self.use_ray:
            connect_ray(address)

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
        taken, so an argument may depend on the results before it. A Ray task whose worker
        dies is retried (3 times) by Ray; an exception the step raises is raised here.
        """
        with Progress(what, total, "shards", enabled=self.show_progress) as progress:
            results = self.on_ray(work, tasks) if self.use_ray else (work(*a) for a in tasks)
            for result in results:
                yield result
                progress.advance()

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
