"""The landing zone: export requests we made, and the raw callback bodies CloudAgent posted back.

This module owns ``export_requests``, ``callback_payloads`` and ``callback_payload_chunks``: it is the only
one that writes them and the only one that knows the states of a request. Everything else asks it through
:func:`callback_status`, the named transitions (:func:`mark_failed`, :func:`mark_expired`,
:func:`mark_loaded`, :func:`mark_load_failed`) and the readers below.

``export_requests`` holds one row per API call with its :class:`RequestState`::

    requested ──> received ──> loaded ──> loaded        (a re-load of a loaded request stays loaded)
        │             │
        └─────────────┴──> failed | expired ──> loaded  (a late payload was loaded after all)

``received -> received`` and ``failed/expired`` to themselves are allowed (idempotent retries); every
other move is refused with :class:`StateTransitionError`. Each row also records what a load needs (the
export's time zone and filters) and the callback base URL given to CloudAgent (never the token), so that
loads and reprocessing need only the database.

``callback_payloads`` holds one row per distinct body per request (the same body delivered twice is
stored once: unique on request id + SHA-256). The bytes themselves live in ``callback_payload_chunks``
in pieces of at most :data:`CHUNK_BYTES`, so that neither writing nor reading a body of hundreds of MB
holds it whole in memory. Read a body with :func:`iter_payload_body` (pieces), :func:`open_payload_body`
(a file object, e.g. for ``ijson``) or :func:`read_payload_body` (all bytes, for small bodies).

A callback that lands for a request already ``loaded``, ``failed`` or ``expired`` is stored with
``late = 1`` and the request's state is left as it is: nothing is dropped, and the reprocess DAG (or a
query for ``late = 1``) finds it. That holds for a grace period after the request settled: past it,
:func:`verify_callback_token` answers :attr:`TokenCheck.CLOSED` (and :func:`closed_for_callbacks` is
true), so a callback URL does not stay a write capability for ever. The callback token is never stored,
only its SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import secrets
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum, auto
from typing import IO, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    false,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from cloudagent_etl.errors import ConfigurationError, PayloadError, StateTransitionError
from cloudagent_etl.settings import DEFAULT_TIMEZONE, Secret
from cloudagent_etl.sqltypes import BigIntId, UtcDateTime, metadata

AUTOCOMMIT = "AUTOCOMMIT"
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
_ALLOWED_SOURCES: Mapping[RequestState, frozenset[RequestState]] = {
    RequestState.REQUESTED: frozenset(),
    RequestState.RECEIVED: frozenset({RequestState.REQUESTED, RequestState.RECEIVED}),
    RequestState.LOADED: frozenset(
        {RequestState.RECEIVED, RequestState.LOADED, RequestState.FAILED, RequestState.EXPIRED}
    ),
    RequestState.FAILED: frozenset({RequestState.REQUESTED, RequestState.RECEIVED, RequestState.FAILED}),
    RequestState.EXPIRED: frozenset({RequestState.REQUESTED, RequestState.RECEIVED, RequestState.EXPIRED}),
}
_LANDED = frozenset({RequestState.RECEIVED, RequestState.LOADED})
#: States in which an export can still be answered (or its answer still needs loading): it is reused.
_LIVE = frozenset({RequestState.REQUESTED, RequestState.RECEIVED})
#: States in which a new callback is late: the request was already settled without it.
_LATE = frozenset({RequestState.LOADED, RequestState.FAILED, RequestState.EXPIRED})


def _sql_list(states: Iterable[RequestState]) -> str:
    return "(" + ", ".join(f"'{state.value}'" for state in sorted(states)) + ")"


# ---------------------------------------------------------------------------------------------- tables
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
    CheckConstraint(f"state IN {_sql_list(RequestState)}", name="state"),
    Index(None, "campaign_name", "window_start"),
    Index(None, "unique_id"),
    # One live export per key: a retry, a cleared task or a concurrent run reuses it (see claim_export).
    Index(
        "uq_export_requests_export_key_live",
        "export_key",
        unique=True,
        sqlite_where=text(f"state IN {_sql_list(_LIVE)}"),
        postgresql_where=text(f"state IN {_sql_list(_LIVE)}"),
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


def _now() -> datetime:
    return datetime.now(UTC)


def token_sha256(token: str) -> str:
    """Hex SHA-256 of a callback token: what ``export_requests`` stores instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class NewExportRequest:
    """A freshly created request: its id and the callback token (shown once, only its hash is stored)."""

    request_id: str
    token: Secret = field(repr=False)


