"""Raw callback bytes -> records, streamed: JSON arrays in slices, any other JSON shape, form bodies."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from itertools import chain, islice
from typing import IO, Any

import ijson
import numpy as np
import orjson

from cloudagent_etl.errors import PayloadError
from cloudagent_etl.forms import form_fields, is_form
from cloudagent_etl.normalize.columns import (
    DEFAULT_BATCH_SIZE,
    MAX_DOCUMENT_DEPTH,
    RECORD_CONTAINER_KEYS,
    SLICE_BYTES,
    UTF8_BOM,
)

Body = bytes | IO[bytes]
"""A payload body: its bytes, or a binary file to stream it from (``landing.open_payload_body``)."""


class _PrefixedReader:
    """A file object giving ``head`` (read to sniff the shape), then the rest of ``stream``."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(size)
        if size < 0:
            data, self._head = self._head + self._stream.read(), b""
        else:
            data, self._head = self._head[:size], self._head[size:]
        return data


_BRACKET_DELTA = np.zeros(256, dtype=np.int8)
_BRACKET_DELTA[[ord("["), ord("{")]] = 1
_BRACKET_DELTA[[ord("]"), ord("}")]] = -1


class _DepthGuard:
    """A file object passing a JSON document through that fails once it nests deeper than ``limit``.

    It sits in front of ijson, whose cost grows with the square of the depth (each event carries its
    full path): 100k ``[`` made it grow past 3.8 GB. Brackets inside strings do not count; the scan is
    vectorized (numpy), a few ms per MB.
    """

    def __init__(self, stream: Any, limit: int = MAX_DOCUMENT_DEPTH) -> None:
        self._stream = stream
        self._limit = limit
        self._depth = 0
        self._in_string = False
        self._backslashes = 0  # the run of backslashes that ended the previous piece

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._stream.read(size)
        if data:
            self._scan(data)
        return data

    def _scan(self, data: bytes) -> None:
        raw = np.frombuffer(data, dtype=np.uint8)
        quotes = np.flatnonzero(raw == ord('"'))
        if len(quotes):
            escaped = [index for index in quotes.tolist() if self._is_escaped(data, index)]
            if escaped:
                quotes = np.setdiff1d(quotes, escaped, assume_unique=True)
        brackets = np.flatnonzero(_BRACKET_DELTA[raw])
        if len(brackets):
            outside = (np.searchsorted(quotes, brackets) + self._in_string) % 2 == 0
            depths = self._depth + np.cumsum(_BRACKET_DELTA[raw[brackets[outside]]], dtype=np.int64)
            if len(depths):
                if int(depths.max()) > self._limit:
                    raise PayloadError(f"payload is nested deeper than {self._limit} levels")
                self._depth = int(depths[-1])
        self._in_string ^= bool(len(quotes) % 2)
        run = len(data) - len(data.rstrip(b"\\"))
        self._backslashes = run if run < len(data) else self._backslashes + run

    def _is_escaped(self, data: bytes, index: int) -> bool:
        start = index
        while start > 0 and data[start - 1] == 0x5C:
            start -= 1
        run = index - start + (self._backslashes if start == 0 else 0)
        return run % 2 == 1


def _json_records(stream: IO[bytes]) -> Iterator[Any]:
    """The records of a JSON body (an array, or an object holding them), streamed."""
    head = b""
    while True:
        piece = stream.read(4096)
        head += piece
        if piece and UTF8_BOM.startswith(head):
            continue
        body = (head[len(UTF8_BOM) :] if head.startswith(UTF8_BOM) else head).lstrip()
        if body:
            break
        if not piece:
            raise PayloadError("payload is empty")
    first = body[:1]
    if first == b"[":
        yield from _array_records(body[1:], stream)
    elif first == b"{":
        guarded = _DepthGuard(_PrefixedReader(body, stream))
        yield from _object_records(ijson.parse(guarded, use_float=False))
    else:
        raise PayloadError("payload is neither a JSON array nor a JSON object")


_RECORD_SEPARATOR = re.compile(rb"\s*,\s*\{")
_EXACT_VALUE_TYPES = frozenset((str, int, bool, type(None)))
_BOUNDARY_TRIES = 8


def _array_records(pending: bytes, stream: IO[bytes]) -> Iterator[Any]:
    """The elements of a JSON array whose ``[`` was read; ``pending`` is what followed it in the head.

    Each slice is cut after the last ``}`` followed by ``,`` and ``{``; ``"[" + slice + "]"`` parses
    only when that cut lies between two top-level elements (a cut inside a string or a nested value
    leaves it unbalanced), so a failed parse just means: try the previous candidate. When no candidate
    works (no objects, an invalid document), ijson takes over the rest and reports any error.
    """
    while True:
        piece = stream.read(SLICE_BYTES)
        buffer = pending + piece if pending else piece
        if not piece:
            tail = buffer.rstrip()
            records = _parsed_slice(tail[:-1]) if tail.endswith(b"]") else None
            if records is None:
                yield from _ijson_elements(buffer, stream)
            else:
                yield from records
            return
        cut = _record_cut(buffer)
        if cut is None:
            if len(buffer) > 4 * SLICE_BYTES:  # no record boundary in sight: not an array of flat objects
                yield from _ijson_elements(buffer, stream)
                return
            pending = buffer
            continue
        records, rest = cut
        yield from records
        pending = rest


