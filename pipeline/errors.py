"""Turning exceptions into the one-line reasons users see in messages and error rows."""

from __future__ import annotations


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception as one short line: its message with whitespace collapsed, or its type."""
    text = " ".join(str(error).split())
    return text[:limit] if text else type(error).__name__