@dataclass(frozen=True)
class ExportRequest:
    """One ``export_requests`` row, without the token hash."""

    request_id: str
    account: str
    campaign_name: str
    window_start: datetime
    window_end: datetime
    filters: dict[str, Any]
    timezone: str
    callback_base_url: str | None
    callback_deadline: datetime | None
    attempt: int
    retry_of: str | None
    reason: str | None
    unique_id: str | None
    state: RequestState
    created_at: datetime
    requested_at: datetime | None
    received_at: datetime | None
    loaded_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    updated_at: datetime
    dag_id: str | None
    run_id: str | None
    error: str | None

    @property
    def is_loaded(self) -> bool:
        return self.state is RequestState.LOADED

    @property
    def is_expired(self) -> bool:
        """Its callback never came in time (a failed request failed for a reason a new export would meet)."""
        return self.state is RequestState.EXPIRED

    def describe(self) -> str:
        """'campaign X, window A .. B (uniqueId U, request R)': how messages name a request."""
        return (
            f"campaign {self.campaign_name!r}, window {self.window_start.isoformat()} .. "
            f"{self.window_end.isoformat()} (uniqueId {self.unique_id or 'none'}, request {self.request_id})"
        )


_REQUEST_COLUMNS = [export_requests.c[name] for name in ExportRequest.__dataclass_fields__]


def _request_of(row: Any) -> ExportRequest:
    values = row._asdict()
    return ExportRequest(**{**values, "state": RequestState(values["state"])})


def _status(conn: Connection, request_id: str) -> CallbackStatus:
    """WAITING while no callback (or not every part of a multi-part one) has landed; LANDED once it has
    (also for a loaded request); GAVE_UP for a failed or expired one."""
    state = _state(conn, request_id)
    if state is RequestState.REQUESTED:
        return CallbackStatus.WAITING
    if state is RequestState.RECEIVED:
        return CallbackStatus.LANDED if _every_part_landed(conn, request_id) else CallbackStatus.WAITING
    if state is RequestState.LOADED:
        return CallbackStatus.LANDED
    return CallbackStatus.GAVE_UP


def _every_part_landed(conn: Connection, request_id: str) -> bool:
    """True unless a payload says it is part i of n and some of the n parts have not landed yet."""
    parts = conn.execute(
        select(callback_payloads.c.part_no, callback_payloads.c.part_count).where(
            callback_payloads.c.request_id == request_id, callback_payloads.c.part_count.is_not(None)
        )
    ).all()
    if not parts:
        return True
    expected = max(count for _, count in parts)
    return {number for number, count in parts if count == expected} >= set(range(1, expected + 1))