def _record_cut(buffer: bytes) -> tuple[list[Any], bytes] | None:
    """The elements before the last valid record boundary of ``buffer``, and the bytes after it."""
    end = len(buffer)
    for _ in range(_BOUNDARY_TRIES):
        brace = buffer.rfind(b"}", 0, end)
        if brace < 0:
            return None
        separator = _RECORD_SEPARATOR.match(buffer, brace + 1)
        if separator is not None:
            records = _parsed_slice(buffer[: brace + 1])
            if records is not None:
                return records, buffer[separator.end() - 1 :]
        end = brace
    return None


def _parsed_slice(elements: bytes) -> list[Any] | None:
    """``elements`` (array items without brackets) parsed exactly, or None when they are not valid JSON."""
    try:
        records = orjson.loads(b"[" + elements + b"]")
    except orjson.JSONDecodeError:
        return None
    if not records:
        return records
    try:
        exact = _EXACT_VALUE_TYPES.issuperset(map(type, chain.from_iterable(map(dict.values, records))))
    except TypeError:  # an element is not an object: let ijson type it
        exact = False
    if exact:
        return records
    # orjson parsed it, so it nests at most MAX_DOCUMENT_DEPTH levels: no guard needed.
    return list(ijson.items(io.BytesIO(b"[" + elements + b"]"), "item", use_float=False))


def _ijson_elements(pending: bytes, stream: IO[bytes]) -> Iterator[Any]:
    """The remaining elements of an array (``pending`` then ``stream``), streamed by ijson."""
    guarded = _DepthGuard(_PrefixedReader(b"[" + pending, stream))
    yield from ijson.items(guarded, "item", use_float=False)


_NO_DATA = re.compile(r"\bno\s+(?:data|records?)\b", re.IGNORECASE)


def _object_records(events: Iterator[tuple[str, str, Any]]) -> Iterator[Any]:
    """The records held by the first top-level key of ``RECORD_CONTAINER_KEYS`` (array or JSON string).

    A container holding ``null`` or ``""`` holds nothing; an object with no records is an empty payload
    when its ``message`` says so ("No data found"), else a :class:`PayloadError`.
    """
    notice: dict[str, str] = {}
    for prefix, event, value in events:
        if prefix == "" and event == "map_key" and value in RECORD_CONTAINER_KEYS:
            start = next(events)
            if start[1] == "start_array":
                yield from ijson.items(chain([start], events), f"{value}.item")
                return
            if start[1] == "string" and start[2].strip():  # records as a JSON string, as forms send them
                yield from _json_records(io.BytesIO(start[2].encode()))
                return
            if start[1] not in ("null", "string"):
                raise PayloadError(
                    f"{value!r} of the payload holds a {start[1].replace('start_', '')}, not records"
                )
        elif prefix in ("status", "message") and event == "string":
            notice[prefix] = value[:200]
    message = notice.get("message", "")
    if notice.get("status", "").strip().lower() == "error":
        raise PayloadError(f"CloudAgent posted an error instead of records: {message!r}")
    if _NO_DATA.search(message):
        return
    raise PayloadError(
        f"JSON object payload holds no records under any of {', '.join(RECORD_CONTAINER_KEYS)}"
        + (f" (message: {message!r})" if message else "")
    )


def iter_records(body: Body, content_type: str | None) -> Iterator[Any]:
    """Every record of a callback body, in order (a record is whatever the array holds, usually a dict).

    Raises :class:`PayloadError` when the body is not one of the accepted shapes or is not valid JSON;
    the error may come after some records were yielded (a truncated document).
    """
    stream = io.BytesIO(body) if isinstance(body, bytes) else body
    try:
        if is_form(content_type):
            yield from _form_records(stream, content_type)
        else:
            yield from _json_records(stream)
    except ijson.JSONError as exc:
        # Only the first line: yajl's next lines quote the document (which may hold secrets).
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise PayloadError(f"payload is not valid JSON: {detail}") from None
    except UnicodeDecodeError:
        raise PayloadError("payload is not UTF-8") from None


def _form_records(stream: IO[bytes], content_type: str | None) -> Iterator[Any]:
    """The records of every ``data`` field of a form body, in order."""
    parts = 0
    for name, value in form_fields(stream, content_type):
        if name == "data":
            parts += 1
            yield from _json_records(value)
    if not parts:
        raise PayloadError("form payload has no 'data' field")


def iter_record_batches(
    body: Body, content_type: str | None, batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[list[Any]]:
    """The records of :func:`iter_records` in lists of at most ``batch_size``."""
    records = iter_records(body, content_type)
    while batch := list(islice(records, batch_size)):
        yield batch
