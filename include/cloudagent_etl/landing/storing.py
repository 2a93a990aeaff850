"""Storing callback bodies: one transaction per body, the same body stored once, nothing half-written.

The receiver measures and hashes a body while it spools it (:class:`CallbackBody`), so storing never reads
it an extra time; the bytes go to ``callback_payload_chunks`` a piece at a time. A body that lands for a
request already ``loaded``, ``failed`` or ``expired`` is stored with ``late = 1`` and the request's state is
left as it is: nothing is dropped, and a reprocess (or a sweep) loads it. Late or not is decided under a
lock on the request row, so a payload is either seen by the load or flagged late, never neither.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import BigInteger, Connection, Engine, bindparam, false, insert, select, update
from sqlalchemy.sql.dml import Insert

from cloudagent_etl.databases import Database, database_for
from cloudagent_etl.errors import PayloadError, StateTransitionError
from cloudagent_etl.landing.lifecycle import move
from cloudagent_etl.landing.schema import (
    CHUNK_BYTES,
    LATE,
    RequestState,
    callback_payload_chunks,
    callback_payloads,
    export_requests,
    now,
)
from cloudagent_etl.sqltypes import UtcDateTime


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

    Where the database can (PostgreSQL), a body of at most one chunk (nearly every callback) is stored by
    one statement (``Database.store_callback_in_one_statement``: one round trip instead of six, prepared
    by the driver after a few uses); everything else goes through :func:`_store_in_steps`. Both leave
    identical rows.
    """
    details: dict[str, Any] = {
        "content_type": content_type,
        "unique_id": unique_id,
        "client_addr": client_addr,
        "headers": dict(headers) if headers is not None else None,
        "part_no": part[0] if part else None,
        "part_count": part[1] if part else None,
    }
    database = database_for(engine)
    if database.stores_callback_in_one_statement and body.size <= CHUNK_BYTES:
        return _store_in_one_statement(database, engine, request_id, body, **details)
    return _store_in_steps(engine, request_id, body, **details)


def _store_in_one_statement(
    database: Database,
    engine: Engine,
    request_id: str,
    body: CallbackBody,
    *,
    headers: dict[str, str] | None,
    **details: Any,
) -> StoredCallback:
    """:func:`store_callback` of a body of at most one chunk, in one statement of the database's."""
    body.file.seek(0)
    data = body.file.read()
    if len(data) != body.size:
        raise PayloadError(f"body has {len(data)} bytes, expected {body.size}")
    params = {
        **details,
        "request_id": request_id,
        "now": now(),
        "sha256": body.sha256,
        "size_bytes": body.size,
        # the text SQLAlchemy's JSON type would write, so both ways store the same document
        "headers": json.dumps(headers) if headers is not None else None,
        "data": data,
        "requested_state": RequestState.REQUESTED.value,
        "received_state": RequestState.RECEIVED.value,
    }
    late_states = tuple(sorted(state.value for state in LATE))
    stored = database.store_callback_in_one_statement(engine, params, late_states=late_states)
    if stored is None:
        raise StateTransitionError(f"export request {request_id} does not exist")
    payload_id, duplicate, late = stored
    return StoredCallback(payload_id=payload_id, duplicate=duplicate, late=late)


# Statements built once, values given as parameters: building them per call (``.values(...)``) cost
# more CPU than executing them.
_INSERT_CHUNK = insert(callback_payload_chunks)


@functools.cache
def _insert_new_payload(database: Database) -> Insert:
    """Insert a payload row unless the same body is stored for the request already; its id if new."""
    return database.insert_ignoring_conflicts(
        callback_payloads, index_elements=["request_id", "sha256"]
    ).returning(callback_payloads.c.payload_id)


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
            _insert_new_payload(database_for(engine)),
            {
                "request_id": request_id,
                "unique_id": unique_id,
                "received_at": now(),
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
        late = state in LATE
        if state is RequestState.REQUESTED:
            move(conn, request_id, RequestState.RECEIVED)
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
        bindparam("received_at", now(), type_=UtcDateTime()),
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
