"""One writer per output: the lease a command takes on its output before touching it.

``OUT/_lease.json`` names the holder (an id, host, pid, command, when it started, its last
heartbeat). A second command on the same output is refused at once, naming the holder. A dead
holder's lease is taken over: at once on the same host when its process is gone (so a rerun
after ``kill -9`` proceeds immediately), otherwise once its heartbeat is older than
``EXPIRY_S``. The holder refreshes the heartbeat every ``HEARTBEAT_S`` from a thread; a holder
that finds its lease taken over stops (``lost``).

A free local output is taken with an exclusive create (``O_EXCL``): of two takers one wins.
An object store has no create-if-absent here, so a taker writes its record and reads it back
a second later: of two takers racing for a free output, the one whose record is read back
wins, unless their writes land more than that apart in the wrong order (then both may run;
the heartbeat of the one overwritten finds it and stops it within ``HEARTBEAT_S``). A holder
on this host is judged by its process (pid and start time); on another host, or when its
process cannot be inspected, by its heartbeat. Hosts are assumed to agree on the time to
within a few seconds (the expiry is measured on the reader's clock against the writer's).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any

from pipeline.core.errors import UserError, one_line
from pipeline.core.storage import Location

LEASE_NAME = "_lease.json"
HEARTBEAT_S = 15.0
EXPIRY_S = 120.0
SETTLE_S = 0.3  # the pause before reading a freshly written lease back (local disk)
SETTLE_STORE_S = 1.0  # the same on an object store, where a write takes longer to land

# Leases this process holds now (a lease of this pid that is not among them was left behind).
_HELD: set[str] = set()


class OutputBusyError(UserError, RuntimeError):
    """Another command holds the output's lease; the message names it."""


class LeaseLostError(RuntimeError):
    """This command's lease was taken over (its heartbeat was late): it must stop writing."""


@dataclass(frozen=True)
class LeaseRecord:
    """What ``_lease.json`` holds."""

    id: str
    host: str
    pid: int
    command: str
    started_at: float
    heartbeat_at: float
    # The holder process's start time (psutil): a pid reused by another process is not it.
    pid_started: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeaseRecord:
        fields = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in fields})

    def is_live(self, now: float | None = None, expiry_s: float = EXPIRY_S) -> bool:
        """Whether the holder may still be writing: on this host, its process runs (and, in
        this process, the lease is held); elsewhere, or when that cannot be told, its
        heartbeat is recent."""
        recent = (now or time.time()) - self.heartbeat_at <= expiry_s
        if self.host != socket.gethostname():
            return recent
        if self.pid == os.getpid() and self.pid_started == process_started(self.pid):
            return self.id in _HELD
        running = process_runs(self.pid, self.pid_started)
        return recent if running is None else running

    def describe(self) -> str:
        """``host pid 123 (autolabel run), started 12:00:01, last heartbeat 4 s ago``."""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        age = max(0.0, time.time() - self.heartbeat_at)
        return (
            f"{self.host} pid {self.pid} ({self.command}), started {started}, "
            f"last heartbeat {age:.0f} s ago"
        )


