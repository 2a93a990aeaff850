"""Export requests: claiming the one live export of a window, recording CloudAgent's answer, reading rows.

Each call to CloudAgent is one ``export_requests`` row, created before the call with a fresh request id and
a fresh callback token (only the token's SHA-256 is stored). The row records the whole :class:`Export` (its
time zone and callback base URL included), so loads and re-requests need only the database.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, false, func, or_, select, update

from cloudagent_etl.api.request import ExportFilters
from cloudagent_etl.databases import database_for
from cloudagent_etl.errors import ConfigurationError, StateTransitionError
from cloudagent_etl.exports import Export
from cloudagent_etl.landing.lifecycle import move
from cloudagent_etl.landing.schema import (
    LIVE,
    RequestState,
    callback_payloads,
    export_request_runs,
    export_requests,
    now,
)
from cloudagent_etl.landing.tokens import token_sha256
from cloudagent_etl.settings import DEFAULT_CONNECTION, Secret


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
    cloudagent_conn_id: str | None

    @property
    def export(self) -> Export:
        """What this request asked CloudAgent for (a re-request asks the same)."""
        return Export(
            self.account,
            self.campaign_name,
            self.window_start,
            self.window_end,
            ExportFilters.from_params(self.filters),
            self.timezone,
            self.callback_base_url,
            self.cloudagent_conn_id,
        )

    @property
    def conn_id(self) -> str:
        """The Airflow connection of its account (a request made before they were recorded: the default)."""
        return self.cloudagent_conn_id or DEFAULT_CONNECTION

    @property
    def is_loaded(self) -> bool:
        return self.state is RequestState.LOADED

    @property
    def is_expired(self) -> bool:
        """Its callback never came in time (a failed request failed for a reason a new export would meet)."""
        return self.state is RequestState.EXPIRED

    @property
    def settled_at(self) -> datetime | None:
        """When it was loaded, failed or expired (None while it is requested or received)."""
        return {
            RequestState.LOADED: self.loaded_at,
            RequestState.FAILED: self.failed_at,
            RequestState.EXPIRED: self.expired_at,
        }.get(self.state)

    def describe(self) -> str:
        """'campaign X, window A .. B (uniqueId U, request R)': how messages name a request."""
        return (
            f"campaign {self.campaign_name!r}, window {self.window_start.isoformat()} .. "
            f"{self.window_end.isoformat()} (uniqueId {self.unique_id or 'none'}, request {self.request_id})"
        )


REQUEST_COLUMNS = [export_requests.c[name] for name in ExportRequest.__dataclass_fields__]


def request_of(row: Any) -> ExportRequest:
    """The :class:`ExportRequest` of a row selected with :data:`REQUEST_COLUMNS`."""
    values = row._asdict()
    return ExportRequest(**{**values, "state": RequestState(values["state"])})


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
    export: Export,
    *,
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
    :attr:`Export.key`), so it holds across processes: of two concurrent claims, one inserts and the other
    finds its row. ``retry_of`` names the expired or failed request a re-request replaces; the new row
    records it, its attempt number and why it was made.
    """
    key = export.key
    previous = require_export_request(engine, retry_of) if retry_of else None
    reason = (
        f"re-request after {previous.request_id} became {previous.state.value}"
        if previous is not None
        else "first export of this window"
    )
    database = database_for(engine)
    insert_unless_live = database.insert_ignoring_conflicts(export_requests).returning(
        export_requests.c.request_id
    )
    for _ in range(3):  # a live row that is settled between our two statements: look again
        moment = now()
        with database.write_transaction(engine) as conn:
            live = conn.execute(
                select(*REQUEST_COLUMNS).where(
                    export_requests.c.export_key == key,
                    export_requests.c.state.in_([state.value for state in LIVE]),
                )
            ).one_or_none()
            if live is not None:
                request = request_of(live)
                overdue = request.callback_deadline is not None and request.callback_deadline <= moment
                if not (request.state is RequestState.REQUESTED and overdue):
                    _record_run(conn, dag_id, run_id, export.campaign_name, request.request_id, moment)
                    return ClaimedExport(request.request_id, None)
                move(conn, request.request_id, RequestState.EXPIRED, overdue_error(request))
                reason = f"re-request after {request.request_id} passed its callback deadline"
            new, row = new_request_row(
                export,
                dag_id=dag_id,
                run_id=run_id,
                export_key=key,
                callback_deadline=moment + callback_timeout,
                attempt=previous.attempt + 1 if previous is not None else 1,
                retry_of=retry_of,
                reason=reason,
            )
            if conn.execute(insert_unless_live.values(row)).scalar_one_or_none() is not None:
                _record_run(conn, dag_id, run_id, export.campaign_name, new.request_id, moment)
                return ClaimedExport(new.request_id, new)
    raise StateTransitionError(f"could not claim the export of {export.describe()}")


