"""What every benchmark script does last: print its markdown table and keep a copy."""

from __future__ import annotations

from pathlib import Path


def report(lines: list[str], out: str | None) -> None:
    """Print the table ``lines`` and, with ``out``, write them to that file too."""
    table = "\n".join(lines)
    print(table)
    if out:
        Path(out).write_text(table + "\n")
