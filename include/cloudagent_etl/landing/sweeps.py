"""Sweeps: nothing stays ``requested`` or ``received`` for ever, and no landed payload stays unloaded.

A sweep (the first task of every run, or ``cloudagent-etl sweep``) expires requests still waiting past
their callback deadline (their wait died with its worker) and finds payloads that no running load will
take (late callbacks, a load that died); the pipeline loads those.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, func, or_, select

from cloudagent_etl.landing.lifecycle import mark_expired
from cloudagent_etl.landing.requests import REQUEST_COLUMNS, overdue_error, request_of
from cloudagent_etl.landing.schema import (
    LATE,
    LIVE,
    CallbackStatus,
    RequestState,
    callback_payloads,
    export_requests,
)
from cloudagent_etl.landing.schema import now as utc_now

#: A received request without a callback deadline (made before deadlines were recorded) is swept this
#: long after its callback landed.
UNDATED_RECEIVED_GRACE = timedelta(hours=1)


def expire_overdue(engine: Engine, now: datetime | None = None) -> list[str]:
    """Expire every request still waiting past its callback deadline (its wait died or never ran).

    Returns the ids expired by this call. A request whose callback landed meanwhile is left alone.
    """
    now = now or utc_now()
    with engine.connect() as conn:
        overdue = [
            request_of(row)
            for row in conn.execute(
                select(*REQUEST_COLUMNS).where(
                    export_requests.c.state.in_([state.value for state in LIVE]),
                    export_requests.c.callback_deadline < now,
                )
            )
        ]
    return [
        request.request_id
        for request in overdue
        if mark_expired(engine, request.request_id, overdue_error(request)) is CallbackStatus.GAVE_UP
    ]


def requests_with_unloaded_payloads(engine: Engine, now: datetime | None = None) -> list[str]:
    """Requests with landed payloads that no running load will pick up: oldest window first.

    Those are settled requests (loaded, failed, expired) with late payloads, and received requests past
    their callback deadline (their load never ran or died). A received request still within its deadline
    is left to its own load.
    """
    now = now or utc_now()
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
        .where(pending, or_(state.in_([state.value for state in LATE]), abandoned))
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
