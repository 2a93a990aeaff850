"""The one pass the receiver makes over a callback body: decode it, spool it, measure it, hash it, sniff
its uniqueId.

The receiver stores bytes; parsing is the load step's job. While the body streams in, :class:`BodySpool`
decodes a gzip or deflate ``Content-Encoding`` (:class:`Inflater`, bounded in size and ratio), writes the
decoded bytes to a spool file (in memory up to a limit, then on disk), counts and hashes them, and feeds
them to a :class:`BodySniffer`, so the body is read exactly once and landing receives the digest
ready-made. What is stored is the decoded body: the load reads it like any other.

:class:`BodySniffer` finds the ``uniqueId`` a body carries: a form field named ``uniqueId`` (urlencoded
or multipart) first; else the ``"uniqueId": "<value>"`` pair of the top-level JSON object (the body, a
multipart ``data`` field, or the percent-decoded ``data`` field of a urlencoded form), so a record's own
``uniqueId`` never decides which request a body answers; else the first such pair at any depth (an array
body whose records carry it). It also reads top-level ``"part": i`` and ``"parts": n`` (a multipart
export delivered as n bodies), the same way. Every search is linear in the body (no pattern that can
backtrack; each piece costs a few C-level scans, none of them a Python loop per byte or per token) and
memory stays at one piece plus a small overlap, whatever the body size, its nesting or its number of form
fields.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote_to_bytes

from cloudagent_etl.landing import CallbackBody
from cloudagent_etl.media_types import FORM_URLENCODED, MULTIPART_FORM, media_type

#: Bytes of the previous piece searched again with the next one, so that a match spanning two is found.
OVERLAP_BYTES = 1024
#: Bytes of a JSON stream kept uncounted while no ``uniqueId`` pair has shown up (see :class:`_JsonPairs`).
UNCOUNTED_BYTES = 64 * 1024
MAX_UNIQUE_ID_CHARS = 200

#: Whitespace around the colon is bounded so that a pair is at most ~350 bytes: it always fits in the
#: overlap, and a run of blanks cannot make one search long.
_JSON_UNIQUE_ID = re.compile(rb'"uniqueId"[ \t\r\n]{0,64}:[ \t\r\n]{0,64}"([^"\\\x00-\x1f]{1,200})"')
#: ``"part": i`` and ``"parts": n`` beside the records: the body is part i of n of its export.
_JSON_PART = re.compile(rb'"part"[ \t\r\n]{0,64}:[ \t\r\n]{0,64}([0-9]{1,6})\b')
_JSON_PARTS = re.compile(rb'"parts"[ \t\r\n]{0,64}:[ \t\r\n]{0,64}([0-9]{1,6})\b')
#: A JSON escape (``\"``, ``\\``, ``\u`` ...): blanked out before strings are delimited by their quotes,
#: with control bytes a value may not hold (a value with an escape is not taken, as before).
_JSON_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_ESCAPED = b"\x01\x01"
#: A JSON string once escapes are gone.
_JSON_STRING = re.compile(rb'"[^"]*"')
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


class _JsonPairs:
    """The pairs a pattern matches in a JSON stream fed piece by piece (``"uniqueId": "<value>"`` by
    default): the top-level one, and the first one at any depth.

    The depth of the stream is counted as it goes: escapes are blanked out first (a trailing odd backslash
    waits for the next piece), so that every quote left opens or closes a string; the text between
    strings is then searched for brackets. A pair is judged once the bytes before it are counted, so the
    last :data:`OVERLAP_BYTES` of every piece wait for the next one (a pair is shorter than that). Until
    a first pair shows up nothing needs counting: up to :data:`UNCOUNTED_BYTES` wait uncounted, so a body
    without any pair (an array of records) costs one search and nothing more.
    """

    def __init__(self, pattern: re.Pattern[bytes] = _JSON_UNIQUE_ID) -> None:
        self._pattern = pattern
        self.top_level: bytes | None = None
        self.first: bytes | None = None
        self._pending = b""  # cleaned bytes not counted yet
        self._searched = 0  # no pair starts in _pending before this offset
        self._backslash = b""  # a trailing backslash whose escape continues in the next piece
        self._depth = 0
        self._in_string = False

    def feed(self, piece: bytes, *, final: bool = False) -> None:
        if self.top_level is not None:
            return
        raw = self._backslash + piece
        trailing = len(raw) - len(raw.rstrip(b"\\"))
        self._backslash = b"\\" if trailing % 2 and not final else b""
        if self._backslash:
            raw = raw[:-1]
        window = self._pending + (_JSON_ESCAPE.sub(_ESCAPED, raw) if b"\\" in raw else raw)
        cut = len(window) if final else max(0, len(window) - OVERLAP_BYTES)
        counted = 0
        for match in self._pattern.finditer(window, self._searched):
            if match.start() >= cut:
                break
            self._count(window[counted : match.start()])
            counted = match.end()
            if self._in_string:  # not a pair: its first quote closes a string (invalid JSON)
                self._count(window[match.start() : counted])
                continue
            if self._depth == 1:
                self.top_level = match[1]
                return
            if self.first is None:
                self.first = match[1]
        if self.first is None and (final or len(window) <= UNCOUNTED_BYTES):
            # No pair yet: if one comes, the bytes before it get counted then; if none does, never.
            self._pending, self._searched = window, cut
            return
        self._count(window[counted:cut] if counted < cut else b"")
        self._pending, self._searched = window[max(cut, counted) :], 0

    def _count(self, text: bytes) -> None:
        """Move the depth and the in-string state over ``text`` (escapes already blanked out)."""
        if b'"' in text:
            parts = text.split(b'"')
            outside = b"".join(parts[1 if self._in_string else 0 :: 2])
            self._in_string ^= len(parts) % 2 == 0  # an odd number of quotes
        elif self._in_string:
            return
        else:
            outside = text
        self._depth += outside.count(b"{") + outside.count(b"[") - outside.count(b"}") - outside.count(b"]")


@dataclass(frozen=True)
class Sniffed:
    """What a body says about itself: the ``uniqueId`` it answers, and (i, n) if it is part i of n."""

    unique_id: str | None
    part: tuple[int, int] | None = None


class BodySniffer:
    """The ``uniqueId`` and the part number of a body fed piece by piece (see the module docstring)."""

    def __init__(self, content_type: str | None) -> None:
        self._kind = media_type(content_type)
        self._json = _JsonPairs()
        self._part = _JsonPairs(_JSON_PART)
        self._parts = _JsonPairs(_JSON_PARTS)
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
        decoded = self._decoder.decode(piece) if self._decoder is not None else piece
        for pairs in (self._json, self._part, self._parts):
            pairs.feed(decoded)

    def result(self) -> Sniffed:
        """What the body says (call once the whole body was fed)."""
        if self._field is not None and self._kind == FORM_URLENCODED:
            self._field.feed(b"&")
        rest = self._decoder.flush() if self._decoder is not None else b""
        for pairs in (self._json, self._part, self._parts):
            pairs.feed(rest, final=True)
        return Sniffed(self._unique_id(), self._part_of())

    def _unique_id(self) -> str | None:
        found = self._field.found if self._field is not None else None
        found = found or self._json.top_level or self._json.first
        if not found:
            return None
        text = found.decode("utf-8", errors="replace").strip()
        return text if text and "\x00" not in text and len(text) <= MAX_UNIQUE_ID_CHARS else None

    def _part_of(self) -> tuple[int, int] | None:
        """(i, n) from the top-level ``part`` and ``parts`` when both are there and 1 <= i <= n."""
        if self._part.top_level is None or self._parts.top_level is None:
            return None
        number, count = int(self._part.top_level), int(self._parts.top_level)
        return (number, count) if 1 <= number <= count else None


class BodyRejected(Exception):
    """The body cannot be stored as sent: answer ``status_code`` with ``message`` (the sender's doing)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


#: ``Content-Encoding`` values the receiver decodes (anything else is refused with 415).
DECODED_ENCODINGS = ("gzip", "x-gzip", "deflate")
#: Largest piece an :class:`Inflater` produces at once, whatever the ratio of its input.
INFLATE_PIECE_BYTES = 256 * 1024
#: A body is judged by its inflation ratio only once it inflated past this (small bodies may compress
#: very well without harm).
RATIO_FREE_BYTES = 1024 * 1024


def content_coding(content_encoding: str | None) -> str | None:
    """The one coding to decode (``gzip``/``deflate``), None for none; BodyRejected(415) for any other."""
    codings = [part.strip().lower() for part in (content_encoding or "").split(",")]
    codings = [coding for coding in codings if coding and coding != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in DECODED_ENCODINGS:
        return "gzip" if codings[0] == "x-gzip" else codings[0]
    raise BodyRejected(415, "unsupported Content-Encoding: send the body plain, gzip or deflate")


class Inflater:
    """Streaming gzip/deflate decoding that never inflates more than a piece at a time.

    Refuses (413) a body that inflates past ``max_bytes`` or, past :data:`RATIO_FREE_BYTES`, more than
    ``max_ratio`` times its encoded size (a gzip bomb is refused after a few MB, never held); and (400)
    data that is not valid gzip/deflate or ends early. Concatenated gzip members are decoded in turn.
    """

    def __init__(self, coding: str, max_bytes: int, max_ratio: int) -> None:
        self.coding = coding
        self.max_bytes = max_bytes
        self.max_ratio = max_ratio
        self.encoded = 0
        self.decoded = 0
        self._inflate: zlib._Decompress | None = None
        self._head = b""  # deflate: the first bytes, to tell a zlib stream from a raw one

    def _start(self, first: bytes) -> zlib._Decompress:
        if self.coding == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # "deflate" is a zlib stream by the standard; some senders send raw deflate.
        is_zlib = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS)

    def decode(self, piece: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``piece``, in pieces of at most :data:`INFLATE_PIECE_BYTES`."""
        self.encoded += len(piece)
        if self._inflate is None:
            self._head += piece
            if len(self._head) < 2 and self.coding == "deflate":
                return
            piece, self._head = self._head, b""
            self._inflate = self._start(piece)
        data = piece
        while data:
            if self._inflate.eof:
                if not data.strip(b"\x00"):
                    return  # zero padding after the stream, as some gzip writers leave
                if self.coding != "gzip":
                    raise BodyRejected(400, f"data after the end of the {self.coding} stream")
                self._inflate = self._start(data)  # the next gzip member
            before = len(data)
            try:
                out = self._inflate.decompress(data, INFLATE_PIECE_BYTES)
            except zlib.error:
                raise BodyRejected(400, f"body is not valid {self.coding} data") from None
            data = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail
            if out:
                self.decoded += len(out)
                self._check()
                yield out
            elif len(data) >= before and not self._inflate.eof:
                raise BodyRejected(400, f"body is not valid {self.coding} data")

    def finish(self) -> Iterator[bytes]:
        """Whatever the decoder still holds; BodyRejected(400) when the stream ended early."""
        if self._inflate is None:
            yield from self.decode(b"")
            if self._inflate is None:
                if self._head:
                    raise BodyRejected(400, f"body is not valid {self.coding} data")
                return
        if self._inflate is not None:
            out = self._inflate.flush()
            self.decoded += len(out)
            self._check()
            if out:
                yield out
            if not self._inflate.eof:
                raise BodyRejected(400, f"{self.coding} body ends before its stream does")

    def _check(self) -> None:
        if self.decoded > self.max_bytes:
            raise BodyRejected(413, f"body larger than {self.max_bytes} bytes once decoded")
        if self.decoded > RATIO_FREE_BYTES and self.decoded > self.max_ratio * self.encoded:
            raise BodyRejected(413, f"body inflates more than {self.max_ratio} times its encoded size")


class BodySpool:
    """A callback body being received: decoded, spooled, counted, hashed and sniffed in one pass."""

    def __init__(
        self,
        content_type: str | None,
        spool_dir: Path,
        in_memory_bytes: int,
        inflater: Inflater | None = None,
    ) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=in_memory_bytes, dir=str(spool_dir))  # noqa: SIM115
        self.size = 0
        self._hash = hashlib.sha256()
        self._sniffer = BodySniffer(content_type)
        self._inflater = inflater

    def write(self, piece: bytes) -> None:
        """Take the next piece as received (decoded first if the body is encoded)."""
        for _ in self.write_steps(piece):
            pass

    def write_steps(self, piece: bytes) -> Iterator[None]:
        """:meth:`write`, pausing between decoded pieces: an event loop iterating it can serve others
        meanwhile, however much the piece inflates. A plain body never pauses."""
        if self._inflater is None:
            self._write_decoded(piece)
            return
        for index, decoded in enumerate(self._inflater.decode(piece)):
            if index:
                yield
            self._write_decoded(decoded)

    def _write_decoded(self, piece: bytes) -> None:
        self.file.write(piece)
        self.size += len(piece)
        self._hash.update(piece)
        self._sniffer.feed(piece)

    def finish(self) -> tuple[CallbackBody, Sniffed]:
        """The body ready to store, and what it says about itself (its uniqueId, its part number)."""
        if self._inflater is not None:
            for decoded in self._inflater.finish():
                self._write_decoded(decoded)
        self.file.flush()
        self.file.seek(0)
        return CallbackBody(self.file, self.size, self._hash.hexdigest()), self._sniffer.result()

    def close(self) -> None:
        """Discard the spool. Closing flushes what is still buffered: on a full disk that fails again
        (ENOSPC), but the file is closed (and, unlinked from the start, freed) all the same."""
        with contextlib.suppress(OSError):
            self.file.close()
