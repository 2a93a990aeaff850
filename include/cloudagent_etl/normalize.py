"""Raw callback bytes -> typed pandas frames of dial-status rows, plus the rows that broke the contract.

Pure: bytes (or a binary file) and a content type in, frames out; no database. The document is
parsed as a stream into batches of records, so a payload of hundreds of MB is never held as one list of
Python objects. A JSON array is read in slices of :data:`SLICE_BYTES`, each cut at a record boundary and
parsed by orjson (~2x faster than a streaming parser); a slice whose values are not plain text/integers
(orjson reads a fraction, or an integer beyond 64 bits, as a float) is parsed again by ijson, which
keeps numbers exact, and every other shape (object, nested document, invalid JSON) streams through ijson.

The rules (the contract is in ``docs/cloudagent-contract.md``, the data model in ``docs/data-model.md``):

- Shapes: a JSON array of records; a JSON object holding them under ``data``/``records``/``details``/
  ``Data`` (the value may also be a JSON string); a form body (``application/x-www-form-urlencoded`` or
  ``multipart/form-data``) whose ``data`` field holds either.
  Anything else raises :class:`PayloadError` (the load records it as a failed load).
- Field names map to columns through :data:`FIELD_ALIASES`, ignoring case and ``_``/``-``/space, so
  ``DataUniqueId``, ``dataUniqueId`` and ``data_unique_id`` are one field. A field holding an API key
  (``Apikey``, ``apiKey``, ``api_key``, ...) is dropped everywhere; every other unknown field is kept,
  per row, in the JSON column ``extra`` with its raw value.
- ``""``, ``"None"``, ``"null"``, ``"NA"`` (any case, surrounding blanks ignored) are NULL.
- Times are wall-clock in ``timezone`` (``YYYY-MM-DD HH:MM:SS``) and become UTC; durations ``HH:MM:SS``
  (or plain seconds) become integer seconds; ids stay text (JSON numbers are never read as floats).
- ``phone_number`` is the digits of the raw number with the country code 91: 10 digits get ``91``
  prefixed, a trunk ``0`` + 10 digits becomes ``91`` + 10 digits, anything else keeps its digits.
- ``dial_status`` keeps the full text; ``dial_status_first``/``dial_status_last`` are the legs of
  ``"a -> b -> c"``.
- ``record_key`` is the lead id, else ``sha256:`` + 32 hex chars of campaign, canonical phone and the
  UTC created time; a row with neither is rejected.
- A row is rejected (with every reason found) when it has no campaign, no usable ``updated_at``, no
  record key, or a value that does not parse as its type.
- Within a batch, rows of one key are ordered by (``updated_at``, position): ``is_latest`` marks the
  one that may become current, and an earlier row with the same key *and* ``updated_at`` is dropped
  (the later one is the same version, as received last).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from email.parser import BytesParser
from email.policy import HTTP
from itertools import chain, islice
from typing import IO, Any, Final
from urllib.parse import parse_qs

import ijson
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cloudagent_etl.errors import PayloadError
from cloudagent_etl.media_types import FORM_URLENCODED, MULTIPART_FORM, media_type
from cloudagent_etl.settings import zone

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


def field_token(name: str) -> str:
    """A field name compared without case or separators: ``Data_Unique-Id`` -> ``datauniqueid``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def is_secret_field(name: str) -> bool:
    """Whether a source field holds an API key; such a field is never copied anywhere."""
    return "apikey" in field_token(name)


_COLUMN_BY_TOKEN: Final[dict[str, str]] = {
    field_token(alias): column for column, aliases in FIELD_ALIASES.items() for alias in aliases
}
_ALIAS_RANK: Final[dict[str, int]] = {
    field_token(alias): rank for aliases in FIELD_ALIASES.values() for rank, alias in enumerate(aliases)
}


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


def _json_records(stream: IO[bytes]) -> Iterator[Any]:
    """The records of a JSON body (an array, or an object holding them), streamed."""
    head = b""
    while not head.strip():
        piece = stream.read(4096)
        if not piece:
            raise PayloadError("payload is empty")
        head += piece
    body = head.lstrip()
    first = body[:1]
    if first == b"[":
        yield from _array_records(body[1:], stream)
    elif first == b"{":
        yield from _object_records(ijson.parse(_PrefixedReader(head, stream), use_float=False))
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
    return list(ijson.items(io.BytesIO(b"[" + elements + b"]"), "item", use_float=False))


