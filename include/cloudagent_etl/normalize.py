"""Raw callback bytes -> typed pandas frames of dial-status rows, plus the rows that broke the contract.

Pure: bytes (or a binary file) and a content type in, frames out; no database. The document is
parsed as a stream into batches of records, so a payload of hundreds of MB is never held as one list of
Python objects. A JSON array is read in slices of :data:`SLICE_BYTES`, each cut at a record boundary and
parsed by orjson (~2x faster than a streaming parser); a slice whose values are not plain text/integers
(orjson reads a fraction, or an integer beyond 64 bits, as a float) is parsed again by ijson, which
keeps numbers exact, and every other shape (object, nested document, invalid JSON) streams through ijson.
Form bodies stream too (:mod:`cloudagent_etl.forms`): no field is held whole.

The rules (the contract is in ``docs/cloudagent-contract.md``, the data model in ``docs/data-model.md``):

- Shapes: a JSON array of records; a JSON object holding them under ``data``/``records``/``details``/
  ``Data`` (the value may also be a JSON string); a form body (``application/x-www-form-urlencoded`` or
  ``multipart/form-data``) whose ``data`` field holds either. A form with several ``data`` fields
  (or parts) gives the records of every one, in order. A UTF-8 byte-order mark before the JSON is
  ignored. An object without records whose ``message`` says there is no data (``"No data found"``)
  is an empty payload; one whose ``status`` is ``error`` fails with CloudAgent's message. Anything
  else raises :class:`PayloadError` (the load records it as a failed load), as does a document nested
  deeper than :data:`MAX_DOCUMENT_DEPTH` levels (checked before any parser sees the bytes) and a form
  with more than ``forms.MAX_FORM_FIELDS`` fields.
- Field names map to columns through :data:`FIELD_ALIASES`, ignoring case and ``_``/``-``/space, so
  ``DataUniqueId``, ``dataUniqueId`` and ``data_unique_id`` are one field. A field whose name holds
  ``apikey`` (``Apikey``, ``apiKey``, ``api_key``, ...) is dropped, at any depth; every other unknown
  field is kept, per row, in the JSON column ``extra`` with its raw value (nested values as JSON text).
- Secrets: every value of :class:`SecretValues` (the configured apiKey, and any value of at least
  :data:`MIN_LEARNED_SECRET_CHARS` characters found under an API-key field of the payload) is replaced
  by ``***`` wherever it appears: columns, ``extra``, field names, rejects.
- NUL characters (which PostgreSQL cannot store in text or JSON) are removed from every value.
- ``""``, ``"None"``, ``"null"``, ``"NA"`` (any case, surrounding blanks ignored) are NULL.
- Times are wall-clock in ``timezone`` (``YYYY-MM-DD HH:MM:SS``) and become UTC; a date that does not
  exist (``2026-02-30``, ``24:00:00``) is not a time, and a time before :data:`EARLIEST_TIME` or more
  than the load's future tolerance (default :data:`FUTURE_TOLERANCE`) after the load is out of range.
  Durations ``HH:MM:SS`` (or plain seconds, at most :data:`MAX_INTEGER`) become integer seconds; ids
  stay text (JSON numbers are never read as floats).
- Lengths: ``campaign_name`` and the lead id are at most :data:`MAX_KEY_CHARS` characters; every other
  text column is cut to :data:`MAX_TEXT_CHARS` characters, and the whole value of a cut source field
  goes to ``extra`` under its field name. A value in ``extra`` or a reject's ``raw_record`` is cut to
  :data:`MAX_STORED_VALUE_CHARS` characters; a record whose ``extra`` would exceed
  :data:`MAX_EXTRA_CHARS` is rejected. A value nested deeper than :data:`MAX_VALUE_DEPTH` levels
  rejects its record.
- Every change made to store a row (NUL removed, value cut, secret replaced) is listed in its
  ``load_notes``; a row needing none has ``load_notes`` NULL.
- ``phone_number`` is the digits of the raw number with the country code 91: 10 digits get ``91``
  prefixed, a trunk ``0`` + 10 digits becomes ``91`` + 10 digits, anything else keeps its digits.
- ``dial_status`` keeps the full text; ``dial_status_first``/``dial_status_last`` are the legs of
  ``"a -> b -> c"``.
- ``record_key`` is the lead id, else ``sha256:`` + 32 hex chars of campaign, canonical phone and the
  UTC created time; a row with neither is rejected.
- A row is rejected (with every reason found) when it has no campaign, a campaign other than the
  request's, no usable ``updated_at``, no record key, a key too long, a value nested too deep, or a
  value that does not parse as its type or lies out of range.
- Within a batch, rows of one key are ordered by (``updated_at``, position): ``is_latest`` marks the
  one that may become current, and an earlier row with the same key *and* ``updated_at`` is dropped
  (the later one is the same version, as received last).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import chain, islice
from typing import IO, Any, Final

import ijson
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cloudagent_etl.errors import REDACTED, PayloadError, redact
from cloudagent_etl.forms import form_fields, is_form
from cloudagent_etl.settings import (
    DEFAULT_EARLIEST_RECORD_TIME,
    DEFAULT_FUTURE_TOLERANCE,
    DEFAULT_TIMEZONE,
    zone,
)

#: Warehouse column -> the source field names that feed it (compared by :func:`field_token`).
#: The first alias present in a record wins; another alias of the same column in that record goes to
#: ``extra`` so that nothing is lost.
FIELD_ALIASES: Final[Mapping[str, tuple[str, ...]]] = {
    "campaign_name": ("CampaignName", "Campaign"),
    "lead_id": ("DataUniqueId", "DataId", "LeadId", "LeadUniqueId"),
    "phone_number_raw": ("PhoneNumber", "Phone", "PhoneNo", "MobileNumber", "CustomerNumber"),
    "customer_name": ("Name", "CustomerName"),
    "lead_status": ("Status", "LeadStatus"),
    "dial_status": ("DialStatus",),
    "disposition": ("Disposition",),
    "attempts": ("Attempts", "AttemptCount", "NoOfAttempts"),
    "agent_id": ("AgentID", "AgentId"),
    "agent_name": ("AgentName",),
    "ucid": ("UCID", "CallID"),
    "monitor_ucid": ("monitorUCID",),
    "call_started_at": ("StartTime", "CallStartTime"),
    "call_ended_at": ("EndTime", "CallEndTime"),
    "call_duration_s": ("Duration", "CallDuration"),
    "skill": ("Skill", "SkillName"),
    "priority": ("Priority",),
    "created_at": ("CreatedDate", "CreatedTime", "CreatedAt"),
    "updated_at": ("UpdatedDate", "UpdatedTime", "UpdatedAt", "ModifiedDate"),
}

#: Every column of a normalized row, in warehouse order, with its kind: ``text``, ``integer``, ``time``
#: (aware UTC) or ``json`` (text of a JSON object). The warehouse builds its tables from this.
ROW_COLUMN_KINDS: Final[Mapping[str, str]] = {
    "campaign_name": "text",
    "record_key": "text",
    "phone_number": "text",
    "phone_number_raw": "text",
    "customer_name": "text",
    "lead_status": "text",
    "dial_status": "text",
    "dial_status_first": "text",
    "dial_status_last": "text",
    "disposition": "text",
    "attempts": "integer",
    "agent_id": "text",
    "agent_name": "text",
    "ucid": "text",
    "monitor_ucid": "text",
    "call_started_at": "time",
    "call_ended_at": "time",
    "call_duration_s": "integer",
    "skill": "text",
    "priority": "text",
    "created_at": "time",
    "updated_at": "time",
    "extra": "json",
    "load_notes": "text",
}
#: A row's identity: one current row per key in the warehouse.
KEY_COLUMNS: Final = ("campaign_name", "record_key")
#: Columns of a normalized row (``position`` and ``is_latest`` are load metadata).
ROW_COLUMNS: Final = tuple(ROW_COLUMN_KINDS)
#: Columns compared to decide whether an incoming version differs from the stored one.
VALUE_COLUMNS: Final = tuple(column for column in ROW_COLUMNS if column not in KEY_COLUMNS)
TIME_COLUMNS: Final = tuple(column for column, kind in ROW_COLUMN_KINDS.items() if kind == "time")
INTEGER_COLUMNS: Final = tuple(column for column, kind in ROW_COLUMN_KINDS.items() if kind == "integer")
REJECT_COLUMNS: Final = ("position", "reason", "raw_record")

#: Keys of a JSON object body that may hold the records.
RECORD_CONTAINER_KEYS: Final = ("data", "records", "details", "Data")
TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
LEG_SEPARATOR: Final = " -> "
DEFAULT_BATCH_SIZE: Final = 20_000
#: Bytes of a JSON array parsed at once by the fast path (~8k records of ~540 bytes).
SLICE_BYTES: Final = 4 * 1024 * 1024
UTF8_BOM: Final = b"\xef\xbb\xbf"

#: Deepest nesting of a whole document; deeper fails the payload (orjson's own limit is the same).
MAX_DOCUMENT_DEPTH: Final = 1024
#: Deepest nesting of one field's value (``{"a": {"b": 1}}`` as a value is 2 levels); deeper rejects.
MAX_VALUE_DEPTH: Final = 32
#: Longest campaign name and lead id: the key's index holds both (PostgreSQL btree rows <= 2704 bytes).
MAX_KEY_CHARS: Final = 200
#: Longest value of every other text column (indexed ones included), in characters.
MAX_TEXT_CHARS: Final = 500
#: Longest value kept in ``extra`` or a reject's ``raw_record``; the landed bytes keep everything.
MAX_STORED_VALUE_CHARS: Final = 1024 * 1024
#: Largest ``extra`` of one row (PostgreSQL's JSONB stops at 256 MB); a larger record is rejected.
MAX_EXTRA_CHARS: Final = 32 * 1024 * 1024
#: Largest integer stored (the columns are 32-bit).
MAX_INTEGER: Final = 2**31 - 1
#: Earliest time a record may carry; the latest is the load's start plus its future tolerance (both
#: are settings of the load: ``settings.LoadSettings``).
EARLIEST_TIME: Final = DEFAULT_EARLIEST_RECORD_TIME
FUTURE_TOLERANCE: Final = DEFAULT_FUTURE_TOLERANCE
#: A value under an API-key field is learned as a secret only when at least this long (a short one,
#: e.g. ``"1"``, would blank out ordinary data).
MIN_LEARNED_SECRET_CHARS: Final = 8
#: Up to this many distinct unknown field names per batch, ``extra`` is built column by column; more
#: (per-record custom fields) is built record by record: linear in the number of values either way.
MAX_COLUMNAR_EXTRA_FIELDS: Final = 64


_NOT_TOKEN = re.compile(r"[^0-9a-z]")


def field_token(name: str) -> str:
    """A field name compared without case or separators: ``Data_Unique-Id`` -> ``datauniqueid``.

    Called once per distinct name of a batch: a payload of per-record custom fields has millions.
    """
    lowered = name.lower()
    if lowered.isascii() and lowered.isalnum():
        return lowered
    return _NOT_TOKEN.sub("", lowered)


def is_secret_field(name: str) -> bool:
    """Whether a source field holds an API key; such a field is never copied anywhere."""
    return "apikey" in field_token(name)


_COLUMN_BY_TOKEN: Final[dict[str, str]] = {
    field_token(alias): column for column, aliases in FIELD_ALIASES.items() for alias in aliases
}
_ALIAS_RANK: Final[dict[str, int]] = {
    field_token(alias): rank for aliases in FIELD_ALIASES.values() for rank, alias in enumerate(aliases)
}


class SecretValues:
    """Values no stored or printed text may show: configured ones, plus those learned from the payload.

    The load gives the configured apiKey; normalizing adds every value of at least
    :data:`MIN_LEARNED_SECRET_CHARS` characters found under an API-key field, so that the same value is
    also removed where it appears under another name. The load redacts its error text with the result.
    """

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        self._values = {value for value in values if value}

    def learn(self, values: Iterable[Any]) -> None:
        self._values.update(
            value
            for value in values
            if isinstance(value, str) and len(value.strip()) >= MIN_LEARNED_SECRET_CHARS
        )

    def __iter__(self) -> Iterator[str]:
        # Longest first: a secret that contains another is replaced whole.
        return iter(sorted(self._values, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._values)

    def redact(self, text: str) -> str:
        return redact(text, self)

    def __repr__(self) -> str:
        return f"SecretValues({len(self._values)} values)"


@dataclass(frozen=True)
class RecordRules:
    """What the records of one payload are checked against besides their types (see the module doc)."""

    timezone: str = DEFAULT_TIMEZONE
    #: The export request's campaign: a record of another campaign is rejected (None: not checked).
    campaign: str | None = None
    earliest_time: datetime = EARLIEST_TIME
    #: Latest time a record may carry; None: :data:`FUTURE_TOLERANCE` after the payload is read.
    latest_time: datetime | None = None
    secrets: SecretValues = field(default_factory=SecretValues)


@dataclass(frozen=True)
class NormalizedBatch:
    """One batch of a payload: ``rows`` (``ROW_COLUMNS`` + ``position``, ``is_latest``) and ``rejects``.

    ``records_in`` counts every record of the batch, so ``records_in == len(rows) + len(rejects) +``
    the rows dropped as earlier copies of the same version.
    """

    rows: pd.DataFrame
    rejects: pd.DataFrame
    records_in: int


# ---------------------------------------------------------------------------------------------- parsing
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


# ---------------------------------------------------------------------------------------------- values
_SCALAR_TYPES = frozenset((str, int, bool, type(None), Decimal, float))


def _as_text(value: Any) -> str | None:
    """A scalar source value as text: numbers exactly as written (ints and Decimals, never floats)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    return orjson.dumps(value, default=str).decode()


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether a dict/list nests more than ``limit`` levels (breadth first: never recurses)."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
    return False


