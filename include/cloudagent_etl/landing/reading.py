"""Reading landed payloads for a load, and recording what the load made of them.

The pipeline drives a payload's load: it asks here for the payload (:func:`landed_payload`) and its body
(:func:`payload_body`, a stream: a body of hundreds of MB is never held whole), has the warehouse merge it,
and records the outcome here: :func:`mark_payload_loaded` inside the merge's transaction (the payload and
its request become ``loaded`` with the merged rows, or not at all), :func:`mark_payload_failed` when the
body could not be parsed.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update

from cloudagent_etl.databases import database_for
from cloudagent_etl.errors import PayloadError
from cloudagent_etl.landing.lifecycle import mark_loaded
from cloudagent_etl.landing.schema import callback_payload_chunks, callback_payloads, export_requests

#: Ids in one ``IN (...)`` list: SQLite binds each as a parameter (at most 32766 in a statement).
_IDS_PER_QUERY = 1000


@dataclass(frozen=True)
class LandedPayload:
    """What a load needs to know of a payload besides its bytes."""

    payload_id: int
    request_id: str
    content_type: str | None
    timezone: str
    #: The account (CloudAgent userName) the export was made with: the account of every row it writes.
    account: str
    #: The campaign the export was requested for: the only one the payload may write.
    campaign_name: str


def landed_payload(engine: Engine, payload_id: int) -> LandedPayload:
    """The payload's request, content type, its export's time zone, account and campaign; PayloadError if
    unknown."""
    with engine.connect() as conn:
        row = conn.execute(
            select(
                callback_payloads.c.request_id,
                callback_payloads.c.content_type,
                export_requests.c.timezone,
                export_requests.c.account,
                export_requests.c.campaign_name,
            )
            .join(export_requests, export_requests.c.request_id == callback_payloads.c.request_id)
            .where(callback_payloads.c.payload_id == payload_id)
        ).one_or_none()
    if row is None:
        raise PayloadError(f"callback payload {payload_id} does not exist")
    return LandedPayload(
        payload_id, row.request_id, row.content_type, row.timezone, row.account, row.campaign_name
    )


def received_payload_ids(engine: Engine, request_id: str) -> list[int]:
    """Ids of every payload stored for the request, in arrival order."""
    with engine.connect() as conn:
        return list(
            conn.scalars(
                select(callback_payloads.c.payload_id)
                .where(callback_payloads.c.request_id == request_id)
                .order_by(callback_payloads.c.payload_id)
            )
        )


def mark_payload_loaded(conn: Connection, payload: LandedPayload) -> None:
    """The payload was merged: it and its request become ``loaded``, in the merge's transaction."""
    _set_parse_state(conn, payload.payload_id, "loaded")
    mark_loaded(conn, payload.request_id)


def mark_payload_failed(engine: Engine, payload_id: int) -> None:
    """The payload could not be parsed at all (``load_runs`` says why)."""
    with engine.begin() as conn:
        _set_parse_state(conn, payload_id, "failed")


def _set_parse_state(conn: Connection, payload_id: int, state: str) -> None:
    conn.execute(
        update(callback_payloads)
        .where(callback_payloads.c.payload_id == payload_id)
        .values(parse_state=state)
    )


def late_payload_counts(engine: Engine, request_ids: Iterable[str]) -> dict[str, int]:
    """Per request (of those given), how many payloads landed after it had settled."""
    counts: dict[str, int] = {}
    ids = list(request_ids)
    with engine.connect() as conn:
        for first in range(0, len(ids), _IDS_PER_QUERY):
            query = (
                select(callback_payloads.c.request_id, func.count())
                .where(
                    callback_payloads.c.request_id.in_(ids[first : first + _IDS_PER_QUERY]),
                    callback_payloads.c.late == 1,
                )
                .group_by(callback_payloads.c.request_id)
            )
            counts.update((str(request_id), int(count)) for request_id, count in conn.execute(query))
    return counts


# ---------------------------------------------------------------------------------------------- bodies
def iter_payload_body(conn: Connection, payload_id: int) -> Iterator[bytes]:
    """The payload's raw body, piece by piece (each at most ``CHUNK_BYTES``), checked for completeness."""
    size = conn.execute(
        select(callback_payloads.c.size_bytes).where(callback_payloads.c.payload_id == payload_id)
    ).scalar_one_or_none()
    if size is None:
        raise PayloadError(f"callback payload {payload_id} does not exist")
    database = database_for(conn)
    total = 0
    seq = 0
    while total < size:
        data = database.read_bytes(
            conn,
            select(callback_payload_chunks.c.data).where(
                callback_payload_chunks.c.payload_id == payload_id, callback_payload_chunks.c.seq == seq
            ),
        )
        if data is None:
            break
        total += len(data)
        seq += 1
        yield data
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


@contextmanager
def payload_body(engine: Engine, payload_id: int) -> Iterator[io.BufferedReader]:
    """The payload's raw body as a binary file object, read on a connection of its own while open."""
    with engine.connect() as conn:
        yield open_payload_body(conn, payload_id)