def _ijson_elements(pending: bytes, stream: IO[bytes]) -> Iterator[Any]:
    """The remaining elements of an array (``pending`` then ``stream``), streamed by ijson."""
    yield from ijson.items(_PrefixedReader(b"[" + pending, stream), "item", use_float=False)


def _object_records(events: Iterator[tuple[str, str, Any]]) -> Iterator[Any]:
    """The records held by the first top-level key of ``RECORD_CONTAINER_KEYS`` (array or JSON string)."""
    for prefix, event, value in events:
        if prefix == "" and event == "map_key" and value in RECORD_CONTAINER_KEYS:
            start = next(events)
            if start[1] == "start_array":
                yield from ijson.items(chain([start], events), f"{value}.item")
            elif start[1] == "string":  # a JSON string holding the records, as form-style callbacks send them
                yield from _json_records(io.BytesIO(start[2].encode()))
            else:
                raise PayloadError(
                    f"{value!r} of the payload holds a {start[1].replace('start_', '')}, not records"
                )
            return
    raise PayloadError(
        f"JSON object payload holds no records under any of {', '.join(RECORD_CONTAINER_KEYS)}"
    )


def iter_records(body: Body, content_type: str | None) -> Iterator[Any]:
    """Every record of a callback body, in order (a record is whatever the array holds, usually a dict).

    Raises :class:`PayloadError` when the body is not one of the accepted shapes or is not valid JSON;
    the error may come after some records were yielded (a truncated document).
    """
    kind = media_type(content_type)
    try:
        if kind == FORM_URLENCODED:
            raw = body if isinstance(body, bytes) else body.read()
            fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
            if "data" not in fields:
                raise PayloadError("form payload has no 'data' field")
            yield from _json_records(io.BytesIO(fields["data"][0].encode()))
        elif kind == MULTIPART_FORM:
            raw = body if isinstance(body, bytes) else body.read()
            yield from _json_records(io.BytesIO(_multipart_data_field(raw, content_type or "")))
        else:
            yield from _json_records(io.BytesIO(body) if isinstance(body, bytes) else body)
    except ijson.JSONError as exc:
        raise PayloadError(f"payload is not valid JSON: {str(exc)[:200]}") from None
    except UnicodeDecodeError:
        raise PayloadError("form payload is not UTF-8") from None


def _multipart_data_field(raw: bytes, content_type: str) -> bytes:
    """The ``data`` field of a ``multipart/form-data`` body (the boundary comes from ``content_type``)."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    if not message.is_multipart():
        raise PayloadError("multipart payload has no parts (boundary missing or wrong)")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "data":
            data = part.get_payload(decode=True)
            return data if isinstance(data, bytes) else b""
    raise PayloadError("form payload has no 'data' field")


def iter_record_batches(
    body: Body, content_type: str | None, batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[list[Any]]:
    """The records of :func:`iter_records` in lists of at most ``batch_size``."""
    records = iter_records(body, content_type)
    while batch := list(islice(records, batch_size)):
        yield batch


# ---------------------------------------------------------------------------------------------- typing
# Text columns are Arrow arrays typed with pyarrow.compute (vectorized, no Python loop per value); the
# output is a pandas frame.
_TEXT = pa.string()
_NULL_TEXT = pa.scalar(None, _TEXT)
_NULL_PATTERN = r"^\s*(?i:none|null|na)?\s*$"
_DURATION_PATTERN = r"^(?:(?P<h>\d{1,6}):(?P<m>[0-5]\d):(?P<s>[0-5]\d)|(?P<n>\d{1,9}))$"
_PANDAS_TYPES = {_TEXT: pd.StringDtype("pyarrow"), pa.int64(): pd.Int64Dtype()}


def _as_text(value: Any) -> str | None:
    """A source value as text: numbers exactly as written (ints and Decimals, never floats)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    return orjson.dumps(value, default=str).decode()


def _text_columns(records: list[dict[str, Any]], fields: list[str]) -> dict[str, pa.Array]:
    """Each of ``fields`` as a text array, NULL where a record lacks it (fields not listed are never read)."""
    struct = pa.struct([(field, _TEXT) for field in fields])
    try:
        array = pa.array(records, type=struct)
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a non-text JSON value somewhere: convert, exactly
        array = pa.array(
            [{field: _as_text(record.get(field)) for field in fields} for record in records], struct
        )
    return {field: array.field(index) for index, field in enumerate(fields)}


