"""Typing text columns with pyarrow.compute: times, durations, counts, phone numbers, null markers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cloudagent_etl.normalize.columns import TIME_FORMAT
from cloudagent_etl.settings import (
    zone,
)

# Text columns are Arrow arrays typed with pyarrow.compute (vectorized, no Python loop per value); the
# output is an Arrow table.
TEXT = pa.string()
#: Arrow's type of a time in a row: UTC, whole microseconds (what the warehouse stores).
UTC_TIME = pa.timestamp("us", tz="UTC")
NULL_TEXT = pa.scalar(None, TEXT)
#: The null markers (lower case) and the blanks ignored around them (ASCII: a no-break space is text).
NULL_MARKERS = pa.array(["", "none", "null", "na"], TEXT)
BLANKS = " \t\n\f\r"
_DURATION_PATTERN = r"^(?:(?P<h>\d{1,6}):(?P<m>[0-5]\d):(?P<s>[0-5]\d)|(?P<n>\d{1,9}))$"
_TIME_PARTS = (
    r"^(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})"
    r"\s+(?P<hour>\d{1,2}):(?P<minute>\d{1,2}):(?P<second>\d{1,2})$"
)
_SAFE_TIME = r"^\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1\d|2[0-8]) (?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d$"


def mask_of(array: pa.Array) -> np.ndarray:
    """A boolean Arrow array as numpy, NULL as False."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def nulled(text: pa.Array) -> pa.Array:
    """NULL for the null markers (any case, blanks around them ignored), the value otherwise.

    A lookup of the trimmed, lower-cased text: a third of the CPU of one regex over every value.
    """
    marker = pc.is_in(pc.ascii_lower(pc.utf8_trim(text, characters=BLANKS)), value_set=NULL_MARKERS)
    return pc.if_else(marker, NULL_TEXT, text)


def parse_time(
    text: pa.Array, tz: str, earliest: datetime, latest: datetime
) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Wall-clock text in ``tz`` -> UTC (:data:`UTC_TIME`), and the rows too early and too late (then NULL).

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
    in_range = utc.mask(early | late) if early.any() or late.any() else utc
    return pa.array(in_range, type=UTC_TIME), early, late


def _as_written(trimmed: pa.Array, local: pa.Array) -> pa.Array:
    """Whether each parsed time has the fields written (False where it was rolled over or is NULL).

    Most rows are proved safe by one regex (day <= 28, hour <= 23, ...); only the others (days 29-31,
    unpadded fields) have their fields extracted and compared: extracting every row cost 6x the parse.
    """
    safe = mask_of(pc.match_substring_regex(trimmed, _SAFE_TIME))
    doubtful = np.flatnonzero(~safe & mask_of(local.is_valid()))
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
        safe[doubtful] = mask_of(same)
    return pa.array(safe)


def _whole_number(text: pa.Array) -> pa.Array:
    return pc.cast(pc.if_else(pc.equal(text, ""), "0", text), pa.int64())


def parse_duration(text: pa.Array) -> pa.Array:
    parts = pc.extract_regex(pc.utf8_trim_whitespace(text), _DURATION_PATTERN)
    hours, minutes, seconds, plain = (pc.struct_field(parts, name) for name in ("h", "m", "s", "n"))
    hms = pc.add(
        pc.add(pc.multiply(_whole_number(hours), 3600), pc.multiply(_whole_number(minutes), 60)),
        _whole_number(seconds),
    )
    return pc.if_else(pc.equal(plain, ""), hms, _whole_number(plain))


def parse_count(text: pa.Array) -> pa.Array:
    trimmed = pc.utf8_trim_whitespace(text)
    digits = pc.if_else(pc.match_substring_regex(trimmed, r"^\d{1,9}$"), trimmed, NULL_TEXT)
    return pc.cast(digits, pa.int64())


def canonical_phone(raw: pa.Array) -> pa.Array:
    """Digits with country code 91 (see module docstring); NULL when no digit is left."""
    digits = pc.replace_substring_regex(raw, r"\D", "")
    length = pc.utf8_length(digits)
    national = pc.equal(length, 10)
    trunk = pc.and_(pc.equal(length, 11), pc.starts_with(digits, "0"))
    canonical = pc.if_else(national, pc.binary_join_element_wise("91", digits, ""), digits)
    canonical = pc.if_else(
        trunk, pc.binary_join_element_wise("91", pc.utf8_slice_codeunits(digits, 1), ""), canonical
    )
    return pc.if_else(pc.equal(canonical, ""), NULL_TEXT, canonical)


def legs(dial_status: pa.Array) -> tuple[pa.Array, pa.Array]:
    first = pc.utf8_trim_whitespace(pc.replace_substring_regex(dial_status, r" -> .*$", ""))
    last = pc.utf8_trim_whitespace(pc.replace_substring_regex(dial_status, r"^.* -> ", ""))
    return nulled(first), nulled(last)


def may_contain(text: pa.Array, needle: str) -> bool:
    """Whether any value may contain ``needle``: one search of the array's bytes (false positives are
    possible, e.g. across two values; false negatives are not)."""
    data = text.buffers()[2] if text.null_count < len(text) else None
    return data is not None and needle.encode() in data.to_pybytes()


def longer_than(text: pa.Array, limit: int) -> np.ndarray:
    """Rows longer than ``limit`` characters; the offsets answer first (bytes >= characters)."""
    offsets = text.buffers()[1]
    if offsets is not None and len(text):
        ends = np.frombuffer(offsets, dtype=np.int32)[text.offset : text.offset + len(text) + 1]
        if int(np.diff(ends).max()) <= limit:
            return np.zeros(len(text), dtype=bool)
    return mask_of(pc.greater(pc.utf8_length(text), limit))


def cut(text: pa.Array, limit: int) -> pa.Array:
    return pc.utf8_slice_codeunits(text, 0, limit)
