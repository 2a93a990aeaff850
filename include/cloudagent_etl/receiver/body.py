"""The one pass the receiver makes over a callback body: spool it, measure it, hash it, sniff its uniqueId.

The receiver stores bytes; parsing is the load step's job. While the body streams in, :class:`BodySpool`
writes it to a spool file (in memory up to a limit, then on disk), counts and hashes it, and feeds it to a
:class:`UniqueIdSniffer`, so the body is read exactly once and landing receives the digest ready-made.

:class:`UniqueIdSniffer` finds the ``uniqueId`` a body carries: the first ``"uniqueId": "<value>"`` pair
(JSON, a multipart ``data`` field, or the percent-decoded ``data`` field of a urlencoded form), or a form
field named ``uniqueId``, which wins over a pair inside the form's data. Every search is linear in the
body (no pattern that can backtrack) and memory stays at one piece plus a small overlap, whatever the
body size or its number of form fields.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import unquote_to_bytes

from cloudagent_etl.landing import CallbackBody
from cloudagent_etl.media_types import FORM_URLENCODED, MULTIPART_FORM, media_type

#: Bytes of the previous piece searched again with the next one, so that a match spanning two is found.
OVERLAP_BYTES = 1024
MAX_UNIQUE_ID_CHARS = 200

_JSON_UNIQUE_ID = re.compile(rb'"uniqueId"[ \t\r\n]*:[ \t\r\n]*"([^"\\\x00-\x1f]{1,200})"')
_FORM_UNIQUE_ID = re.compile(rb"&uniqueId=([^&]{1,600})&")
_MULTIPART_NAME = b'name="uniqueId"'
_MULTIPART_HEADERS_END = b"\r\n\r\n"

#: Finds the first value in a window of the body, or None.
Finder = Callable[[bytes], bytes | None]


class _Search:
    """A pattern searched in a stream of pieces; keeps the first match."""

    def __init__(self, find: Finder) -> None:
        self._find = find
        self._tail = b""
        self.found: bytes | None = None

    def feed(self, piece: bytes) -> None:
        if self.found is not None or not piece:
            return
        window = self._tail + piece
        self.found = self._find(window)
        self._tail = window[-OVERLAP_BYTES:]


def _json_pair(window: bytes) -> bytes | None:
    match = _JSON_UNIQUE_ID.search(window)
    return match.group(1) if match else None


def _form_field(window: bytes) -> bytes | None:
    match = _FORM_UNIQUE_ID.search(window)
    return unquote_to_bytes(match.group(1).replace(b"+", b" ")) if match else None


def _multipart_field(window: bytes) -> bytes | None:
    """The value of a part named ``uniqueId``: after its headers' blank line, up to the next CRLF."""
    start = 0
    while (name := window.find(_MULTIPART_NAME, start)) != -1:
        start = name + len(_MULTIPART_NAME)
        headers_end = window.find(_MULTIPART_HEADERS_END, start, start + OVERLAP_BYTES)
        if headers_end == -1:
            continue
        value_start = headers_end + len(_MULTIPART_HEADERS_END)
        value_end = window.find(b"\r\n", value_start, value_start + MAX_UNIQUE_ID_CHARS + 1)
        if value_end > value_start:
            return window[value_start:value_end]
    return None


class _PercentDecoder:
    """``application/x-www-form-urlencoded`` decoding of a stream; an escape split across pieces is kept."""

    def __init__(self) -> None:
        self._carry = b""

    def decode(self, piece: bytes) -> bytes:
        data = self._carry + piece
        cut = data.find(b"%", max(0, len(data) - 2))
        data, self._carry = (data[:cut], data[cut:]) if cut != -1 else (data, b"")
        return unquote_to_bytes(data.replace(b"+", b" "))

    def flush(self) -> bytes:
        data, self._carry = self._carry, b""
        return unquote_to_bytes(data.replace(b"+", b" "))


class UniqueIdSniffer:
    """The ``uniqueId`` of a body fed piece by piece (see the module docstring for where it looks)."""

    def __init__(self, content_type: str | None) -> None:
        self._kind = media_type(content_type)
        self._json = _Search(_json_pair)
        self._field: _Search | None = None
        self._decoder: _PercentDecoder | None = None
        if self._kind == FORM_URLENCODED:
            self._field = _Search(_form_field)
            self._field.feed(b"&")  # every form field is then delimited on both sides
            self._decoder = _PercentDecoder()
        elif self._kind == MULTIPART_FORM:
            self._field = _Search(_multipart_field)

    def feed(self, piece: bytes) -> None:
        if self._field is not None:
            self._field.feed(piece)
        self._json.feed(self._decoder.decode(piece) if self._decoder is not None else piece)

    def result(self) -> str | None:
        """The uniqueId found (call once the whole body was fed), or None."""
        if self._field is not None and self._kind == FORM_URLENCODED:
            self._field.feed(b"&")
        if self._decoder is not None:
            self._json.feed(self._decoder.flush())
        found = self._field.found if self._field is not None and self._field.found else self._json.found
        if not found:
            return None
        text = found.decode("utf-8", errors="replace").strip()
        return text if text and "\x00" not in text and len(text) <= MAX_UNIQUE_ID_CHARS else None


class BodySpool:
    """A callback body being received: spooled, counted, hashed and sniffed in one pass."""

    def __init__(self, content_type: str | None, spool_dir: Path, in_memory_bytes: int) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=in_memory_bytes, dir=str(spool_dir))  # noqa: SIM115
        self.size = 0
        self._hash = hashlib.sha256()
        self._sniffer = UniqueIdSniffer(content_type)

    def write(self, piece: bytes) -> None:
        self.file.write(piece)
        self.size += len(piece)
        self._hash.update(piece)
        self._sniffer.feed(piece)

    def finish(self) -> tuple[CallbackBody, str | None]:
        """The body ready to store, and the uniqueId it carries (None if none was found)."""
        self.file.seek(0)
        return CallbackBody(self.file, self.size, self._hash.hexdigest()), self._sniffer.result()

    def close(self) -> None:
        self.file.close()