def export_key(
    account: str, campaign_name: str, window_start: datetime, window_end: datetime, filters: Mapping[str, Any]
) -> str:
    """What makes two exports the same: account, campaign, window (as UTC instants) and filters."""
    identity = {
        "account": account,
        "campaign_name": campaign_name,
        "window": [moment.astimezone(UTC).isoformat() for moment in (window_start, window_end)],
        "filters": dict(sorted(filters.items())),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _new_request_values(**values: Any) -> tuple[NewExportRequest, dict[str, Any]]:
    request_id = str(uuid.uuid4())
    token = secrets.token_urlsafe(32)
    now = _now()
    row = {
        **values,
        "filters": dict(values["filters"]),
        "request_id": request_id,
        "callback_token_sha256": token_sha256(token),
        "state": RequestState.REQUESTED.value,
        "created_at": now,
        "updated_at": now,
    }
    return NewExportRequest(request_id=request_id, token=Secret(token)), row


def create_export_request(
    engine: Engine,
    *,
    account: str,
    campaign_name: str,
    window_start: datetime,
    window_end: datetime,
    filters: Mapping[str, Any],
    timezone: str = DEFAULT_TIMEZONE,
    callback_base_url: str | None = None,
    dag_id: str | None = None,
    run_id: str | None = None,
) -> NewExportRequest:
    """Insert a ``requested`` row with a fresh random callback token; return the id and the token.

    A bare row, outside the one-live-export rule: the pipeline asks through :func:`claim_export`.
    """
    new, row = _new_request_values(
        account=account,
        campaign_name=campaign_name,
        window_start=window_start,
        window_end=window_end,
        filters=filters,
        timezone=timezone,
        callback_base_url=callback_base_url,
        dag_id=dag_id,
        run_id=run_id,
    )
    with engine.begin() as conn:
        conn.execute(insert(export_requests).values(row))
    return new


@dataclass(frozen=True)
class ClaimedExport:
    """The export a caller should wait for: a new one to request from CloudAgent, or the live one to reuse."""

    request_id: str
    new: NewExportRequest | None  # None: reuse request_id, CloudAgent already has its callback URL

    @property
    def reused(self) -> bool:
        return self.new is None


def claim_export(
    engine: Engine,
    *,
    account: str,
    campaign_name: str,
    window_start: datetime,
    window_end: datetime,
    filters: Mapping[str, Any],
    timezone: str,
    callback_base_url: str,
    callback_timeout: timedelta,
    dag_id: str | None = None,
    run_id: str | None = None,
    retry_of: str | None = None,
) -> ClaimedExport:
    """The one live export of this window: the existing one, or a new ``requested`` row to call with.

    A live export (``requested`` or ``received``, and still within its callback deadline if requested) is
    reused: a task retry, a cleared task, a concurrent run or ``airflow dags test`` beside the scheduler
    all wait for the export already on its way instead of spending another API call. A ``requested`` one
    past its deadline is expired first. The rule is a partial unique index (one live row per
    :func:`export_key`), so it holds across processes: of two concurrent claims, one inserts and the other
    finds its row. ``retry_of`` names the expired or failed request a re-request replaces; the new row
    records it, its attempt number and why it was made.
    """
    key = export_key(account, campaign_name, window_start, window_end, filters)
    previous = require_export_request(engine, retry_of) if retry_of else None
    reason = (
        f"re-request after {previous.request_id} became {previous.state.value}"
        if previous is not None
        else "first export of this window"
    )
    for _ in range(3):  # a live row that is settled between our two statements: look again
        now = _now()
        with _write_transaction(engine) as conn:
            live = conn.execute(
                select(*_REQUEST_COLUMNS).where(
                    export_requests.c.export_key == key,
                    export_requests.c.state.in_([state.value for state in _LIVE]),
                )
            ).one_or_none()
            if live is not None:
                request = _request_of(live)
                overdue = request.callback_deadline is not None and request.callback_deadline <= now
                if not (request.state is RequestState.REQUESTED and overdue):
                    _record_run(conn, dag_id, run_id, campaign_name, request.request_id, now)
                    return ClaimedExport(request.request_id, None)
                _move(conn, request.request_id, RequestState.EXPIRED, _overdue_error(request))
                reason = f"re-request after {request.request_id} passed its callback deadline"
            new, row = _new_request_values(
                account=account,
                campaign_name=campaign_name,
                window_start=window_start,
                window_end=window_end,
                filters=filters,
                timezone=timezone,
                callback_base_url=callback_base_url,
                dag_id=dag_id,
                run_id=run_id,
                export_key=key,
                callback_deadline=now + callback_timeout,
                attempt=previous.attempt + 1 if previous is not None else 1,
                retry_of=retry_of,
                reason=reason,
            )
            inserted = conn.execute(_insert_unless_live(conn.dialect.name).values(row)).scalar_one_or_none()
            if inserted is not None:
                _record_run(conn, dag_id, run_id, campaign_name, new.request_id, now)
                return ClaimedExport(new.request_id, new)
    raise StateTransitionError(
        f"could not claim the export of {campaign_name!r} {window_start} .. {window_end}"
    )


def _record_run(
    conn: Connection,
    dag_id: str | None,
    run_id: str | None,
    campaign_name: str,
    request_id: str,
    now: datetime,
) -> None:
    if dag_id is None or run_id is None:
        return
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(
        dialect_insert(export_request_runs)
        .values(
            dag_id=dag_id, run_id=run_id, campaign_name=campaign_name, request_id=request_id, claimed_at=now
        )
        .on_conflict_do_nothing()
    )


@contextmanager
def _write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write after it reads: on SQLite it takes the write lock up front
    (``BEGIN IMMEDIATE``), so that a concurrent writer queues instead of failing our later upgrade."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn
        conn.commit()


def _insert_unless_live(dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING: a concurrent claim's live row wins, ours is not inserted."""
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return dialect_insert(export_requests).on_conflict_do_nothing().returning(export_requests.c.request_id)


def _overdue_error(request: ExportRequest) -> str:
    deadline = request.callback_deadline.isoformat() if request.callback_deadline else "its deadline"
    return f"no callback by {deadline} for {request.describe()}; expired by a sweep"


def callback_url(base_url: str, request_id: str, token: Secret) -> str:
    """The per-request ``callBackUrl`` given to CloudAgent (it contains the secret token)."""
    return f"{base_url.rstrip('/')}/callbacks/dial-status/{request_id}/{token.get()}"


def shown_callback_url(request: ExportRequest) -> str:
    """The ``callBackUrl`` of ``request`` as messages show it: its token replaced by ``***``."""
    base = request.callback_base_url or "<no callback URL recorded>"
    return f"{base.rstrip('/')}/callbacks/dial-status/{request.request_id}/***"


def record_unique_id(engine: Engine, request_id: str, unique_id: str) -> None:
    """Store the ``uniqueId`` CloudAgent answered with and stamp ``requested_at``.

    The state is not touched: the callback may already have landed (``received``) before this commits.
    """
    if not unique_id:
        raise ValueError("uniqueId is empty")
    now = _now()
    with engine.begin() as conn:
        result = conn.execute(
            update(export_requests)
            .where(export_requests.c.request_id == request_id)
            .values(unique_id=unique_id, requested_at=now, updated_at=now)
        )
        if result.rowcount != 1:
            raise StateTransitionError(f"export request {request_id} does not exist")


def _move(conn: Connection, request_id: str, target: RequestState, error: str | None = None) -> None:
    """Move a request to ``target`` inside the caller's transaction, or raise StateTransitionError.

    Stamps ``<state>_at`` (``received_at`` keeps the first receipt) and ``updated_at``, and sets ``error``
    to the given text (None clears it). The move is one conditional UPDATE, so two writers racing cannot
    both make a move that only one of them may make.
    """
    now = _now()
    stamp_column = export_requests.c[f"{target.value}_at"]
    stamp: Any = now
    if target is RequestState.RECEIVED:
        stamp = func.coalesce(stamp_column, bindparam(None, now, type_=UtcDateTime()))
    sources = sorted(state.value for state in _ALLOWED_SOURCES[target])
    result = conn.execute(
        update(export_requests)
        .where(export_requests.c.request_id == request_id, export_requests.c.state.in_(sources))
        .values({"state": target.value, stamp_column.name: stamp, "updated_at": now, "error": error})
    )
    if result.rowcount == 1:
        return
    current = _state(conn, request_id)
    raise StateTransitionError(
        f"export request {request_id} cannot move from {current.value!r} to {target.value!r}"
    )


def _state(conn: Connection, request_id: str) -> RequestState:
    state = conn.execute(
        select(export_requests.c.state).where(export_requests.c.request_id == request_id)
    ).scalar_one_or_none()
    if state is None:
        raise StateTransitionError(f"export request {request_id} does not exist")
    return RequestState(state)


def mark_failed(engine: Engine, request_id: str, error: str) -> None:
    """The export call failed: the request becomes ``failed`` with the (already redacted) reason."""
    with engine.begin() as conn:
        _move(conn, request_id, RequestState.FAILED, error)


def mark_expired(engine: Engine, request_id: str, error: str) -> CallbackStatus:
    """No callback (or not every part of one) came in time: a request still waiting becomes ``expired``.

    Returns the request's status afterwards: ``LANDED`` when the callback landed after all (the wait
    raced its deadline, nothing changes), else ``GAVE_UP``.
    """
    with _write_transaction(engine) as conn:
        status = _status(conn, request_id)
        if status is CallbackStatus.WAITING:
            _move(conn, request_id, RequestState.EXPIRED, error)
            return CallbackStatus.GAVE_UP
    return status


def mark_loaded(conn: Connection, request_id: str) -> None:
    """A payload of the request loaded, in the caller's (the load's) transaction."""
    _move(conn, request_id, RequestState.LOADED)


def mark_load_failed(engine: Engine, request_id: str, error: str) -> None:
    """No payload of the request could be loaded: it becomes ``failed`` unless it is loaded or expired."""
    with engine.begin() as conn:
        if RequestState.FAILED in _next_states(_state(conn, request_id)):
            _move(conn, request_id, RequestState.FAILED, error)


def _next_states(state: RequestState) -> set[RequestState]:
    return {target for target, sources in _ALLOWED_SOURCES.items() if state in sources}


def get_export_request(engine: Engine, request_id: str) -> ExportRequest | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(*_REQUEST_COLUMNS).where(export_requests.c.request_id == request_id)
        ).one_or_none()
    return None if row is None else _request_of(row)


def require_export_request(engine: Engine, request_id: str) -> ExportRequest:
    """The request, or a ConfigurationError: a request id that is not in the database we were given."""
    request = get_export_request(engine, request_id)
    if request is None:
        raise ConfigurationError(f"export request {request_id} does not exist in this database")
    return request


def callback_status(engine: Engine, request_id: str) -> CallbackStatus:
    """Whether the request's callback has landed (every part of it), is still awaited, or no longer is."""
    with engine.connect() as conn:
        try:
            return _status(conn, request_id)
        except StateTransitionError:
            raise ConfigurationError(f"export request {request_id} does not exist in this database") from None


def describe_request(engine: Engine, request_id: str) -> str:
    """How messages name a request (see :meth:`ExportRequest.describe`)."""
    request = get_export_request(engine, request_id)
    return f"request {request_id} (not found)" if request is None else request.describe()


def find_request_by_unique_id(engine: Engine, unique_id: str) -> str | None:
    """The id of the newest request CloudAgent answered with ``unique_id``, if any."""
    with engine.connect() as conn:
        return conn.execute(
            select(export_requests.c.request_id)
            .where(export_requests.c.unique_id == unique_id)
            .order_by(export_requests.c.created_at.desc())
            .limit(1)
        ).scalar_one_or_none()


def latest_requests_of_run(engine: Engine, dag_id: str, run_id: str) -> dict[str, ExportRequest]:
    """Per campaign, the newest request a DAG run relied on (made by it, reused, or re-requested)."""
    runs = export_request_runs.c
    used = select(runs.request_id).where(runs.dag_id == dag_id, runs.run_id == run_id)
    made = select(export_requests.c.request_id).where(
        export_requests.c.dag_id == dag_id, export_requests.c.run_id == run_id
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_REQUEST_COLUMNS)
            .where(or_(export_requests.c.request_id.in_(used), export_requests.c.request_id.in_(made)))
            .order_by(export_requests.c.created_at)
        ).all()
    return {row.campaign_name: _request_of(row) for row in rows}