@dataclass
class _Cleaner:
    """Makes text storable: NUL removed, secrets replaced, length cut; remembers what it changed."""

    secrets: SecretValues
    limit: int = MAX_STORED_VALUE_CHARS
    changes: set[str] = field(default_factory=set)

    def text(self, value: str) -> str:
        if "\x00" in value:
            value = value.replace("\x00", "")
            self.changes.add("NUL characters removed")
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
                self.changes.add("API key value replaced by ***")
        if len(value) > self.limit:
            value = value[: self.limit]
            self.changes.add(f"values cut to {self.limit} characters")
        return value

    def nested(self, value: Any, depth: int = 1) -> Any:
        """A nested value without API-key fields, with clean text, cut below :data:`MAX_VALUE_DEPTH`."""
        if isinstance(value, str):
            return self.text(value)
        if not isinstance(value, dict | list):
            return value
        if depth > MAX_VALUE_DEPTH:
            return f"(nested deeper than {MAX_VALUE_DEPTH} levels: not kept)"
        if isinstance(value, list):
            return [self.nested(item, depth + 1) for item in value]
        return {
            self.text(str(key)): self.nested(item, depth + 1)
            for key, item in value.items()
            if not is_secret_field(str(key))
        }

    def json_text(self, value: Any) -> str:
        """A nested value as JSON text (what a column or ``extra`` keeps of it)."""
        return orjson.dumps(self.nested(value), default=str).decode()

    def raw_record(self, record: Any) -> str:
        """A reject's ``raw_record``: the record with values as text, API-key fields removed, clean."""
        if not isinstance(record, dict):
            return orjson.dumps(self.nested(record), default=str).decode()
        kept = {
            self.text(str(key)): (
                self.json_text(value) if isinstance(value, dict | list) else _text_or_none(value, self)
            )
            for key, value in record.items()
            if not is_secret_field(str(key))
        }
        return orjson.dumps(kept).decode()