def process_started(pid: int) -> float:
    """When process ``pid`` of this host started (0.0 when it cannot be told)."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return 0.0


def process_runs(pid: int, started: float) -> bool | None:
    """Whether the process ``pid`` that started at ``started`` still runs on this host: False
    when it is gone (or the pid now names another process, or a zombie), None when this
    process may not look (another user's: the heartbeat decides)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if started and abs(process.create_time() - started) > 1.0:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, OSError):
        return None


def read_lease(root: Location) -> LeaseRecord | None:
    """The lease on the output ``root``, or None when there is none. A lease file that cannot
    be parsed (half written by another tool, edited by hand) counts as held by an unknown
    holder whose heartbeat is the file's modification time: busy until it expires."""
    file = root.join(LEASE_NAME)
    try:
        data = file.read_json()
    except ValueError:
        data = {}
    if data is None:
        return None
    try:
        return LeaseRecord.from_json(data)
    except TypeError:
        try:
            when = file.fs.modified(file.path).timestamp()
        except Exception:
            when = time.time()
        return LeaseRecord("unreadable", "unknown host", 0, f"unreadable {LEASE_NAME}", when, when)


class Lease:
    """The lease of one command on one output.

    Args:
        root: the output folder.
        command: what holds it, for the refusal message (``autolabel run``).
        expiry_s: a holder on another host whose heartbeat is older than this is dead.
        heartbeat_s: how often the holder refreshes its heartbeat.
    """

    def __init__(
        self,
        root: Location,
        command: str,
        expiry_s: float = EXPIRY_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.root = root
        self.file = root.join(LEASE_NAME)
        now, pid = time.time(), os.getpid()
        self.record = LeaseRecord(
            uuid.uuid4().hex, socket.gethostname(), pid, command, now, now, process_started(pid)
        )
        self.expiry_s, self.heartbeat_s = expiry_s, heartbeat_s
        self.lost = False
        self.took_over: LeaseRecord | None = None
        self._stop = threading.Event()
        self._writing = threading.Lock()  # a heartbeat's read-and-write vs release
        self._thread: threading.Thread | None = None

    def check_free(self) -> LeaseRecord | None:
        """Refuse when a live holder has the lease; takes nothing and writes nothing (what
        ``acquire`` checks first, and all ``autolabel run --dry-run`` checks).

        Returns:
            The record of an expired holder, or None when there is no lease file.

        Raises:
            OutputBusyError: another command holds the lease.
        """
        current = read_lease(self.root)
        if current is not None and current.is_live(expiry_s=self.expiry_s):
            raise OutputBusyError(busy_message(self.root, current, self.expiry_s))
        return current

    def acquire(self) -> Lease:
        """Take the lease, or refuse when a live holder has it; starts the heartbeat.

        Raises:
            OutputBusyError: another command holds the lease (the message names it and says
                how to take over).
        """
        self.took_over = current = self.check_free()
        if current is None and self.root.is_local:
            self.create()  # a free local output: created only if still absent
        else:
            self.write()
        time.sleep(SETTLE_S if self.root.is_local else SETTLE_STORE_S)
        found = read_lease(self.root)
        if found is None or found.id != self.record.id:
            if found is None:
                raise OutputBusyError(f"{self.root}: the lease vanished while taking it; retry")
            raise OutputBusyError(busy_message(self.root, found, self.expiry_s))
        _HELD.add(self.record.id)
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def write(self) -> None:
        """Write this lease's record over the file."""
        self.file.write_json_atomic(asdict(self.record))

    def create(self) -> None:
        """Write the record only if no lease file exists (``O_EXCL``), else refuse."""
        os.makedirs(os.path.dirname(self.file.path), exist_ok=True)
        payload = json.dumps(asdict(self.record), indent=2, sort_keys=True).encode()
        try:
            descriptor = os.open(self.file.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = read_lease(self.root)
            if holder is None:
                raise OutputBusyError(
                    f"{self.root}: the lease changed while taking it; retry"
                ) from None
            raise OutputBusyError(busy_message(self.root, holder, self.expiry_s)) from None
        with os.fdopen(descriptor, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())

    def _beat(self) -> None:
        """Refresh the heartbeat until released; stop as ``lost`` if another took over."""
        while not self._stop.wait(self.heartbeat_s):
            with self._writing:
                if self._stop.is_set():
                    return
                try:
                    found = read_lease(self.root)
                    if found is None or found.id != self.record.id:
                        self.lost = True
                        holder = found.describe() if found else "nobody (the file was removed)"
                        logging.getLogger(__name__).error(
                            "the lease on %s was taken over by %s", self.root, holder
                        )
                        return
                    self.record = replace(self.record, heartbeat_at=time.time())
                    self.write()
                except Exception as error:  # a store outage: try again at the next beat
                    logging.getLogger(__name__).warning("lease heartbeat: %s", one_line(error))

    def check(self) -> None:
        """Raise ``LeaseLostError`` when the lease was taken over."""
        if self.lost:
            raise LeaseLostError(
                f"another command took over {self.root} (this one's heartbeat was late); "
                "stopped writing"
            )

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file if it is still this one's."""
        self._stop.set()
        with self._writing:  # no heartbeat write after this point
            _HELD.discard(self.record.id)
            with contextlib.suppress(Exception):
                found = read_lease(self.root)
                if found is not None and found.id == self.record.id:
                    self.file.remove()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def busy_message(root: Location, holder: LeaseRecord, expiry_s: float) -> str:
    """Why a command is refused an output, and how to take over."""
    return (
        f"{root} is being written by another command: {holder.describe()}. Wait for it to "
        f"finish, or stop it; a holder on another host is taken over {expiry_s:.0f} s after "
        f"its last heartbeat (or remove {root.join(LEASE_NAME)} once you are sure it is dead)"
    )