def latest_request_per_campaign(engine: Engine) -> dict[str, ExportRequest]:
    """Per campaign, the newest request of any run."""
    with engine.connect() as conn:
        rows = conn.execute(select(*_REQUEST_COLUMNS).order_by(export_requests.c.created_at)).all()
    return {row.campaign_name: _request_of(row) for row in rows}


def requests_with_payloads(
    engine: Engine, campaigns: Iterable[str], window_start: datetime, window_end: datetime
) -> list[str]:
    """Ids of the requests of ``campaigns`` with landed payloads whose window overlaps the given one.

    Any state counts, so a late callback of an ``expired`` or ``failed`` request is found too. Oldest
    window first.
    """
    query = (
        select(export_requests.c.request_id)
        .where(
            export_requests.c.campaign_name.in_(list(campaigns)),
            select(callback_payloads.c.payload_id)
            .where(callback_payloads.c.request_id == export_requests.c.request_id)
            .exists(),
            export_requests.c.window_start < window_end,
            export_requests.c.window_end > window_start,
        )
        .order_by(export_requests.c.window_start, export_requests.c.created_at)
    )
    with engine.connect() as conn:
        return [str(row) for row in conn.scalars(query)]


# ---------------------------------------------------------------------------------------------- sweeps
#: A received request without a callback deadline (made before deadlines were recorded) is swept this
#: long after its callback landed.
UNDATED_RECEIVED_GRACE = timedelta(hours=1)