def _text_or_none(value: Any, cleaner: _Cleaner) -> str | None:
    text = _as_text(value)
    return None if text is None else cleaner.text(text)


def hashed_record_key(campaign_name: str, phone_number: str, created_at: pd.Timestamp) -> str:
    """The record key of a lead without a lead id: stable across loads, time zones and re-deliveries."""
    material = f"{campaign_name}\x1f{phone_number}\x1f{created_at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------- typing
# Text columns are Arrow arrays typed with pyarrow.compute (vectorized, no Python loop per value); the
# output is a pandas frame.
_TEXT = pa.string()
_NULL_TEXT = pa.scalar(None, _TEXT)
_NULL_PATTERN = r"^\s*(?i:none|null|na)?\s*$"
_DURATION_PATTERN = r"^(?:(?P<h>\d{1,6}):(?P<m>[0-5]\d):(?P<s>[0-5]\d)|(?P<n>\d{1,9}))$"
_TIME_PARTS = (
    r"^(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})"
    r"\s+(?P<hour>\d{1,2}):(?P<minute>\d{1,2}):(?P<second>\d{1,2})$"
)
_SAFE_TIME = r"^\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1\d|2[0-8]) (?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d$"
_PANDAS_TYPES = {_TEXT: pd.StringDtype("pyarrow"), pa.int64(): pd.Int64Dtype()}


