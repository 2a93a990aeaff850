"""SQLAlchemy Core metadata for every table; Alembic migrations in ``migrations/`` create them.

Times are stored in UTC through :class:`UtcDateTime` (``timestamptz`` on PostgreSQL, naive UTC text on
SQLite) and always come back timezone-aware, so the two databases behave the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: An auto-incrementing 64-bit id (SQLite only auto-increments INTEGER PRIMARY KEY).
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both databases; naive datetimes are refused, never guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given where a UTC time is stored")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---------------------------------------------------------------------------------------------- landing
EXPORT_REQUEST_STATES = ("requested", "received", "loaded", "failed", "expired")

export_requests = Table(
    "export_requests",
    metadata,
    Column("request_id", String(36), primary_key=True, comment="UUID made by us; part of the callback URL"),
    Column("account", Text, nullable=False, comment="CloudAgent userName the request was made for"),
    Column("campaign_name", Text, nullable=False),
    Column("window_start", UtcDateTime, nullable=False),
    Column("window_end", UtcDateTime, nullable=False),
    Column("filters", JSON, nullable=False, comment="sortby, status, dialstatus, dispositions as sent"),
    Column("unique_id", Text, nullable=True, comment="uniqueId CloudAgent answered with"),
    Column("callback_token_sha256", String(64), nullable=False, comment="SHA-256 of the per-request token"),
    Column("state", String(16), nullable=False, server_default="requested"),
    Column("created_at", UtcDateTime, nullable=False),
    Column("requested_at", UtcDateTime, nullable=True, comment="when CloudAgent accepted it"),
    Column("received_at", UtcDateTime, nullable=True, comment="first callback stored"),
    Column("loaded_at", UtcDateTime, nullable=True),
    Column("failed_at", UtcDateTime, nullable=True),
    Column("expired_at", UtcDateTime, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("dag_id", Text, nullable=True),
    Column("run_id", Text, nullable=True),
    Column("error", Text, nullable=True),
    CheckConstraint(f"state IN {EXPORT_REQUEST_STATES!r}", name="state"),
    Index(None, "campaign_name", "window_start"),
    Index(None, "unique_id"),
)

callback_payloads = Table(
    "callback_payloads",
    metadata,
    Column("payload_id", BigIntId, primary_key=True, autoincrement=True),
    Column("request_id", String(36), ForeignKey("export_requests.request_id"), nullable=False),
    Column("unique_id", Text, nullable=True, comment="uniqueId carried by the body, when it has one"),
    Column("received_at", UtcDateTime, nullable=False),
    Column("content_type", Text, nullable=True),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("client_addr", Text, nullable=True),
    Column("headers", JSON, nullable=True, comment="allow-listed request headers"),
    Column("parse_state", String(16), nullable=False, server_default="pending"),
    Column("late", Integer, nullable=False, server_default="0", comment="1 when it arrived after the load"),
    UniqueConstraint("request_id", "sha256"),
)

#: The raw body of a callback payload, in order, in pieces of at most ``landing.CHUNK_BYTES`` bytes: a body
#: of hundreds of MB is written and read a piece at a time, never held whole in memory. Read it through
#: ``landing.iter_payload_body`` / ``open_payload_body`` / ``read_payload_body``.
callback_payload_chunks = Table(
    "callback_payload_chunks",
    metadata,
    Column(
        "payload_id",
        BigIntId,
        ForeignKey("callback_payloads.payload_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seq", Integer, primary_key=True, autoincrement=False, comment="0, 1, 2, ... in body order"),
    Column("data", LargeBinary, nullable=False),
)

# ---------------------------------------------------------------------------------------------- limiter
rate_limit_accounts = Table(
    "rate_limit_accounts",
    metadata,
    Column("account", Text, primary_key=True, comment="row locked while a call is admitted"),
)

api_call_log = Table(
    "api_call_log",
    metadata,
    Column("call_id", BigIntId, primary_key=True, autoincrement=True),
    Column("account", Text, nullable=False),
    Column("called_at", Double, nullable=False, comment="UNIX time (s) the call was admitted"),
    Column("purpose", Text, nullable=True, comment="e.g. the campaign or request id"),
    Index(None, "account", "called_at"),
)


# ================================================================================================ warehouse
# Written only by the load step (warehouse.py); analysts read these tables and the views of migration
# 0002. DATA_DICTIONARY is the one description of every column: the tables below, the PostgreSQL column
# comments (migration 0002) and the README's data dictionary all come from it.
# Versions are stored once: the current one in ``dial_status``, every other (replaced or older) one in
# ``dial_status_superseded``; ``dial_status_history`` is the view of both (a first load writes one table).
_VERSION_COLUMNS_DOC = {
    "campaign_name": "CloudAgent campaign (CampaignName); part of the key",
    "record_key": "the lead id (DataUniqueId or alias) or, without one, 'sha256:' + hash of campaign, "
    "canonical phone and UTC created time; part of the key",
    "phone_number": "canonical phone number: digits with country code 91 (10-digit numbers get 91)",
    "phone_number_raw": "phone number exactly as received",
    "customer_name": "lead name (Name)",
    "lead_status": "lead status (Status): Success, Fail, Pending, ...",
    "dial_status": "dial status as received; multi-leg values joined with ' -> '",
    "dial_status_first": "first leg of dial_status",
    "dial_status_last": "final leg of dial_status (the outcome of the last attempt)",
    "disposition": "disposition the agent chose",
    "attempts": "number of dial attempts (integer)",
    "agent_id": "agent id (AgentID)",
    "agent_name": "agent name",
    "ucid": "CloudAgent call id (UCID), text: exact beyond 2^53",
    "monitor_ucid": "monitor call id (monitorUCID), text",
    "call_started_at": "call start (UTC; source is wall clock in the account time zone)",
    "call_ended_at": "call end (UTC)",
    "call_duration_s": "call duration in seconds (source HH:MM:SS)",
    "skill": "skill the call was routed by",
    "priority": "lead priority as received",
    "created_at": "lead created (UTC)",
    "updated_at": "lead last updated (UTC): the version; newer wins",
    "extra": "JSON object of the record's fields that have no column (custom upload columns); "
    "API keys are never kept",
    "request_id": "export request whose payload wrote this version",
    "payload_id": "callback payload that wrote this version",
    "load_run_id": "load run that wrote this version",
    "loaded_at": "when this version was written (UTC)",
}
DATA_DICTIONARY: dict[str, dict[str, str]] = {
    "dial_status": {
        **_VERSION_COLUMNS_DOC,
        "previous_load_run_id": "load run that wrote the version this one replaced (NULL for the first)",
    },
    "dial_status_superseded": _VERSION_COLUMNS_DOC,
    "dial_status_history": _VERSION_COLUMNS_DOC,
    "dial_status_rejects": {
        "payload_id": "callback payload the record came from",
        "position": "0-based position of the record in the payload",
        "request_id": "export request of the payload",
        "load_run_id": "load run that first rejected it (a reload adds nothing)",
        "reason": "every contract rule the record broke, '; '-separated",
        "raw_record": "the record as received (values as text), API key fields removed",
        "rejected_at": "when it was rejected (UTC)",
    },
    "load_runs": {
        "load_run_id": "one row per attempt to load one payload",
        "request_id": "export request",
        "payload_id": "callback payload loaded",
        "status": "loaded, or failed (the payload could not be parsed; see error)",
        "started_at": "load start (UTC)",
        "finished_at": "load end (UTC)",
        "rows_in": "records in the payload",
        "inserted": "keys new to dial_status",
        "updated": "existing keys whose current row this load changed",
        "unchanged": "keys of the payload that changed nothing (identical, or older than the current row)",
        "duplicates": "records superseded by another record of the same key in the same payload",
        "rejected": "records that broke the contract (see dial_status_rejects)",
        "seconds": "load duration in seconds",
        "error": "why the load failed",
    },
}

#: JSON on SQLite, JSONB on PostgreSQL (comparable, so an unchanged row can be recognised).
JsonDocument = JSON().with_variant(JSONB(), "postgresql")


def _documented(table: str, *columns: Column[Any]) -> list[Column[Any]]:
    for column in columns:
        column.comment = DATA_DICTIONARY[table][column.name]
    return list(columns)


def _version_columns(table: str) -> list[Column[Any]]:
    """The columns of one version of a lead, shared by ``dial_status`` and ``dial_status_superseded``."""
    text_columns = (
        "phone_number",
        "phone_number_raw",
        "customer_name",
        "lead_status",
        "dial_status",
        "dial_status_first",
        "dial_status_last",
        "disposition",
    )
    return _documented(
        table,
        Column("campaign_name", Text, primary_key=True),
        Column("record_key", Text, primary_key=True),
        *(Column(name, Text, nullable=True) for name in text_columns),
        Column("attempts", Integer, nullable=True),
        Column("agent_id", Text, nullable=True),
        Column("agent_name", Text, nullable=True),
        Column("ucid", Text, nullable=True),
        Column("monitor_ucid", Text, nullable=True),
        Column("call_started_at", UtcDateTime, nullable=True),
        Column("call_ended_at", UtcDateTime, nullable=True),
        Column("call_duration_s", Integer, nullable=True),
        Column("skill", Text, nullable=True),
        Column("priority", Text, nullable=True),
        Column("created_at", UtcDateTime, nullable=True),
        Column("updated_at", UtcDateTime, nullable=False, primary_key=table != "dial_status"),
        Column("extra", JsonDocument, nullable=True),
        Column("request_id", String(36), nullable=False),
        Column("payload_id", BigInteger, nullable=False),
        Column("load_run_id", BigInteger, nullable=False),
        Column("loaded_at", UtcDateTime, nullable=False),
    )


#: Columns compared to decide whether an incoming version differs from the stored one (no lineage).
DIAL_STATUS_VALUE_COLUMNS = (
    "phone_number",
    "phone_number_raw",
    "customer_name",
    "lead_status",
    "dial_status",
    "dial_status_first",
    "dial_status_last",
    "disposition",
    "attempts",
    "agent_id",
    "agent_name",
    "ucid",
    "monitor_ucid",
    "call_started_at",
    "call_ended_at",
    "call_duration_s",
    "skill",
    "priority",
    "created_at",
    "updated_at",
    "extra",
)

dial_status = Table(
    "dial_status",
    metadata,
    *_version_columns("dial_status"),
    *_documented("dial_status", Column("previous_load_run_id", BigInteger, nullable=True)),
    Index(None, "campaign_name", "updated_at"),
    Index(None, "dial_status_last"),
    Index(None, "disposition"),
    comment="current state: one row per campaign_name + record_key, the newest updated_at wins",
)

dial_status_superseded = Table(
    "dial_status_superseded",
    metadata,
    *_version_columns("dial_status_superseded"),
    comment="versions that are not current: replaced by a newer one, or older than the current row",
)

HISTORY_VIEW_COMMENT = (
    "view: every distinct version seen, keyed by campaign_name + record_key + updated_at "
    "(dial_status_superseded UNION ALL dial_status)"
)

#: Views of migration 0002, described as tables so that code can select from them; not created by
#: ``metadata`` (which holds only real tables).
view_metadata = MetaData()

dial_status_history = Table(
    "dial_status_history",
    view_metadata,
    *_version_columns("dial_status_history"),
    comment=HISTORY_VIEW_COMMENT,
)

dial_status_rejects = Table(
    "dial_status_rejects",
    metadata,
    *_documented(
        "dial_status_rejects",
        Column("payload_id", BigInteger, primary_key=True),
        Column("position", Integer, primary_key=True, autoincrement=False),
        Column("request_id", String(36), nullable=False),
        Column("load_run_id", BigInteger, nullable=False),
        Column("reason", Text, nullable=False),
        Column("raw_record", JsonDocument, nullable=False),
        Column("rejected_at", UtcDateTime, nullable=False),
    ),
    comment="records that broke the contract, with the reason; never silently dropped",
)

LOAD_RUN_STATES = ("loaded", "failed")

load_runs = Table(
    "load_runs",
    metadata,
    *_documented(
        "load_runs",
        Column("load_run_id", BigIntId, primary_key=True, autoincrement=True),
        Column("request_id", String(36), nullable=False),
        Column("payload_id", BigInteger, nullable=False),
        Column("status", String(16), nullable=False),
        Column("started_at", UtcDateTime, nullable=False),
        Column("finished_at", UtcDateTime, nullable=False),
        Column("rows_in", BigInteger, nullable=False),
        Column("inserted", BigInteger, nullable=False),
        Column("updated", BigInteger, nullable=False),
        Column("unchanged", BigInteger, nullable=False),
        Column("duplicates", BigInteger, nullable=False),
        Column("rejected", BigInteger, nullable=False),
        Column("seconds", Double, nullable=False),
        Column("error", Text, nullable=True),
    ),
    CheckConstraint(f"status IN {LOAD_RUN_STATES!r}", name="status"),
    Index(None, "request_id"),
    Index(None, "payload_id"),
    comment="one row per load of one payload: counts and timings",
)
