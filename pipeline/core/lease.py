"""One writer per output: the lease a command takes on its output before touching it.

``OUT/_lease.json`` names the holder (an id, host, pid, command, when it started, its last
heartbeat). A second command on the same output is refused at once, naming the holder. A dead
holder's lease is taken over: at once on the same host when its process is gone (so a rerun
after ``kill -9`` proceeds immediately), otherwise once its heartbeat is older than
``EXPIRY_S``. The holder refreshes the heartbeat every ``HEARTBEAT_S`` from a thread; a holder
that finds its lease taken over stops (``lost``).

An object store has no create-if-absent here, so a taker writes its record and reads it back
after a short pause: of two takers racing for a free output, the one whose record is read
back wins and the other is refused. Hosts are assumed to agree on the time to within a few
seconds (the expiry is measured on the reader's clock against the writer's).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.core.errors import UserError, one_line
from pipeline.core.storage import Location

LEASE_NAME = "_lease.json"
HEARTBEAT_S = 15.0
EXPIRY_S = 120.0
SETTLE_S = 0.3  # the pause before reading a freshly written lease back

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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeaseRecord:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})

    def is_live(self, now: float | None = None, expiry_s: float = EXPIRY_S) -> bool:
        """Whether the holder may still be writing: on this host, its process runs (and, in
        this process, the lease is held); elsewhere, its heartbeat is recent."""
        if self.host == socket.gethostname():
            if self.pid == os.getpid():
                return self.id in _HELD
            return pid_exists(self.pid)
        return (now or time.time()) - self.heartbeat_at <= expiry_s

    def describe(self) -> str:
        """``host pid 123 (autolabel run), started 12:00:01, last heartbeat 4 s ago``."""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        age = max(0.0, time.time() - self.heartbeat_at)
        return (
            f"{self.host} pid {self.pid} ({self.command}), started {started}, "
            f"last heartbeat {age:.0f} s ago"
        )


def pid_exists(pid: int) -> bool:
    """True when a process with this id runs on this host (a zombie counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def read_lease(root: Location) -> LeaseRecord | None:
    """The lease on the output ``root``, or None (none, or unreadable: treated as free)."""
    try:
        data = root.join(LEASE_NAME).read_json()
        return LeaseRecord.from_json(data) if data else None
    except (ValueError, KeyError, TypeError):
        return None


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
        now = time.time()
        self.record = LeaseRecord(
            uuid.uuid4().hex, socket.gethostname(), os.getpid(), command, now, now
        )
        self.expiry_s, self.heartbeat_s = expiry_s, heartbeat_s
        self.lost = False
        self.took_over: LeaseRecord | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Lease:
        """Take the lease, or refuse when a live holder has it; starts the heartbeat.

        Raises:
            OutputBusyError: another command holds the lease (the message names it and says
                how to take over).
        """
        current = read_lease(self.root)
        if current is not None and current.is_live(expiry_s=self.expiry_s):
            raise OutputBusyError(busy_message(self.root, current, self.expiry_s))
        self.took_over = current
        self.write()
        time.sleep(SETTLE_S)
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
        self.file.write_json_atomic(asdict(self.record))

    def _beat(self) -> None:
        """Refresh the heartbeat until released; stop as ``lost`` if another took over."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                found = read_lease(self.root)
                if found is not None and found.id != self.record.id:
                    self.lost = True
                    logging.getLogger(__name__).error(
                        "the lease on %s was taken over by %s", self.root, found.describe()
                    )
                    return
                self.record = LeaseRecord(**{**asdict(self.record), "heartbeat_at": time.time()})
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
        if self._thread is not None:
            self._thread.join(timeout=5)
        _HELD.discard(self.record.id)
        with contextlib.suppress(Exception):
            found = read_lease(self.root)
            if found is not None and found.id == self.record.id:
                self.file.remove()

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


def command_name(argv: list[str] | None = None) -> str:
    """``autolabel run`` from this process's arguments (for the lease record)."""
    args = argv if argv is not None else sys.argv[1:]
    return "autolabel " + (args[0] if args else "")
