"""The landing zone: export requests we made, and the raw callback bodies CloudAgent posted back.

``export_requests`` holds one row per API call with its state machine::

    requested ──> received ──> loaded ──> loaded        (a re-load of a loaded request stays loaded)
        │             │
        └─────────────┴──> failed | expired ──> loaded  (a late payload was loaded after all)

``received -> received`` and ``failed/expired`` to themselves are allowed (idempotent retries);
:func:`set_state` refuses every other move with :class:`StateTransitionError`.

``callback_payloads`` holds one row per distinct body per request (the same body delivered twice is
stored once: unique on request id + SHA-256). The bytes themselves live in ``callback_payload_chunks``
in pieces of at most :data:`CHUNK_BYTES`, so that neither writing nor reading a body of hundreds of MB
holds it whole in memory. Read a body with :func:`iter_payload_body` (pieces), :func:`open_payload_body`
(a file object, e.g. for ``ijson``) or :func:`read_payload_body` (all bytes, for small bodies).

A callback that lands for a request already ``loaded``, ``failed`` or ``expired`` is stored with
``late = 1`` and the request's state is left as it is: nothing is dropped, and the reprocess DAG (or a
query for ``late = 1``) finds it. The callback token is never stored, only its SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import secrets
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum, auto
from typing import IO, Any, Literal

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cloudagent_etl.errors import PayloadError, StateTransitionError
from cloudagent_etl.schema import (
    EXPORT_REQUEST_STATES,
    UtcDateTime,
    callback_payload_chunks,
    callback_payloads,
    export_requests,
)
from cloudagent_etl.settings import Secret

AUTOCOMMIT = "AUTOCOMMIT"
#: Largest piece of a body stored in one ``callback_payload_chunks`` row (and read at once).
CHUNK_BYTES = 4 * 1024 * 1024

State = Literal["requested", "received", "loaded", "failed", "expired"]

#: For each target state, the states a request may move to it from.
ALLOWED_SOURCES: Mapping[str, frozenset[str]] = {
    "requested": frozenset(),
    "received": frozenset({"requested", "received"}),
    "loaded": frozenset({"received", "loaded", "failed", "expired"}),
    "failed": frozenset({"requested", "received", "failed"}),
    "expired": frozenset({"requested", "received", "expired"}),
}

#: States in which a new callback is late: the request was already settled without it.
LATE_STATES = frozenset({"loaded", "failed", "expired"})


def _now() -> datetime:
    return datetime.now(UTC)


def token_sha256(token: str) -> str:
    """Hex SHA-256 of a callback token: what ``export_requests`` stores instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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
    unique_id: str | None
    state: str
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


_REQUEST_COLUMNS = [export_requests.c[name] for name in ExportRequest.__dataclass_fields__]


def create_export_request(
    engine: Engine,
    *,
    account: str,
    campaign_name: str,
    window_start: datetime,
    window_end: datetime,
    filters: dict[str, Any],
    dag_id: str | None = None,
    run_id: str | None = None,
) -> NewExportRequest:
    """Insert a ``requested`` row with a fresh random callback token; return the id and the token."""
    request_id = str(uuid.uuid4())
    token = secrets.token_urlsafe(32)
    now = _now()
    with engine.begin() as conn:
        conn.execute(
            insert(export_requests).values(
                request_id=request_id,
                account=account,
                campaign_name=campaign_name,
                window_start=window_start,
                window_end=window_end,
                filters=dict(filters),
                callback_token_sha256=token_sha256(token),
                state="requested",
                created_at=now,
                updated_at=now,
                dag_id=dag_id,
                run_id=run_id,
            )
        )
    return NewExportRequest(request_id=request_id, token=Secret(token))


def callback_url(base_url: str, request_id: str, token: Secret) -> str:
    """The per-request ``callBackUrl`` given to CloudAgent (it contains the secret token)."""
    return f"{base_url.rstrip('/')}/callbacks/dial-status/{request_id}/{token.get()}"


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


def set_state(conn: Connection, request_id: str, state: str, error: str | None = None) -> None:
    """Move a request to ``state`` inside the caller's transaction (see the module docstring's diagram).

    Stamps ``<state>_at`` (``received_at`` keeps the first receipt) and ``updated_at``, and sets ``error``
    to the given text (None clears it). The move is one conditional UPDATE, so two writers racing cannot
    both make a move that only one of them may make.
    """
    if state not in EXPORT_REQUEST_STATES:
        raise StateTransitionError(f"unknown state {state!r}; expected one of {EXPORT_REQUEST_STATES}")
    sources = ALLOWED_SOURCES[state]
    now = _now()
    stamp_column = export_requests.c[f"{state}_at"]
    stamp: Any = now
    if state == "received":
        stamp = func.coalesce(stamp_column, bindparam(None, now, type_=UtcDateTime()))
    result = conn.execute(
        update(export_requests)
        .where(export_requests.c.request_id == request_id, export_requests.c.state.in_(sorted(sources)))
        .values({"state": state, stamp_column.name: stamp, "updated_at": now, "error": error})
    )
    if result.rowcount == 1:
        return
    current = conn.execute(
        select(export_requests.c.state).where(export_requests.c.request_id == request_id)
    ).scalar_one_or_none()
    if current is None:
        raise StateTransitionError(f"export request {request_id} does not exist")
    raise StateTransitionError(f"export request {request_id} cannot move from {current!r} to {state!r}")


def get_export_request(engine: Engine, request_id: str) -> ExportRequest | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(*_REQUEST_COLUMNS).where(export_requests.c.request_id == request_id)
        ).one_or_none()
    return None if row is None else ExportRequest(**row._asdict())


