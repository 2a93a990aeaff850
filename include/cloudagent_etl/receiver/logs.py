"""The receiver's one masking rule, applied to every log line it or uvicorn writes.

Callback URLs carry secrets (the per-request token, or the fixed URL's shared token), and a sender can
put them in any path: a double or trailing slash, another case, a proxy prefix, an extra segment. So
masking does not depend on a route having matched: :func:`mask_tokens` hides

- every path segment after ``dial-status/`` (any case, any number of slashes) except a UUID, which is a
  request id and not secret;
- any other run of 24 or more URL-safe characters that is not a UUID (a token made by
  ``secrets.token_urlsafe`` has 43);
- the configured shared token, wherever it appears.

:class:`MaskingFormatter` applies it to the whole formatted record, exception text and stack included,
and :func:`install_masking` puts it on every handler of the root logger, which uvicorn's loggers
propagate to (the receiver runs uvicorn with ``log_config=None``).
"""

from __future__ import annotations

import logging
import re

MASK = "***"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_AFTER_DIAL_STATUS = re.compile(r"(dial-status/+)([^\s\"'<>?#]*)", re.IGNORECASE)
_TOKEN_LIKE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{24,}(?![A-Za-z0-9_-])")
_SEGMENT = re.compile(r"[^/]+")


def _mask_segment(match: re.Match[str]) -> str:
    return match[0] if _UUID.fullmatch(match[0]) else MASK


def _mask_after_dial_status(match: re.Match[str]) -> str:
    return match[1] + _SEGMENT.sub(_mask_segment, match[2])


def mask_tokens(text: str, shared_token: str | None = None) -> str:
    """``text`` with every callback token hidden (see the module docstring for the rule)."""
    if shared_token:
        text = text.replace(shared_token, MASK)
    text = _AFTER_DIAL_STATUS.sub(_mask_after_dial_status, text)
    return _TOKEN_LIKE.sub(_mask_segment, text)


class MaskingFormatter(logging.Formatter):
    """A formatter whose every output line went through :func:`mask_tokens`."""

    def __init__(self, fmt: str = LOG_FORMAT, shared_token: str | None = None) -> None:
        super().__init__(fmt)
        self._shared_token = shared_token

    def format(self, record: logging.LogRecord) -> str:
        return mask_tokens(super().format(record), self._shared_token)


def install_masking(shared_token: str | None = None, level: int = logging.INFO) -> None:
    """Mask every line the root logger's handlers write (a worker process without one gets one)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(MaskingFormatter(LOG_FORMAT, shared_token))