def _nulled(text: pa.Array) -> pa.Array:
    """NULL for the null markers, the value otherwise."""
    return pc.if_else(pc.match_substring_regex(text, _NULL_PATTERN), _NULL_TEXT, text)


def _series(array: pa.Array) -> pd.Series:
    return pd.Series(array.to_pandas(types_mapper=_PANDAS_TYPES.get))


def _parse_time(text: pa.Array, tz: str) -> pd.Series:
    """Wall-clock text in ``tz`` -> UTC (NaT where absent or unparseable)."""
    local = pc.strptime(pc.utf8_trim_whitespace(text), format=TIME_FORMAT, unit="s", error_is_null=True)
    naive = pd.Series(local.to_pandas()).astype("datetime64[us]")
    return naive.dt.tz_localize(zone(tz), ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")


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


def hashed_record_key(campaign_name: str, phone_number: str, created_at: pd.Timestamp) -> str:
    """The record key of a lead without a lead id: stable across loads, time zones and re-deliveries."""
    material = f"{campaign_name}\x1f{phone_number}\x1f{created_at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()[:32]


def _without_secrets(record: dict[str, Any]) -> dict[str, Any]:
    return {key: _as_text(value) for key, value in record.items() if not is_secret_field(str(key))}


# ---------------------------------------------------------------------------------------------- batches
def _field_plan(records: list[dict[str, Any]]) -> tuple[dict[str, list[str]], list[str]]:
    """Source fields per column (best alias first) and the unknown fields; API-key fields are in neither."""
    by_column: dict[str, list[str]] = {}
    extra_fields: list[str] = []
    for field in dict.fromkeys(chain.from_iterable(records)):
        token = field_token(str(field))
        if "apikey" in token:
            continue
        column = _COLUMN_BY_TOKEN.get(token)
        if column is None:
            extra_fields.append(field)
        else:
            by_column.setdefault(column, []).append(field)
    for fields in by_column.values():
        fields.sort(key=lambda name: _ALIAS_RANK[field_token(str(name))])
    return by_column, extra_fields


_NEEDS_JSON_ESCAPE = r'[\x00-\x1f"\\]'


def _extra_json_columnar(extra_fields: list[str], text: dict[str, pa.Array]) -> pa.Array | None:
    """``extra`` built column-wise, when every record holds every unknown field as plain text.

    The same text as ``orjson.dumps(..., OPT_SORT_KEYS)`` per record; None when a value is missing or
    null (absent and null differ in ``extra``) or needs escaping: then it is built record by record.
    """
    pieces = []
    for field in sorted(extra_fields):
        values = text[field]
        if values.null_count or pc.any(pc.match_substring_regex(values, _NEEDS_JSON_ESCAPE)).as_py():
            return None
        quoted = pc.binary_join_element_wise(orjson.dumps(field).decode() + ':"', values, '"', "")
        pieces.append(quoted)
    return pc.binary_join_element_wise("{", pc.binary_join_element_wise(*pieces, ","), "}", "")


def _extra_json(
    records: list[dict[str, Any]],
    by_column: dict[str, list[str]],
    extra_fields: list[str],
    text: dict[str, pa.Array],
) -> pa.Array | list:
    """Per record, the JSON text of its unknown fields and of aliases shadowed by a better-ranked one."""
    shadowed = [
        (field, fields[:rank]) for fields in by_column.values() for rank, field in enumerate(fields) if rank
    ]
    if not extra_fields and not shadowed:
        return [None] * len(records)
    if not shadowed and (columnar := _extra_json_columnar(extra_fields, text)) is not None:
        return columnar
    extras: list[str | None] = []
    for record in records:
        kept = {field: _as_text(record[field]) for field in extra_fields if field in record}
        for field, better in shadowed:
            if record.get(field) is not None and any(record.get(name) is not None for name in better):
                kept[field] = _as_text(record[field])
        extras.append(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS).decode() if kept else None)
    return extras