def _mask(array: pa.Array) -> np.ndarray:
    """A boolean Arrow array as numpy, NULL as False."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _nulled(text: pa.Array) -> pa.Array:
    """NULL for the null markers, the value otherwise."""
    return pc.if_else(pc.match_substring_regex(text, _NULL_PATTERN), _NULL_TEXT, text)


def _series(array: pa.Array | pa.ChunkedArray) -> pd.Series:
    return pd.Series(array.to_pandas(types_mapper=_PANDAS_TYPES.get))


def _parse_time(
    text: pa.Array, tz: str, earliest: datetime, latest: datetime
) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Wall-clock text in ``tz`` -> UTC, and the rows too early and too late (then NaT).

    Arrow's strptime rolls an impossible date over (``2026-02-30`` -> 2 March), so the parsed fields
    must equal the written ones; anything unparseable or impossible is NaT.
    """
    trimmed = pc.utf8_trim_whitespace(text)
    local = pc.strptime(trimmed, format=TIME_FORMAT, unit="s", error_is_null=True)
    local = pc.if_else(_as_written(trimmed, local), local, pa.scalar(None, local.type))
    naive = pd.Series(local.to_pandas()).astype("datetime64[us]")
    # Out of range by more than a day in any zone: NaT before localizing (year 0 cannot be localized).
    margin = timedelta(days=1)
    low = pd.Timestamp(earliest.astimezone(UTC).replace(tzinfo=None) - margin)
    high = pd.Timestamp(latest.astimezone(UTC).replace(tzinfo=None) + margin)
    early = np.array(naive < low, dtype=bool)
    late = np.array(naive > high, dtype=bool)
    if early.any() or late.any():
        naive = naive.mask(early | late)
    utc = naive.dt.tz_localize(zone(tz), ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    early |= np.array(utc < pd.Timestamp(earliest), dtype=bool)
    late |= np.array(utc > pd.Timestamp(latest), dtype=bool)
    return (utc.mask(early | late) if early.any() or late.any() else utc), early, late


def _as_written(trimmed: pa.Array, local: pa.Array) -> pa.Array:
    """Whether each parsed time has the fields written (False where it was rolled over or is NULL).

    Most rows are proved safe by one regex (day <= 28, hour <= 23, ...); only the others (days 29-31,
    unpadded fields) have their fields extracted and compared: extracting every row cost 6x the parse.
    """
    safe = _mask(pc.match_substring_regex(trimmed, _SAFE_TIME))
    doubtful = np.flatnonzero(~safe & _mask(local.is_valid()))
    if len(doubtful):
        indices = pa.array(doubtful)
        parts = pc.extract_regex(pc.take(trimmed, indices), _TIME_PARTS)
        parsed = pc.take(local, indices)
        same = pa.array(np.ones(len(doubtful), dtype=bool))
        for name, field_of in (
            ("year", pc.year),
            ("month", pc.month),
            ("day", pc.day),
            ("hour", pc.hour),
            ("minute", pc.minute),
            ("second", pc.second),
        ):
            written = pc.cast(pc.struct_field(parts, name), pa.int64())
            same = pc.and_kleene(same, pc.equal(written, pc.cast(field_of(parsed), pa.int64())))
        safe[doubtful] = _mask(same)
    return pa.array(safe)


def _whole_number(text: pa.Array) -> pa.Array:
    return pc.cast(pc.if_else(pc.equal(text, ""), "0", text), pa.int64())


def _parse_duration(text: pa.Array) -> pa.Array:
    parts = pc.extract_regex(pc.utf8_trim_whitespace(text), _DURATION_PATTERN)
    hours, minutes, seconds, plain = (pc.struct_field(parts, name) for name in ("h", "m", "s", "n"))
    hms = pc.add(
        pc.add(pc.multiply(_whole_number(hours), 3600), pc.multiply(_whole_number(minutes), 60)),
        _whole_number(seconds),
    )
    return pc.if_else(pc.equal(plain, ""), hms, _whole_number(plain))


def _parse_count(text: pa.Array) -> pa.Array:
    trimmed = pc.utf8_trim_whitespace(text)
    digits = pc.if_else(pc.match_substring_regex(trimmed, r"^\d{1,9}$"), trimmed, _NULL_TEXT)
    return pc.cast(digits, pa.int64())


def _canonical_phone(raw: pa.Array) -> pa.Array:
    """Digits with country code 91 (see module docstring); NULL when no digit is left."""
    digits = pc.replace_substring_regex(raw, r"\D", "")
    length = pc.utf8_length(digits)
    national = pc.equal(length, 10)
    trunk = pc.and_(pc.equal(length, 11), pc.starts_with(digits, "0"))
    canonical = pc.if_else(national, pc.binary_join_element_wise("91", digits, ""), digits)
    canonical = pc.if_else(
        trunk, pc.binary_join_element_wise("91", pc.utf8_slice_codeunits(digits, 1), ""), canonical
    )
    return pc.if_else(pc.equal(canonical, ""), _NULL_TEXT, canonical)


def _legs(dial_status: pa.Array) -> tuple[pa.Array, pa.Array]:
    first = pc.utf8_trim_whitespace(pc.replace_substring_regex(dial_status, r" -> .*$", ""))
    last = pc.utf8_trim_whitespace(pc.replace_substring_regex(dial_status, r"^.* -> ", ""))
    return _nulled(first), _nulled(last)


def _may_contain(text: pa.Array, needle: str) -> bool:
    """Whether any value may contain ``needle``: one search of the array's bytes (false positives are
    possible, e.g. across two values; false negatives are not)."""
    data = text.buffers()[2] if text.null_count < len(text) else None
    return data is not None and needle.encode() in data.to_pybytes()


def _longer_than(text: pa.Array, limit: int) -> np.ndarray:
    """Rows longer than ``limit`` characters; the offsets answer first (bytes >= characters)."""
    offsets = text.buffers()[1]
    if offsets is not None and len(text):
        ends = np.frombuffer(offsets, dtype=np.int32)[text.offset : text.offset + len(text) + 1]
        if int(np.diff(ends).max()) <= limit:
            return np.zeros(len(text), dtype=bool)
    return _mask(pc.greater(pc.utf8_length(text), limit))


def _cut(text: pa.Array, limit: int) -> pa.Array:
    return pc.utf8_slice_codeunits(text, 0, limit)


# ---------------------------------------------------------------------------------------------- batches
@dataclass
class _FieldPlan:
    """The distinct field names of a batch, by what they feed."""

    by_column: dict[str, list[str]]  # best alias first
    extra_fields: list[str]
    secret_fields: list[str]

    @property
    def column_fields(self) -> list[str]:
        return [name for names in self.by_column.values() for name in names]

    @property
    def shadowed(self) -> list[tuple[str, list[str]]]:
        """Aliases that lose to a better-ranked one present in the same record, with those better ones."""
        return [
            (name, names[:rank])
            for names in self.by_column.values()
            for rank, name in enumerate(names)
            if rank
        ]


def _field_plan(records: list[dict[str, Any]]) -> _FieldPlan:
    """Source fields per column (best alias first), the unknown fields and the API-key fields."""
    plan = _FieldPlan({}, [], [])
    for name in dict.fromkeys(chain.from_iterable(records)):
        token = field_token(str(name))
        if "apikey" in token:
            plan.secret_fields.append(name)
            continue
        column = _COLUMN_BY_TOKEN.get(token)
        if column is None:
            plan.extra_fields.append(name)
        else:
            plan.by_column.setdefault(column, []).append(name)
    for names in plan.by_column.values():
        names.sort(key=lambda name: _ALIAS_RANK[field_token(str(name))])
    return plan


def _text_struct(records: list[dict[str, Any]], fields: list[str]) -> pa.StructArray:
    """``fields`` of every record as text (NULL where a record lacks one); values must be scalars."""
    struct = pa.struct([(name, _TEXT) for name in fields])
    try:
        return pa.array(records, type=struct)
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a number or boolean somewhere: convert, exactly
        return pa.array([{name: _as_text(record.get(name)) for name in fields} for record in records], struct)


_NEEDS_JSON_ESCAPE = r'[\x00-\x1f"\\]'


def _extra_json_columnar(extra_fields: list[str], text: dict[str, pa.Array]) -> pa.Array | None:
    """``extra`` built column-wise, when every record holds every unknown field as plain text.

    The same text as ``orjson.dumps(..., OPT_SORT_KEYS)`` per record; None when a value is missing or
    null (absent and null differ in ``extra``) or needs escaping: then it is built record by record.
    """
    pieces = []
    for name in sorted(extra_fields):
        values = text[name]
        if values.null_count or pc.any(pc.match_substring_regex(values, _NEEDS_JSON_ESCAPE)).as_py():
            return None
        quoted = pc.binary_join_element_wise(orjson.dumps(name).decode() + ':"', values, '"', "")
        pieces.append(quoted)
    return pc.binary_join_element_wise("{", pc.binary_join_element_wise(*pieces, ","), "}", "")


def _record_extra(
    record: dict[str, Any], extra_fields: frozenset[str], shadowed: list[tuple[str, list[str]]]
) -> dict[str, Any]:
    """A record's unknown fields, and its aliases shadowed by a better-ranked one, as text."""
    kept = {name: _as_text(value) for name, value in record.items() if name in extra_fields}
    for name, better in shadowed:
        if record.get(name) is not None and any(record.get(other) is not None for other in better):
            kept[name] = _as_text(record[name])
    return kept


def _extra_json(records: list[dict[str, Any]], plan: _FieldPlan, text: dict[str, pa.Array]) -> pa.Array:
    """Per record, the JSON text of its unknown fields and of aliases shadowed by a better-ranked one."""
    shadowed = plan.shadowed
    if not plan.extra_fields and not shadowed:
        return pa.nulls(len(records), _TEXT)
    if not shadowed and all(name in text for name in plan.extra_fields):
        columnar = _extra_json_columnar(plan.extra_fields, text)
        if columnar is not None:
            return columnar
    extra_fields = frozenset(plan.extra_fields)
    extras = []
    for record in records:
        kept = _record_extra(record, extra_fields, shadowed)
        extras.append(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS).decode() if kept else None)
    return pa.array(extras, _TEXT)