def expire_overdue(engine: Engine, now: datetime | None = None) -> list[str]:
    """Expire every request still waiting past its callback deadline (its wait died or never ran).

    Returns the ids expired by this call. A request whose callback landed meanwhile is left alone.
    """
    now = now or _now()
    with engine.connect() as conn:
        overdue = [
            _request_of(row)
            for row in conn.execute(
                select(*_REQUEST_COLUMNS).where(
                    export_requests.c.state.in_([state.value for state in _LIVE]),
                    export_requests.c.callback_deadline < now,
                )
            )
        ]
    return [
        request.request_id
        for request in overdue
        if mark_expired(engine, request.request_id, _overdue_error(request)) is CallbackStatus.GAVE_UP
    ]


def requests_with_unloaded_payloads(engine: Engine, now: datetime | None = None) -> list[str]:
    """Requests with landed payloads that no running load will pick up: oldest window first.

    Those are settled requests (loaded, failed, expired) with late payloads, and received requests past
    their callback deadline (their load never ran or died). A received request still within its deadline
    is left to its own load.
    """
    now = now or _now()
    state, deadline = export_requests.c.state, export_requests.c.callback_deadline
    abandoned = and_(
        state == RequestState.RECEIVED.value,
        or_(
            deadline < now,
            and_(deadline.is_(None), export_requests.c.received_at < now - UNDATED_RECEIVED_GRACE),
        ),
    )
    pending = (
        select(callback_payloads.c.payload_id)
        .where(
            callback_payloads.c.request_id == export_requests.c.request_id,
            callback_payloads.c.parse_state == "pending",
        )
        .exists()
    )
    query = (
        select(export_requests.c.request_id)
        .where(pending, or_(state.in_([state.value for state in _LATE]), abandoned))
        .order_by(export_requests.c.window_start, export_requests.c.created_at)
    )
    with engine.connect() as conn:
        return [str(request_id) for request_id in conn.scalars(query)]


def unloaded_payload_counts(engine: Engine, request_ids: Iterable[str]) -> dict[str, int]:
    """Per request (of those given), how many of its landed payloads no load has taken yet."""
    query = (
        select(callback_payloads.c.request_id, func.count())
        .where(
            callback_payloads.c.request_id.in_(list(request_ids)),
            callback_payloads.c.parse_state == "pending",
        )
        .group_by(callback_payloads.c.request_id)
    )
    with engine.connect() as conn:
        return {str(request_id): int(count) for request_id, count in conn.execute(query)}


# ---------------------------------------------------------------------------------------------- tokens
class TokenCheck(Enum):
    VALID = auto()
    UNKNOWN_REQUEST = auto()
    WRONG_TOKEN = auto()
    #: The token is right but the request settled longer ago than the late-callback grace period.
    CLOSED = auto()


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


_SETTLED_AT = {
    RequestState.LOADED: export_requests.c.loaded_at,
    RequestState.FAILED: export_requests.c.failed_at,
    RequestState.EXPIRED: export_requests.c.expired_at,
}
_TOKEN_HASH = select(
    export_requests.c.callback_token_sha256, export_requests.c.state, *_SETTLED_AT.values()
).where(export_requests.c.request_id == bindparam("request_id"))


def _closed(row: Any, late_grace: timedelta) -> bool:
    """Whether a request (a row of :data:`_TOKEN_HASH`) settled longer than ``late_grace`` ago."""
    column = _SETTLED_AT.get(RequestState(row.state))
    settled_at = None if column is None else row._mapping[column.name]
    return settled_at is not None and _now() - settled_at > late_grace


