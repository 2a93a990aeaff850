"""A request's moves between states, and what a wait for its callback should do (:func:`callback_status`).

Every move is one conditional ``UPDATE`` (:func:`move`), so two writers racing cannot both make a move that
only one of them may make; a move that is not allowed raises :class:`StateTransitionError`. Moves to the
same state (``received``, ``failed``, ``expired``) are allowed so that retries are idempotent.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select, update

from cloudagent_etl.databases import database_for
from cloudagent_etl.errors import ConfigurationError, StateTransitionError
from cloudagent_etl.landing.schema import (
    ALLOWED_SOURCES,
    CallbackStatus,
    RequestState,
    callback_payloads,
    export_requests,
    now,
)
from cloudagent_etl.sqltypes import UtcDateTime


def move(conn: Connection, request_id: str, target: RequestState, error: str | None = None) -> None:
    """Move a request to ``target`` inside the caller's transaction, or raise StateTransitionError.

    Stamps ``<state>_at`` (``received_at`` keeps the first receipt) and ``updated_at``, and sets ``error``
    to the given text (None clears it).
    """
    moment = now()
    stamp_column = export_requests.c[f"{target.value}_at"]
    stamp: Any = moment
    if target is RequestState.RECEIVED:
        stamp = func.coalesce(stamp_column, bindparam(None, moment, type_=UtcDateTime()))
    sources = sorted(state.value for state in ALLOWED_SOURCES[target])
    result = conn.execute(
        update(export_requests)
        .where(export_requests.c.request_id == request_id, export_requests.c.state.in_(sources))
        .values({"state": target.value, stamp_column.name: stamp, "updated_at": moment, "error": error})
    )
    if result.rowcount == 1:
        return
    current = state_of(conn, request_id)
    raise StateTransitionError(
        f"export request {request_id} cannot move from {current.value!r} to {target.value!r}"
    )


def state_of(conn: Connection, request_id: str) -> RequestState:
    state = conn.execute(
        select(export_requests.c.state).where(export_requests.c.request_id == request_id)
    ).scalar_one_or_none()
    if state is None:
        raise StateTransitionError(f"export request {request_id} does not exist")
    return RequestState(state)


def status_of(conn: Connection, request_id: str) -> CallbackStatus:
    """WAITING while no callback (or not every part of a multi-part one) has landed; LANDED once it has
    (also for a loaded request); GAVE_UP for a failed or expired one."""
    state = state_of(conn, request_id)
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


def callback_status(engine: Engine, request_id: str) -> CallbackStatus:
    """Whether the request's callback has landed (every part of it), is still awaited, or no longer is."""
    with engine.connect() as conn:
        try:
            return status_of(conn, request_id)
        except StateTransitionError:
            raise ConfigurationError(f"export request {request_id} does not exist in this database") from None


def mark_failed(engine: Engine, request_id: str, error: str) -> None:
    """The export call failed: the request becomes ``failed`` with the (already redacted) reason."""
    with engine.begin() as conn:
        move(conn, request_id, RequestState.FAILED, error)


def mark_expired(engine: Engine, request_id: str, error: str) -> CallbackStatus:
    """No callback (or not every part of one) came in time: a request still waiting becomes ``expired``.

    Returns the request's status afterwards: ``LANDED`` when the callback landed after all (the wait
    raced its deadline, nothing changes), else ``GAVE_UP``.
    """
    with database_for(engine).write_transaction(engine) as conn:
        status = status_of(conn, request_id)
        if status is CallbackStatus.WAITING:
            move(conn, request_id, RequestState.EXPIRED, error)
            return CallbackStatus.GAVE_UP
    return status


def mark_loaded(conn: Connection, request_id: str) -> None:
    """A payload of the request loaded, in the caller's (the load's) transaction."""
    move(conn, request_id, RequestState.LOADED)


def mark_load_failed(engine: Engine, request_id: str, error: str) -> None:
    """No payload of the request could be loaded: it becomes ``failed`` unless it is loaded or expired."""
    with engine.begin() as conn:
        if RequestState.FAILED in _next_states(state_of(conn, request_id)):
            move(conn, request_id, RequestState.FAILED, error)


def _next_states(state: RequestState) -> set[RequestState]:
    return {target for target, sources in ALLOWED_SOURCES.items() if state in sources}