def _flattened(
    records: list[dict[str, Any]], positions: list[int], cleaner: _Cleaner, plan: _FieldPlan
) -> tuple[list[dict[str, Any]], list[int], list[tuple[int, str, str]], dict[int, list[str]]]:
    """Records with every nested value as its JSON text; a record nested too deep becomes a reject.

    Also returns, per kept record (by its new index), what cleaning its nested values changed.
    """
    kept, kept_positions, rejects = [], [], []
    changes: dict[int, list[str]] = {}
    columns = {name: column for column, names in plan.by_column.items() for name in names}
    for record, position in zip(records, positions, strict=True):
        if _SCALAR_TYPES.issuperset(map(type, record.values())):
            kept.append(record)
            kept_positions.append(position)
            continue
        too_deep = [
            str(name)
            for name, value in record.items()
            if isinstance(value, dict | list)
            and not is_secret_field(str(name))
            and _deeper_than(value, MAX_VALUE_DEPTH)
        ]
        if too_deep:
            reason = "; ".join(
                f"{cleaner.text(name)}: nested deeper than {MAX_VALUE_DEPTH} levels" for name in too_deep
            )
            rejects.append((position, reason, cleaner.raw_record(record)))
            continue
        flat: dict[str, Any] = {}
        for name, value in record.items():
            if isinstance(value, dict | list) and not is_secret_field(str(name)):
                value_cleaner = _Cleaner(cleaner.secrets)
                flat[name] = value_cleaner.json_text(value)
                label = columns.get(name, "extra")
                changes.setdefault(len(kept), []).extend(
                    f"{label}: {c}" for c in sorted(value_cleaner.changes)
                )
            else:
                flat[name] = value
        kept.append(flat)
        kept_positions.append(position)
    return kept, kept_positions, rejects, changes


