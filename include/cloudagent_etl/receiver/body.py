"""What the receiver looks at in a callback body, without parsing it: all reads are bounded in memory.

The receiver stores bytes; parsing is the load step's job. It only needs two facts, both cheap:

- :func:`parse_state`: ``unparseable`` for a body sent as JSON that is not valid JSON (checked only up to
  :data:`PARSE_CHECK_MAX_BYTES`; a bigger body stays ``pending`` and the loader decides), else ``pending``.
- :func:`find_unique_id`: the ``uniqueId`` the body carries, found by a streaming scan for the first
  ``"uniqueId": "<value>"`` pair (JSON, a multipart ``data`` field, or the percent-decoded ``data`` field
  of a urlencoded form) or a form field named ``uniqueId``. Memory stays at one read block plus a small
  overlap whatever the body size or its number of form fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO
from urllib.parse import unquote_to_bytes

import orjson

PARSE_CHECK_MAX_BYTES = 1024 * 1024
READ_BLOCK_BYTES = 1024 * 1024
#: Bytes of one block kept in front of the next, so that a match spanning two blocks is still found.
OVERLAP_BYTES = 1024

_JSON_UNIQUE_ID = re.compile(rb'"uniqueId"\s*:\s*"([^"\\\x00-\x1f]{1,200})"')
_FORM_UNIQUE_ID = re.compile(rb"&uniqueId=([^&]{1,600})&")
_MULTIPART_UNIQUE_ID = re.compile(
    rb'name="uniqueId"[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n\x00]{1,200})\r\n'
)


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    kind = media_type(content_type)
    return kind in ("application/json", "text/json") or kind.endswith("+json")


def parse_state(file: IO[bytes], size: int, content_type: str | None) -> str:
    """``unparseable`` for a small JSON-typed body that is not JSON, else ``pending`` (see module doc)."""
    if not is_json(content_type) or size > PARSE_CHECK_MAX_BYTES:
        return "pending"
    file.seek(0)
    try:
        orjson.loads(file.read())
    except orjson.JSONDecodeError:
        return "unparseable"
    return "pending"


def _blocks(file: IO[bytes]) -> Iterator[bytes]:
    file.seek(0)
    while block := file.read(READ_BLOCK_BYTES):
        yield block


def _percent_decoded(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """``application/x-www-form-urlencoded`` decoding of a stream; an escape split across blocks is kept."""
    carry = b""
    for block in blocks:
        data = carry + block
        cut = data.find(b"%", max(0, len(data) - 2))
        data, carry = (data[:cut], data[cut:]) if cut != -1 else (data, b"")
        yield unquote_to_bytes(data.replace(b"+", b" "))
    if carry:
        yield unquote_to_bytes(carry.replace(b"+", b" "))


def _search(blocks: Iterator[bytes], pattern: re.Pattern[bytes]) -> bytes | None:
    tail = b""
    for block in blocks:
        window = tail + block
        match = pattern.search(window)
        if match:
            return match.group(1)
        tail = window[-OVERLAP_BYTES:]
    return None


def _framed(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """The blocks with ``&`` before and after, so every form field is delimited on both sides."""
    yield b"&"
    yield from blocks
    yield b"&"


def find_unique_id(file: IO[bytes], content_type: str | None) -> str | None:
    """The ``uniqueId`` carried by the body, or None (see the module docstring for where it looks)."""
    kind = media_type(content_type)
    found: bytes | None = None
    if kind == "application/x-www-form-urlencoded":
        field = _search(_framed(_blocks(file)), _FORM_UNIQUE_ID)
        if field is not None:
            found = unquote_to_bytes(field.replace(b"+", b" "))
        else:
            found = _search(_percent_decoded(_blocks(file)), _JSON_UNIQUE_ID)
    else:
        if kind == "multipart/form-data":
            found = _search(_blocks(file), _MULTIPART_UNIQUE_ID)
        if found is None:
            found = _search(_blocks(file), _JSON_UNIQUE_ID)
    if not found:
        return None
    text = found.decode("utf-8", errors="replace").strip()
    return text if text and "\x00" not in text and len(text) <= 200 else None