def verify_callback_token(
    engine: Engine, request_id: str, token: str, late_grace: timedelta | None = None
) -> TokenCheck:
    """Check a per-request callback token against the stored hash, in constant time.

    Anything that is not one of our UUIDs is an unknown request without a database round trip, so
    odd path values (NUL bytes, megabytes of text) never reach SQL. One read outside a transaction: no
    BEGIN and ROLLBACK round trips around it. With ``late_grace``, a request that was loaded, failed or
    expired longer ago than that is :attr:`TokenCheck.CLOSED`: a callback URL is not a write capability
    for ever.
    """
    if not _is_uuid(request_id):
        return TokenCheck.UNKNOWN_REQUEST
    with engine.connect().execution_options(isolation_level=AUTOCOMMIT) as conn:
        row = conn.execute(_TOKEN_HASH, {"request_id": request_id}).one_or_none()
    if row is None:
        return TokenCheck.UNKNOWN_REQUEST
    if not hmac.compare_digest(token_sha256(token), row.callback_token_sha256):
        return TokenCheck.WRONG_TOKEN
    if late_grace is not None and _closed(row, late_grace):
        return TokenCheck.CLOSED
    return TokenCheck.VALID


def closed_for_callbacks(engine: Engine, request_id: str, late_grace: timedelta) -> bool:
    """Whether the request settled (loaded, failed, expired) longer than ``late_grace`` ago."""
    with engine.connect().execution_options(isolation_level=AUTOCOMMIT) as conn:
        row = conn.execute(_TOKEN_HASH, {"request_id": request_id}).one_or_none()
    return row is not None and _closed(row, late_grace)


