"""The columns of a normalized row, the source fields that feed them, and the limits of a value."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from cloudagent_etl.settings import (
    DEFAULT_EARLIEST_RECORD_TIME,
    DEFAULT_FUTURE_TOLERANCE,
)

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
    "phone_e164": "text",
    "phone_pseudonym": "text",
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


COLUMN_BY_TOKEN: Final[dict[str, str]] = {
    field_token(alias): column for column, aliases in FIELD_ALIASES.items() for alias in aliases
}
ALIAS_RANK: Final[dict[str, int]] = {
    field_token(alias): rank for aliases in FIELD_ALIASES.values() for rank, alias in enumerate(aliases)
}
