"""Whose record is it: the phone number of one raw record (a dict as parsed), as normalize reads it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloudagent_etl.normalize.columns import ALIAS_RANK, COLUMN_BY_TOKEN, field_token
from cloudagent_etl.personal_data.phones import PseudonymKey, to_e164

_NULL_MARKERS = frozenset({"", "none", "null", "na"})


def record_phone(record: Any) -> str | None:
    """The raw phone number of a record: its best phone alias with a value (as normalize picks it)."""
    if not isinstance(record, Mapping):
        return None
    candidates = []
    for name, value in record.items():
        token = field_token(str(name))
        if (
            COLUMN_BY_TOKEN.get(token) != "phone_number_raw"
            or value is None
            or isinstance(value, dict | list)
        ):
            continue
        if str(value).strip().lower() in _NULL_MARKERS:
            continue
        candidates.append((ALIAS_RANK[token], str(value)))
    return min(candidates)[1] if candidates else None


def record_e164(record: Any, region: str) -> str | None:
    raw = record_phone(record)
    return None if raw is None else to_e164(raw, region)


def record_pseudonym(record: Any, key: PseudonymKey, region: str) -> str | None:
    """The pseudonym of the record's phone number; None when it has none that parses."""
    e164 = record_e164(record, region)
    return None if e164 is None else key.pseudonym(e164)
