"""Turning exceptions into the one-line reasons users see in messages and error rows."""

from __future__ import annotations

import re


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception as one short line: its message with whitespace collapsed, or its type."""
    text = redact(" ".join(str(error).split()))
    return text[:limit] if text else type(error).__name__


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&](?:x-amz-[a-z-]*|signature|sig|token|access_token|key|secret|"
    r"password|credential)[^=&\s]*=)[^&\s]+"
)


def redact(text: str) -> str:
    """Hide credentials in URIs: ``user:pass@`` and signed-URL query parameters."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    return _SECRET_QUERY.sub(r"\g<key>***", text)


class UserError(Exception):
    """An error whose message is meant for the user as it is: one line, exit code 2.

    Every such error of the package derives from this (``ConfigError``, ``InputError``,
    ``ModelError`` …), so the CLI needs no hand-kept list of them.
    """

    exit_code = 2


class OperationError(UserError, RuntimeError):
    """Something the command needed failed (a port in use, a folder it cannot write): one
    line for the user, exit code 1 (``UserError`` s are usage errors, exit code 2)."""

    exit_code = 1
