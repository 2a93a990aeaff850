"""The landing tables and the states of an export request: what the rest of ``landing`` reads and writes.

``export_requests`` holds one row per API call with its :class:`RequestState`::

    requested ──> received ──> loaded ──> loaded        (a re-load of a loaded request stays loaded)
        │             │
        └─────────────┴──> failed | expired ──> loaded  (a late payload was loaded after all)

``callback_payloads`` holds one row per distinct body per request; the bytes live in
``callback_payload_chunks`` in pieces of at most :data:`CHUNK_BYTES`. ``export_request_runs`` records which
DAG run relied on which request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import Enum, StrEnum, auto

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from cloudagent_etl.databases import partial_index_options
from cloudagent_etl.settings import DEFAULT_TIMEZONE
from cloudagent_etl.sqltypes import BigIntId, UtcDateTime, metadata

#: Largest piece of a body stored in one ``callback_payload_chunks`` row (and read at once).
CHUNK_BYTES = 4 * 1024 * 1024


class RequestState(StrEnum):
    """Where an export request is in its life (see the module docstring's diagram)."""

    REQUESTED = "requested"
    RECEIVED = "received"
    LOADED = "loaded"
    FAILED = "failed"
    EXPIRED = "expired"


class CallbackStatus(Enum):
    """What a wait for a request's callback should do next."""

    WAITING = auto()  # no callback yet: keep waiting
    LANDED = auto()  # a callback is stored: its payloads can be loaded
    GAVE_UP = auto()  # the request failed or expired: no callback is awaited any more


#: For each target state, the states a request may move to it from.
ALLOWED_SOURCES: Mapping[RequestState, frozenset[RequestState]] = {
    RequestState.REQUESTED: frozenset(),
    RequestState.RECEIVED: frozenset({RequestState.REQUESTED, RequestState.RECEIVED}),
    RequestState.LOADED: frozenset(
        {RequestState.RECEIVED, RequestState.LOADED, RequestState.FAILED, RequestState.EXPIRED}
    ),
    RequestState.FAILED: frozenset({RequestState.REQUESTED, RequestState.RECEIVED, RequestState.FAILED}),
    RequestState.EXPIRED: frozenset({RequestState.REQUESTED, RequestState.RECEIVED, RequestState.EXPIRED}),
}
#: States in which an export can still be answered (or its answer still needs loading): it is reused.
LIVE = frozenset({RequestState.REQUESTED, RequestState.RECEIVED})
#: States in which a new callback is late: the request was already settled without it.
LATE = frozenset({RequestState.LOADED, RequestState.FAILED, RequestState.EXPIRED})


def sql_list(states: Iterable[RequestState]) -> str:
    """``('a', 'b')``: states as an SQL list, for constraints and partial indexes."""
    return "(" + ", ".join(f"'{state.value}'" for state in sorted(states)) + ")"


def now() -> datetime:
    return datetime.now(UTC)


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
    Column("state", String(16), nullable=False, server_default=RequestState.REQUESTED.value),
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
    Column(
        "timezone",
        Text,
        nullable=False,
        server_default=DEFAULT_TIMEZONE,
        comment="time zone of the account: the export's window and the records' times are wall clock in it",
    ),
    Column("callback_base_url", Text, nullable=True, comment="base of the callBackUrl given (no token)"),
    Column(
        "export_key",
        String(64),
        nullable=True,
        comment="SHA-256 of account, campaign, window and filters: one live export per key",
    ),
    Column(
        "callback_deadline",
        UtcDateTime,
        nullable=True,
        comment="when the wait for the callback gives up; a sweep expires the request after it",
    ),
    Column(
        "attempt",
        Integer,
        nullable=False,
        server_default="1",
        comment="1 for the first export of a window, 2 for its first re-request, ...",
    ),
    Column(
        "retry_of", String(36), nullable=True, comment="the expired or failed request this one re-requests"
    ),
    Column("reason", Text, nullable=True, comment="why this export was made"),
    Column(
        "cloudagent_conn_id",
        Text,
        nullable=True,
        comment="Airflow connection of the account (NULL: made before accounts had connections of their own)",
    ),
    CheckConstraint(f"state IN {sql_list(RequestState)}", name="state"),
    Index(None, "campaign_name", "window_start"),
    Index(None, "unique_id"),
    # One live export per key: a retry, a cleared task or a concurrent run reuses it (see claim_export).
    Index(
        "uq_export_requests_export_key_live",
        "export_key",
        unique=True,
        **partial_index_options(f"state IN {sql_list(LIVE)}"),
    ),
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
    Column("part_no", Integer, nullable=True, comment="i of a body that says it is part i of n"),
    Column("part_count", Integer, nullable=True, comment="n of a body that says it is part i of n"),
    Column(
        "body_purged_at",
        UtcDateTime,
        nullable=True,
        comment="when retention deleted the raw body (size, sha256 and the counts stay); NULL: kept",
    ),
    Column("purge_setting", Text, nullable=True, comment="the retention setting the body was purged under"),
    Column(
        "body_rewritten_at",
        UtcDateTime,
        nullable=True,
        comment="when the body was last rewritten without the records of people erased on request",
    ),
    Column("body_rewrite_note", Text, nullable=True, comment="what the rewrites removed and how"),
    UniqueConstraint("request_id", "sha256"),
)

#: Which DAG runs relied on which request: its own new export, a live one it reused, or a re-request.
export_request_runs = Table(
    "export_request_runs",
    metadata,
    Column("dag_id", Text, primary_key=True),
    Column("run_id", Text, primary_key=True),
    Column("campaign_name", Text, primary_key=True),
    Column("request_id", String(36), ForeignKey("export_requests.request_id"), primary_key=True),
    Column("claimed_at", UtcDateTime, nullable=False),
    comment="which DAG run waited for which export request (its own, a reused live one, a re-request)",
)

#: The raw body of a callback payload, in order, in pieces of at most :data:`CHUNK_BYTES` bytes: a body
#: of hundreds of MB is written and read a piece at a time, never held whole in memory.
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