class _Notes:
    """What was changed to store each row, as text for ``load_notes``."""

    def __init__(self, rows: int) -> None:
        self._rows = rows
        self._masks: list[tuple[np.ndarray, str]] = []
        self._per_row: dict[int, list[str]] = {}

    def add(self, mask: np.ndarray, note: str) -> None:
        if mask.any():
            self._masks.append((mask, note))

    def add_row(self, row: int, notes: Iterable[str]) -> None:
        self._per_row.setdefault(row, []).extend(notes)

    def column(self) -> pd.Series:
        if not self._masks and not self._per_row:
            return pd.Series([None] * self._rows, dtype=_PANDAS_TYPES[_TEXT])
        texts: list[list[str]] = [[] for _ in range(self._rows)]
        for mask, note in self._masks:
            for masked in np.flatnonzero(mask).tolist():
                texts[masked].append(note)
        for row, notes in self._per_row.items():
            texts[row].extend(notes)
        return pd.Series(["; ".join(notes) if notes else None for notes in texts], dtype=_PANDAS_TYPES[_TEXT])


def _cleaned_column(column: str, values: pa.Array, secrets: SecretValues, notes: _Notes) -> pa.Array:
    """``values`` without NUL characters and secrets (vectorized), each change noted."""
    if _may_contain(values, "\x00"):
        nul = pc.match_substring(values, "\x00")
        values = pc.replace_substring(values, "\x00", "")
        notes.add(_mask(nul), f"{column}: NUL characters removed")
    for secret in secrets:
        if not _may_contain(values, secret):
            continue
        found = pc.match_substring(values, secret)
        if pc.any(found).as_py():
            values = pc.replace_substring(values, secret, REDACTED)
            notes.add(_mask(found), f"{column}: API key value replaced by ***")
    return values


def _capped_text_columns(
    columns: dict[str, pd.Series],
    source: dict[str, pa.Array],
    derived: dict[str, pa.Array],
    records: list[dict[str, Any]],
    plan: _FieldPlan,
    notes: _Notes,
) -> dict[int, dict[str, str]]:
    """Set every text column but the keys, cut to :data:`MAX_TEXT_CHARS` (noted).

    Returns, per row, the whole values of the source fields that were cut, by field name (for ``extra``).
    """
    overflow: dict[int, dict[str, str]] = {}
    for column in ROW_COLUMNS:
        if ROW_COLUMN_KINDS[column] != "text" or column in ("record_key", "load_notes"):
            continue
        values = derived[column] if column in derived else source[column]
        if column != "campaign_name" and (long := _longer_than(values, MAX_TEXT_CHARS)).any():
            if column in source:
                for row in np.flatnonzero(long).tolist():
                    name = next(name for name in plan.by_column[column] if records[row].get(name) is not None)
                    overflow.setdefault(row, {})[str(name)] = values[row].as_py()
                notes.add(long, f"{column}: cut to {MAX_TEXT_CHARS} characters, the whole value is in extra")
            values = pc.if_else(pa.array(long), _cut(values, MAX_TEXT_CHARS), values)
        columns[column] = _series(values)
    return overflow


