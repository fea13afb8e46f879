"""Refusals made before a command touches anything: an output that is (or holds, or lies in)
what the command reads, and an output folder holding files autolabel did not write."""

from __future__ import annotations

from pipeline.core.errors import UserError
from pipeline.core.storage import Location
from pipeline.core.writer import RunLayout, foreign_files


class OutputConflictError(UserError, ValueError):
    """The output overlaps what the command reads, or holds others' files; one line."""


def check_apart(
    output: Location, reads: dict[str, Location | None], inside_ok: bool, flag: str = "--output"
) -> None:
    """Refuse an output that is one of ``reads`` or a folder above it; with ``inside_ok``
    False, also one that lies inside it.

    Args:
        output: where the command writes.
        reads: what it reads, by the name the message gives it (``input``, ``run`` …).
        inside_ok: an output inside a read folder is fine (a run's output inside its input:
            the listing leaves it out).
        flag: the output's flag in the message.

    Raises:
        OutputConflictError: with a one-line message.
    """
    for what, read in reads.items():
        if read is None:
            continue
        if output.contains(read):
            raise OutputConflictError(
                f"{flag} {output} is the {what} or a folder above it ({read}); write to a "
                "folder of its own (e.g. beside it)"
            )
        if not inside_ok and read.contains(output):
            raise OutputConflictError(
                f"{flag} {output} lies inside the {what} ({read}); write it elsewhere"
            )


def refuse_foreign_files(layout: RunLayout) -> None:
    """Refuse an output whose ``masks/``, ``images/`` or ``_shards/`` hold files autolabel did
    not write (a dataset's own ``masks/`` or ``images/``), naming a few."""
    foreign = foreign_files(layout)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if foreign[3:] else "")
        raise OutputConflictError(
            f"{layout.root} holds files autolabel did not write ({shown}); a run writes "
            "masks/ and images/ there: use another output folder"
        )