# ---------------------------------------------------------------------------------------------- storing
@dataclass(frozen=True)
class CallbackBody:
    """A body ready to store: a readable binary file (seekable) with its size and SHA-256 already known.

    The receiver measures and hashes a body while it spools it, so landing never reads it an extra time.
    """

    file: IO[bytes]
    size: int
    sha256: str

    @classmethod
    def from_bytes(cls, data: bytes) -> CallbackBody:
        return cls(io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class StoredCallback:
    """The outcome of :func:`store_callback`: which payload row holds the body, and whether it was new."""

    payload_id: int
    duplicate: bool
    late: bool


def store_callback(
    engine: Engine,
    request_id: str,
    body: CallbackBody,
    *,
    content_type: str | None = None,
    unique_id: str | None = None,
    client_addr: str | None = None,
    headers: Mapping[str, str] | None = None,
    part: tuple[int, int] | None = None,
) -> StoredCallback:
    """Store one callback body for a request, in one transaction; a body already stored is not stored again.

    ``part`` is (i, n) when the body says it is part i of n of the export: the request counts as landed
    once all n parts have (:func:`callback_status`).

    On PostgreSQL a body of at most one chunk (nearly every callback) is stored by one statement,
    :data:`_STORE_IN_ONE_STATEMENT` (one round trip instead of six, prepared by psycopg after a few
    uses); everything else goes through :func:`_store_in_steps`. Both leave identical rows.
    """
    details: dict[str, Any] = {
        "content_type": content_type,
        "unique_id": unique_id,
        "client_addr": client_addr,
        "headers": dict(headers) if headers is not None else None,
        "part_no": part[0] if part else None,
        "part_count": part[1] if part else None,
    }
    if engine.dialect.name == "postgresql" and body.size <= CHUNK_BYTES:
        return _store_in_one_statement(engine, request_id, body, **details)
    return _store_in_steps(engine, request_id, body, **details)


#: PostgreSQL: lock the request row, insert the payload (flagged late from the state read under the lock)
#: and its one chunk, and move ``requested -> received``, all in one statement. A duplicate inserts
#: nothing and returns no row (the caller then looks the stored one up: a row committed by a concurrent
#: delivery while this statement waited is not in its snapshot, but is in the next statement's).
_STORE_IN_ONE_STATEMENT = f"""
WITH request AS (
    SELECT state FROM export_requests WHERE request_id = %(request_id)s FOR NO KEY UPDATE
), payload AS (
    INSERT INTO callback_payloads (request_id, unique_id, received_at, content_type, sha256, size_bytes,
                                   client_addr, headers, part_no, part_count, late)
    SELECT %(request_id)s, %(unique_id)s, %(now)s, %(content_type)s, %(sha256)s, %(size_bytes)s,
           %(client_addr)s, %(headers)s::json, %(part_no)s, %(part_count)s,
           CASE WHEN request.state IN {_sql_list(_LATE)} THEN 1 ELSE 0 END
    FROM request
    ON CONFLICT (request_id, sha256) DO NOTHING
    RETURNING payload_id, late
), chunk AS (
    INSERT INTO callback_payload_chunks (payload_id, seq, data)
    SELECT payload_id, 0, %(data)s FROM payload WHERE %(size_bytes)s > 0
), moved AS (
    UPDATE export_requests
    SET state = '{RequestState.RECEIVED.value}', received_at = coalesce(received_at, %(now)s),
        updated_at = %(now)s, error = NULL
    WHERE request_id = %(request_id)s AND state = '{RequestState.REQUESTED.value}'
      AND EXISTS (SELECT FROM payload)
)
SELECT payload_id, late FROM payload
"""
_STORED_PAYLOAD = """
SELECT payload_id, late FROM callback_payloads WHERE request_id = %(request_id)s AND sha256 = %(sha256)s
"""


def _store_in_one_statement(
    engine: Engine, request_id: str, body: CallbackBody, *, headers: dict[str, str] | None, **details: Any
) -> StoredCallback:
    """:func:`store_callback` of a body of at most one chunk on PostgreSQL, in one statement."""
    body.file.seek(0)
    data = body.file.read()
    if len(data) != body.size:
        raise PayloadError(f"body has {len(data)} bytes, expected {body.size}")
    params = {
        **details,
        "request_id": request_id,
        "now": _now(),
        "sha256": body.sha256,
        "size_bytes": body.size,
        # the text SQLAlchemy's JSON type would write, so both paths store the same document
        "headers": json.dumps(headers) if headers is not None else None,
        "data": data,
    }
    # A single statement is its own transaction, committed (and flushed, synchronous_commit being on)
    # before its result comes back: without BEGIN and COMMIT it is one round trip instead of three.
    with engine.connect().execution_options(isolation_level=AUTOCOMMIT) as conn:
        stored = conn.exec_driver_sql(_STORE_IN_ONE_STATEMENT, params).one_or_none()
        if stored is not None:
            return StoredCallback(payload_id=stored.payload_id, duplicate=False, late=bool(stored.late))
        existing = conn.exec_driver_sql(_STORED_PAYLOAD, params).one_or_none()
    if existing is None:
        raise StateTransitionError(f"export request {request_id} does not exist")
    return StoredCallback(payload_id=existing.payload_id, duplicate=True, late=bool(existing.late))


# Statements built once, values given as parameters: building them per call (``.values(...)``) cost
# more CPU than executing them.
_INSERT_NEW_PAYLOAD = {
    name: dialect_insert(callback_payloads)
    .on_conflict_do_nothing(index_elements=["request_id", "sha256"])
    .returning(callback_payloads.c.payload_id)
    for name, dialect_insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}
_INSERT_CHUNK = insert(callback_payload_chunks)
_LOCK_REQUEST_STATE = (
    select(export_requests.c.state)
    .where(export_requests.c.request_id == bindparam("request_id"))
    .with_for_update(key_share=True)
)


def _store_in_steps(
    engine: Engine,
    request_id: str,
    body: CallbackBody,
    *,
    content_type: str | None,
    unique_id: str | None,
    client_addr: str | None,
    headers: dict[str, str] | None,
    part_no: int | None,
    part_count: int | None,
) -> StoredCallback:
    """:func:`store_callback` in several statements: any body, any database.

    Order matters: the payload row is inserted first (on SQLite that takes the write lock, so the state
    read below is current), its chunks next, and only then is the request row locked (``FOR NO KEY
    UPDATE`` on PostgreSQL, compatible with the foreign-key check's lock) to move it ``requested ->
    received`` or to flag the payload late. The lock serialises this with the load's :func:`mark_loaded`,
    so a payload either is seen by the load or is flagged late.
    """
    with engine.begin() as conn:
        payload_id = conn.execute(
            _INSERT_NEW_PAYLOAD[engine.dialect.name],
            {
                "request_id": request_id,
                "unique_id": unique_id,
                "received_at": _now(),
                "content_type": content_type,
                "sha256": body.sha256,
                "size_bytes": body.size,
                "client_addr": client_addr,
                "headers": headers,
                "part_no": part_no,
                "part_count": part_count,
                "late": 0,
            },
        ).scalar_one_or_none()
        if payload_id is None:
            existing = conn.execute(
                select(callback_payloads.c.payload_id, callback_payloads.c.late).where(
                    callback_payloads.c.request_id == request_id, callback_payloads.c.sha256 == body.sha256
                )
            ).one()
            return StoredCallback(payload_id=existing.payload_id, duplicate=True, late=bool(existing.late))
        _insert_chunks(conn, payload_id, body)
        state = RequestState(conn.execute(_LOCK_REQUEST_STATE, {"request_id": request_id}).scalar_one())
        late = state in _LATE
        if state is RequestState.REQUESTED:
            _move(conn, request_id, RequestState.RECEIVED)
        elif late:
            conn.execute(
                update(callback_payloads).where(callback_payloads.c.payload_id == payload_id).values(late=1)
            )
    return StoredCallback(payload_id=payload_id, duplicate=False, late=late)


def _insert_chunks(conn: Connection, payload_id: int, body: CallbackBody) -> None:
    body.file.seek(0)
    written = 0
    for seq in range(body.size // CHUNK_BYTES + 1):
        data = body.file.read(CHUNK_BYTES)
        if not data:
            break
        conn.execute(_INSERT_CHUNK, {"payload_id": payload_id, "seq": seq, "data": data})
        written += len(data)
    if written != body.size:
        raise PayloadError(f"body of payload {payload_id} has {written} bytes, expected {body.size}")


#: The payload id of :func:`check_can_store`'s probe row: never a real one (ids start at 1), and an
#: explicit value takes nothing from PostgreSQL's sequence.
_PROBE_PAYLOAD_ID = -1


def check_can_store(engine: Engine) -> None:
    """Prove that a callback could be stored now: the writes :func:`store_callback` makes, rolled back.

    Inserts a payload and a chunk for an existing request and updates no request row (so it waits on no
    lock a load holds), then rolls back. Without any request it still checks that callback payloads may
    be inserted (PostgreSQL checks privileges and read-only transactions before it finds no row). Raises
    the database's error when it cannot.
    """
    values = select(
        bindparam("payload_id", _PROBE_PAYLOAD_ID, type_=BigInteger),
        export_requests.c.request_id,
        bindparam("received_at", _now(), type_=UtcDateTime()),
        bindparam("sha256", "0" * 64),
        bindparam("size_bytes", 0, type_=BigInteger),
    ).limit(1)
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            inserted = conn.execute(
                insert(callback_payloads)
                .from_select(["payload_id", "request_id", "received_at", "sha256", "size_bytes"], values)
                .returning(callback_payloads.c.payload_id)
            ).first()
            if inserted is not None:
                conn.execute(_INSERT_CHUNK, {"payload_id": _PROBE_PAYLOAD_ID, "seq": 0, "data": b"probe"})
            conn.execute(
                update(export_requests).where(false()).values(updated_at=export_requests.c.updated_at)
            )
        finally:
            transaction.rollback()


# ---------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class LandedPayload:
    """What the load needs to know of a payload besides its bytes."""

    payload_id: int
    request_id: str
    content_type: str | None
    timezone: str
    #: The campaign the export was requested for: the only one the payload may write.
    campaign_name: str


def landed_payload(conn: Connection, payload_id: int) -> LandedPayload:
    """The payload's request, content type, its export's time zone and campaign; PayloadError if unknown."""
    row = conn.execute(
        select(
            callback_payloads.c.request_id,
            callback_payloads.c.content_type,
            export_requests.c.timezone,
            export_requests.c.campaign_name,
        )
        .join(export_requests, export_requests.c.request_id == callback_payloads.c.request_id)
        .where(callback_payloads.c.payload_id == payload_id)
    ).one_or_none()
    if row is None:
        raise PayloadError(f"callback payload {payload_id} does not exist")
    return LandedPayload(payload_id, row.request_id, row.content_type, row.timezone, row.campaign_name)


def received_payload_ids(conn: Connection, request_id: str) -> list[int]:
    """Ids of every payload stored for the request, in arrival order."""
    return list(
        conn.scalars(
            select(callback_payloads.c.payload_id)
            .where(callback_payloads.c.request_id == request_id)
            .order_by(callback_payloads.c.payload_id)
        )
    )


def mark_payload_loaded(conn: Connection, payload_id: int) -> None:
    """The payload was loaded (in the load's transaction)."""
    _set_parse_state(conn, payload_id, "loaded")


def mark_payload_failed(conn: Connection, payload_id: int) -> None:
    """The payload could not be parsed at all (see ``load_runs`` for why)."""
    _set_parse_state(conn, payload_id, "failed")


def _set_parse_state(conn: Connection, payload_id: int, state: str) -> None:
    conn.execute(
        update(callback_payloads)
        .where(callback_payloads.c.payload_id == payload_id)
        .values(parse_state=state)
    )


def iter_payload_body(conn: Connection, payload_id: int) -> Iterator[bytes]:
    """The payload's raw body, piece by piece (each at most :data:`CHUNK_BYTES`), checked for completeness."""
    size = conn.execute(
        select(callback_payloads.c.size_bytes).where(callback_payloads.c.payload_id == payload_id)
    ).scalar_one_or_none()
    if size is None:
        raise PayloadError(f"callback payload {payload_id} does not exist")
    total = 0
    seq = 0
    while total < size:
        data = conn.execute(
            select(callback_payload_chunks.c.data).where(
                callback_payload_chunks.c.payload_id == payload_id, callback_payload_chunks.c.seq == seq
            )
        ).scalar_one_or_none()
        if data is None:
            break
        total += len(data)
        seq += 1
        yield bytes(data)
    if total != size:
        raise PayloadError(f"callback payload {payload_id} is incomplete: {total} of {size} bytes stored")


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte strings."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def open_payload_body(conn: Connection, payload_id: int) -> io.BufferedReader:
    """The payload's raw body as a binary file object (streams; use it while ``conn`` is open)."""
    return io.BufferedReader(_ChunkReader(iter_payload_body(conn, payload_id)), buffer_size=1024 * 1024)


def read_payload_body(conn: Connection, payload_id: int) -> bytes:
    """The payload's whole raw body in memory: for small bodies and tests; stream big ones instead."""
    return b"".join(iter_payload_body(conn, payload_id))