def _checked_extra(
    extra: pa.Array,
    records: list[dict[str, Any]],
    plan: _FieldPlan,
    overflow: dict[int, dict[str, str]],
    secrets: SecretValues,
    notes: _Notes,
) -> tuple[pa.Array, np.ndarray]:
    """``extra`` with the rows that need care rebuilt exactly, and the rows that are too big to store.

    Care: a NUL (``\\u0000`` in the JSON), a secret, a value over :data:`MAX_STORED_VALUE_CHARS`, the whole
    value of a cut column. Found by searches over the whole array, so clean batches cost nothing more.
    """
    suspicious = _longer_than(extra, MAX_STORED_VALUE_CHARS)
    for needle in ("\\u0000", *(orjson.dumps(secret).decode()[1:-1] for secret in secrets)):
        if _may_contain(extra, needle):
            suspicious |= _mask(pc.match_substring(extra, needle))
    if overflow:
        suspicious[list(overflow)] = True
    too_big = np.zeros(len(extra), dtype=bool)
    if not suspicious.any():
        return extra, too_big
    extras = extra.to_pylist()
    extra_fields, shadowed = frozenset(plan.extra_fields), plan.shadowed
    for row in np.flatnonzero(suspicious).tolist():
        cleaner = _Cleaner(secrets)
        kept = {
            cleaner.text(str(name)): None if value is None else cleaner.text(value)
            for name, value in _record_extra(records[row], extra_fields, shadowed).items()
        }
        kept.update({name: cleaner.text(value) for name, value in overflow.get(row, {}).items()})
        extras[row] = orjson.dumps(kept, option=orjson.OPT_SORT_KEYS).decode() if kept else None
        too_big[row] = extras[row] is not None and len(extras[row]) > MAX_EXTRA_CHARS
        notes.add_row(row, (f"extra: {change}" for change in sorted(cleaner.changes)))
    return pa.array(extras, _TEXT), too_big


def normalize_records(
    records: list[Any], *, first_position: int = 0, rules: RecordRules | None = None
) -> NormalizedBatch:
    """Type one batch of records (``first_position`` is the payload position of ``records[0]``)."""
    rules = rules or RecordRules()
    dicts: list[dict[str, Any]] = []
    positions: list[int] = []
    others: list[tuple[int, Any]] = []
    for position, record in enumerate(records, start=first_position):
        if isinstance(record, dict):
            dicts.append(record)
            positions.append(position)
        else:
            others.append((position, record))
    plan = _field_plan(dicts)
    columnar = len(plan.extra_fields) <= MAX_COLUMNAR_EXTRA_FIELDS
    struct_fields = [*plan.column_fields, *plan.secret_fields, *(plan.extra_fields if columnar else ())]
    struct = pa.struct([(name, _TEXT) for name in struct_fields])
    array: pa.StructArray | None
    nested_changes: dict[int, list[str]] = {}
    try:
        array = pa.array(dicts, type=struct)
        plain = columnar  # every value of the batch is text or null: nothing nested anywhere
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        array, plain = None, False
    # Secrets are learned first, so that everything below (rejects included) is redacted with them.
    for name in plan.secret_fields:
        if array is not None:
            rules.secrets.learn(pc.unique(array.field(struct_fields.index(name))).to_pylist())
        else:
            rules.secrets.learn(record.get(name) for record in dicts)
    cleaner = _Cleaner(rules.secrets)
    reject_rows = [
        (position, "record is not a JSON object", cleaner.raw_record(record)) for position, record in others
    ]
    if not plain:
        flat, flat_positions, deep, nested_changes = _flattened(dicts, positions, cleaner, plan)
        if deep:
            reject_rows.extend(deep)
            keep = np.isin(np.asarray(positions), [position for position, _, _ in deep], invert=True)
            if array is not None:
                array = array.filter(pa.array(keep))
        dicts, positions = flat, flat_positions
    if array is None:
        array = _text_struct(dicts, struct_fields)
    text = {name: array.field(index) for index, name in enumerate(struct_fields)}
    rows = len(dicts)
    index = pd.Index(positions, name="position")

    notes = _Notes(rows)
    for kept_index, changes in nested_changes.items():
        notes.add_row(kept_index, changes)
    empty = pa.nulls(rows, _TEXT)
    source: dict[str, pa.Array] = {}
    for column in FIELD_ALIASES:
        names = plan.by_column.get(column, [])
        values = pc.coalesce(*(text[name] for name in names)) if names else empty
        source[column] = _nulled(_cleaned_column(column, values, rules.secrets, notes))

    columns: dict[str, pd.Series] = {}
    reasons: list[tuple[np.ndarray, str]] = []

    def typed(column: str, parsed: pd.Series, what: str) -> pd.Series:
        reasons.append(
            (parsed.isna().to_numpy() & source[column].is_valid().to_numpy(zero_copy_only=False), what)
        )
        return parsed

    latest_time = rules.latest_time or datetime.now(UTC) + FUTURE_TOLERANCE
    for column in TIME_COLUMNS:
        parsed, early, late = _parse_time(source[column], rules.timezone, rules.earliest_time, latest_time)
        out_of_range = early | late
        reasons.append(
            (
                parsed.isna().to_numpy() & _mask(source[column].is_valid()) & ~out_of_range,
                f"{column}: not a time {TIME_FORMAT}",
            )
        )
        reasons.append((early, f"{column}: before {rules.earliest_time:%Y-%m-%d %H:%M:%S} UTC"))
        reasons.append((late, f"{column}: later than the latest time allowed (the load's start + tolerance)"))
        columns[column] = parsed
    columns["attempts"] = typed(
        "attempts", _series(_parse_count(source["attempts"])), "attempts: not a count"
    )
    duration = _parse_duration(source["call_duration_s"])
    too_long = _mask(pc.greater(duration, MAX_INTEGER))
    reasons.append((too_long, f"call_duration_s: more than {MAX_INTEGER} seconds"))
    duration = pc.if_else(pc.greater(duration, MAX_INTEGER), pa.scalar(None, pa.int64()), duration)
    parsed_duration = _series(duration)
    reasons.append(
        (
            parsed_duration.isna().to_numpy() & _mask(source["call_duration_s"].is_valid()) & ~too_long,
            "call_duration_s: not HH:MM:SS",
        )
    )
    columns["call_duration_s"] = parsed_duration

    # Lengths: keys too long reject; other text is cut, the whole source value kept in extra.
    for column, label in (("campaign_name", "campaign_name"), ("lead_id", "record_key: the lead id")):
        reasons.append(
            (
                _longer_than(source[column], MAX_KEY_CHARS),
                f"{label} is longer than {MAX_KEY_CHARS} characters",
            )
        )
    first_leg, last_leg = _legs(source["dial_status"])
    derived = {
        "phone_number": _canonical_phone(source["phone_number_raw"]),
        "dial_status_first": first_leg,
        "dial_status_last": last_leg,
    }
    overflow = _capped_text_columns(columns, source, derived, dicts, plan, notes)

    lead_id = pc.utf8_trim_whitespace(source["lead_id"])
    record_key = _series(lead_id)
    parts = [columns[name] for name in ("campaign_name", "phone_number", "created_at")]
    hashable = record_key.isna().to_numpy() & np.logical_and.reduce(
        [part.notna().to_numpy() for part in parts]
    )
    if hashable.any():  # a lead without an id: its key is the hash of campaign, phone and created time
        rows_to_hash = np.flatnonzero(hashable)
        hashed = map(hashed_record_key, *(part.iloc[rows_to_hash] for part in parts))
        record_key.iloc[rows_to_hash] = list(hashed)
    columns["record_key"] = record_key

    extra, too_big = _checked_extra(
        _extra_json(dicts, plan, text), dicts, plan, overflow, rules.secrets, notes
    )
    reasons.append((too_big, f"extra: more than {MAX_EXTRA_CHARS} characters in fields without a column"))
    columns["extra"] = _series(extra)
    columns["load_notes"] = notes.column()

    campaign = columns["campaign_name"]
    reasons.append((campaign.isna().to_numpy(), "campaign_name: missing"))
    if rules.campaign is not None:
        other = (campaign.notna() & (campaign != rules.campaign)).fillna(False).to_numpy(dtype=bool)
        reasons.append((other, f"campaign_name: not the campaign of the export request ({rules.campaign!r})"))
    reasons.append((source["updated_at"].is_null().to_numpy(zero_copy_only=False), "updated_at: missing"))
    reasons.append(
        (record_key.isna().to_numpy(), "record_key: no lead id, and no phone number + created time")
    )

    frame = pd.DataFrame({column: columns[column] for column in ROW_COLUMNS})
    frame.index = index
    rejected = np.zeros(rows, dtype=bool)
    for mask, _ in reasons:
        rejected |= mask
    for row in np.flatnonzero(rejected):
        why = "; ".join(reason for mask, reason in reasons if mask[row])
        reject_rows.append((positions[row], why, cleaner.raw_record(dicts[row])))
    kept_rows = _latest_per_version(frame[~rejected] if rejected.any() else frame)
    rejects = pd.DataFrame(sorted(reject_rows), columns=list(REJECT_COLUMNS)).astype({"position": "int64"})
    return NormalizedBatch(rows=kept_rows, rejects=rejects, records_in=len(records))