def normalize_records(records: list[Any], *, first_position: int = 0, timezone: str) -> NormalizedBatch:
    """Type one batch of records (``first_position`` is the payload position of ``records[0]``)."""
    reject_rows: list[tuple[int, str, str]] = []
    dicts: list[dict[str, Any]] = []
    positions: list[int] = []
    for position, record in enumerate(records, start=first_position):
        if isinstance(record, dict):
            dicts.append(record)
            positions.append(position)
        else:
            reject_rows.append(
                (position, "record is not a JSON object", orjson.dumps(record, default=str).decode())
            )
    index = pd.Index(positions, name="position")

    by_column, extra_fields = _field_plan(dicts)
    text = _text_columns(
        dicts, [*(field for fields in by_column.values() for field in fields), *extra_fields]
    )
    empty = pa.nulls(len(dicts), _TEXT)
    source = {
        column: _nulled(
            pc.coalesce(*(text[field] for field in by_column[column])) if column in by_column else empty
        )
        for column in FIELD_ALIASES
    }

    columns: dict[str, pd.Series] = {}
    reasons: list[tuple[np.ndarray, str]] = []

    def typed(column: str, parsed: pd.Series, what: str) -> pd.Series:
        reasons.append(
            (parsed.isna().to_numpy() & source[column].is_valid().to_numpy(zero_copy_only=False), what)
        )
        return parsed

    for column in TIME_COLUMNS:
        columns[column] = typed(
            column, _parse_time(source[column], timezone), f"{column}: not a time {TIME_FORMAT}"
        )
    columns["attempts"] = typed(
        "attempts", _series(_parse_count(source["attempts"])), "attempts: not a count"
    )
    columns["call_duration_s"] = typed(
        "call_duration_s",
        _series(_parse_duration(source["call_duration_s"])),
        "call_duration_s: not HH:MM:SS",
    )
    phone = _canonical_phone(source["phone_number_raw"])
    first_leg, last_leg = _legs(source["dial_status"])
    derived = {"phone_number": phone, "dial_status_first": first_leg, "dial_status_last": last_leg}
    for column in ROW_COLUMNS:
        if column in derived:
            columns[column] = _series(derived[column])
        elif column in source and column not in columns:
            columns[column] = _series(source[column])
    lead_id = pc.utf8_trim_whitespace(source["lead_id"])
    record_key = _series(lead_id)
    for row in np.flatnonzero(record_key.isna().to_numpy()):
        name, number, created = (
            columns["campaign_name"][row],
            columns["phone_number"][row],
            columns["created_at"][row],
        )
        if not (pd.isna(name) or pd.isna(number) or pd.isna(created)):
            record_key.iloc[int(row)] = hashed_record_key(name, number, created)
    columns["record_key"] = record_key
    extra = _extra_json(dicts, by_column, extra_fields, text)
    columns["extra"] = (
        _series(extra) if isinstance(extra, pa.Array) else pd.Series(extra, dtype=_PANDAS_TYPES[_TEXT])
    )
    reasons.append((columns["campaign_name"].isna().to_numpy(), "campaign_name: missing"))
    reasons.append((source["updated_at"].is_null().to_numpy(zero_copy_only=False), "updated_at: missing"))
    reasons.append(
        (record_key.isna().to_numpy(), "record_key: no lead id, and no phone number + created time")
    )

    frame = pd.DataFrame({column: columns[column] for column in ROW_COLUMNS})
    frame.index = index
    rejected = np.zeros(len(dicts), dtype=bool)
    for mask, _ in reasons:
        rejected |= mask
    for row in np.flatnonzero(rejected):
        why = "; ".join(reason for mask, reason in reasons if mask[row])
        raw_record = orjson.dumps(_without_secrets(dicts[row])).decode()
        reject_rows.append((positions[row], why, raw_record))
    rows = _latest_per_version(frame[~rejected] if rejected.any() else frame)
    rejects = pd.DataFrame(sorted(reject_rows), columns=list(REJECT_COLUMNS)).astype({"position": "int64"})
    return NormalizedBatch(rows=rows, rejects=rejects, records_in=len(records))


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
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[NormalizedBatch]:
    """The payload as normalized batches, streamed; :class:`PayloadError` if it cannot be parsed."""
    position = 0
    for records in iter_record_batches(body, content_type, batch_size):
        yield normalize_records(records, first_position=position, timezone=timezone)
        position += len(records)