def new_request_row(export: Export, **values: Any) -> tuple[NewExportRequest, dict[str, Any]]:
    """A ``requested`` row of ``export`` with a fresh id and callback token, and ``values`` besides."""
    request_id = str(uuid.uuid4())
    token = secrets.token_urlsafe(32)
    moment = now()
    row = {
        **values,
        "account": export.account,
        "campaign_name": export.campaign_name,
        "window_start": export.window_start,
        "window_end": export.window_end,
        "filters": export.filters.as_dict(),
        "timezone": export.timezone,
        "callback_base_url": export.callback_base_url,
        "cloudagent_conn_id": export.conn_id,
        "request_id": request_id,
        "callback_token_sha256": token_sha256(token),
        "state": RequestState.REQUESTED.value,
        "created_at": moment,
        "updated_at": moment,
    }
    return NewExportRequest(request_id=request_id, token=Secret(token)), row


def _record_run(
    conn: Connection,
    dag_id: str | None,
    run_id: str | None,
    campaign_name: str,
    request_id: str,
    at: datetime,
) -> None:
    if dag_id is None or run_id is None:
        return
    conn.execute(
        database_for(conn)
        .insert_ignoring_conflicts(export_request_runs)
        .values(
            dag_id=dag_id, run_id=run_id, campaign_name=campaign_name, request_id=request_id, claimed_at=at
        )
    )


def overdue_error(request: ExportRequest) -> str:
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
    moment = now()
    with engine.begin() as conn:
        result = conn.execute(
            update(export_requests)
            .where(export_requests.c.request_id == request_id)
            .values(unique_id=unique_id, requested_at=moment, updated_at=moment)
        )
        if result.rowcount != 1:
            raise StateTransitionError(f"export request {request_id} does not exist")


# ---------------------------------------------------------------------------------------------- reading
def get_export_request(engine: Engine, request_id: str) -> ExportRequest | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(*REQUEST_COLUMNS).where(export_requests.c.request_id == request_id)
        ).one_or_none()
    return None if row is None else request_of(row)


def require_export_request(engine: Engine, request_id: str) -> ExportRequest:
    """The request, or a ConfigurationError: a request id that is not in the database we were given."""
    request = get_export_request(engine, request_id)
    if request is None:
        raise ConfigurationError(f"export request {request_id} does not exist in this database")
    return request


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


def latest_requests_of_run(engine: Engine, dag_id: str, run_id: str) -> dict[tuple[str, str], ExportRequest]:
    """Per (connection, campaign), the newest request a DAG run relied on (its own, reused, re-requested)."""
    runs = export_request_runs.c
    used = select(runs.request_id).where(runs.dag_id == dag_id, runs.run_id == run_id)
    made = select(export_requests.c.request_id).where(
        export_requests.c.dag_id == dag_id, export_requests.c.run_id == run_id
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(*REQUEST_COLUMNS)
            .where(or_(export_requests.c.request_id.in_(used), export_requests.c.request_id.in_(made)))
            .order_by(export_requests.c.created_at)
        ).all()
    return {(request.conn_id, request.campaign_name): request for request in map(request_of, rows)}


def latest_request_per_campaign(engine: Engine) -> dict[str, ExportRequest]:
    """Per campaign, the newest request of any run."""
    with engine.connect() as conn:
        rows = conn.execute(select(*REQUEST_COLUMNS).order_by(export_requests.c.created_at)).all()
    return {row.campaign_name: request_of(row) for row in rows}


def first_window_starts(engine: Engine) -> dict[tuple[str, str], datetime]:
    """(connection id, campaign) -> the start of its earliest requested window."""
    conn_id = func.coalesce(export_requests.c.cloudagent_conn_id, DEFAULT_CONNECTION)
    query = select(conn_id, export_requests.c.campaign_name, func.min(export_requests.c.window_start))
    with engine.connect() as conn:
        rows = conn.execute(query.group_by(conn_id, export_requests.c.campaign_name)).all()
    return {(row[0], row[1]): row[2] for row in rows}


def requests_overlapping(engine: Engine, window_start: datetime, window_end: datetime) -> list[ExportRequest]:
    """Every request whose window overlaps ``window_start .. window_end``, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(*REQUEST_COLUMNS)
            .where(export_requests.c.window_end > window_start, export_requests.c.window_start < window_end)
            .order_by(export_requests.c.created_at)
        ).all()
    return [request_of(row) for row in rows]


def requests_with_payloads(
    engine: Engine, targets: Iterable[tuple[str, str]], window_start: datetime, window_end: datetime
) -> list[str]:
    """Ids of the requests of ``targets`` ((connection, campaign) pairs) with landed payloads whose window
    overlaps the given one.

    Any state counts, so a late callback of an ``expired`` or ``failed`` request is found too. Oldest
    window first.
    """
    conn_id = func.coalesce(export_requests.c.cloudagent_conn_id, DEFAULT_CONNECTION)
    pairs = [and_(conn_id == conn, export_requests.c.campaign_name == campaign) for conn, campaign in targets]
    query = (
        select(export_requests.c.request_id)
        .where(
            or_(false(), *pairs),
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