def _latest_per_version(rows: pd.DataFrame) -> pd.DataFrame:
    """Keep the last row per (key, updated_at); ``is_latest`` marks the greatest (updated_at, position)."""
    keys = ["campaign_name", "record_key"]
    order = rows[[*keys, "updated_at"]].reset_index().sort_values(["updated_at", "position"], kind="stable")
    last_of_version = order[~order.duplicated([*keys, "updated_at"], keep="last")]
    latest = last_of_version["position"][~last_of_version.duplicated(keys, keep="last")]
    kept = rows.loc[np.sort(last_of_version["position"].to_numpy())]
    kept = kept.assign(is_latest=kept.index.isin(latest.to_numpy()))
    return kept.reset_index()[[*ROW_COLUMNS, "position", "is_latest"]]


def normalize_payload(
    body: Body,
    content_type: str | None,
    *,
    timezone: str,
    campaign: str | None = None,
    secrets: SecretValues | None = None,
    time_bounds: tuple[datetime, datetime] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[NormalizedBatch]:
    """The payload as normalized batches, streamed; :class:`PayloadError` if it cannot be parsed.

    ``campaign`` is the export request's (records of another are rejected), ``secrets`` the values to
    redact (values learned from the payload are added to it), ``time_bounds`` the earliest and latest
    time a record may carry (default :data:`EARLIEST_TIME` .. now + :data:`FUTURE_TOLERANCE`).
    """
    earliest, latest = time_bounds or (EARLIEST_TIME, datetime.now(UTC) + FUTURE_TOLERANCE)
    rules = RecordRules(
        timezone=timezone,
        campaign=campaign,
        earliest_time=earliest,
        latest_time=latest,
        secrets=secrets if secrets is not None else SecretValues(),
    )
    position = 0
    for records in iter_record_batches(body, content_type, batch_size):
        yield normalize_records(records, first_position=position, rules=rules)
        position += len(records)
