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