def find_request_by_unique_id(engine: Engine, unique_id: str) -> str | None:
    """The id of the newest request CloudAgent answered with ``unique_id``, if any."""
    with engine.connect() as conn:
        return conn.execute(
            select(export_requests.c.request_id)
            .where(export_requests.c.unique_id == unique_id)
            .order_by(export_requests.c.created_at.desc())
            .limit(1)
        ).scalar_one_or_none()


class TokenCheck(Enum):
    VALID = auto()
    UNKNOWN_REQUEST = auto()
    WRONG_TOKEN = auto()


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


_TOKEN_HASH = select(export_requests.c.callback_token_sha256).where(
    export_requests.c.request_id == bindparam("request_id")
)


def verify_callback_token(engine: Engine, request_id: str, token: str) -> TokenCheck:
    """Check a per-request callback token against the stored hash, in constant time.

    Anything that is not one of our UUIDs is an unknown request without a database round trip, so
    odd path values (NUL bytes, megabytes of text) never reach SQL. One read outside a transaction: no
    BEGIN and ROLLBACK round trips around it.
    """
    if not _is_uuid(request_id):
        return TokenCheck.UNKNOWN_REQUEST
    with engine.connect().execution_options(isolation_level=AUTOCOMMIT) as conn:
        stored = conn.execute(_TOKEN_HASH, {"request_id": request_id}).scalar_one_or_none()
    if stored is None:
        return TokenCheck.UNKNOWN_REQUEST
    if hmac.compare_digest(token_sha256(token), stored):
        return TokenCheck.VALID
    return TokenCheck.WRONG_TOKEN


@dataclass(frozen=True)
class CallbackBody:
    """A body ready to store: a readable binary file (seekable) with its size and SHA-256 already known."""

    file: IO[bytes]
    size: int
    sha256: str

    @classmethod
    def from_bytes(cls, data: bytes) -> CallbackBody:
        return cls(io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest())

    @classmethod
    def from_file(cls, file: IO[bytes]) -> CallbackBody:
        """Measure and hash a body already written to ``file``, reading it block by block."""
        file.seek(0)
        hasher = hashlib.sha256()
        size = 0
        while block := file.read(CHUNK_BYTES):
            hasher.update(block)
            size += len(block)
        return cls(file, size, hasher.hexdigest())


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
    parse_state: str = "pending",
) -> StoredCallback:
    """Store one callback body for a request, in one transaction; a body already stored is not stored again.

    On PostgreSQL a body of at most one chunk (nearly every callback) is stored by one statement,
    :data:`_STORE_IN_ONE_STATEMENT` (one round trip instead of six, prepared by psycopg after a few
    uses); everything else goes through :func:`_store_in_steps`. Both leave identical rows.
    """
    details: dict[str, Any] = {
        "content_type": content_type,
        "unique_id": unique_id,
        "client_addr": client_addr,
        "headers": dict(headers) if headers is not None else None,
        "parse_state": parse_state,
    }
    if engine.dialect.name == "postgresql" and body.size <= CHUNK_BYTES:
        return _store_in_one_statement(engine, request_id, body, **details)
    return _store_in_steps(engine, request_id, body, **details)


#: PostgreSQL: lock the request row, insert the payload (flagged late from the state read under the lock)
#: and its one chunk, and move ``requested -> received``, all in one statement. A duplicate inserts
#: nothing and returns no row (the caller then looks the stored one up: a row committed by a concurrent
#: delivery while this statement waited is not in its snapshot, but is in the next statement's).
_STORE_IN_ONE_STATEMENT = """
WITH request AS (
    SELECT state FROM export_requests WHERE request_id = %(request_id)s FOR NO KEY UPDATE
), payload AS (
    INSERT INTO callback_payloads (request_id, unique_id, received_at, content_type, sha256, size_bytes,
                                   client_addr, headers, parse_state, late)
    SELECT %(request_id)s, %(unique_id)s, %(now)s, %(content_type)s, %(sha256)s, %(size_bytes)s,
           %(client_addr)s, %(headers)s::json, %(parse_state)s,
           CASE WHEN request.state IN ('loaded', 'failed', 'expired') THEN 1 ELSE 0 END
    FROM request
    ON CONFLICT (request_id, sha256) DO NOTHING
    RETURNING payload_id, late
), chunk AS (
    INSERT INTO callback_payload_chunks (payload_id, seq, data)
    SELECT payload_id, 0, %(data)s FROM payload WHERE %(size_bytes)s > 0
), moved AS (
    UPDATE export_requests
    SET state = 'received', received_at = coalesce(received_at, %(now)s), updated_at = %(now)s, error = NULL
    WHERE request_id = %(request_id)s AND state = 'requested' AND EXISTS (SELECT FROM payload)
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
    parse_state: str,
) -> StoredCallback:
    """:func:`store_callback` in several statements: any body, any database.

    Order matters: the payload row is inserted first (on SQLite that takes the write lock, so the state
    read below is current), its chunks next, and only then is the request row locked (``FOR NO KEY
    UPDATE`` on PostgreSQL, compatible with the foreign-key check's lock) to move it ``requested ->
    received`` or to flag the payload late. The lock serialises this with the load step's
    :func:`set_state`, so a payload either is seen by the load or is flagged late.
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
                "parse_state": parse_state,
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
        state = conn.execute(_LOCK_REQUEST_STATE, {"request_id": request_id}).scalar_one()
        late = state in LATE_STATES
        if state == "requested":
            set_state(conn, request_id, "received")
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


def received_payload_ids(conn: Connection, request_id: str) -> list[int]:
    """Ids of every payload stored for the request, in arrival order."""
    return list(
        conn.scalars(
            select(callback_payloads.c.payload_id)
            .where(callback_payloads.c.request_id == request_id)
            .order_by(callback_payloads.c.payload_id)
        )
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
