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
