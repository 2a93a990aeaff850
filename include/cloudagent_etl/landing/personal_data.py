"""Raw bodies and personal data: rewriting a body without some records, and purging old bodies.

Called by erasure (:mod:`cloudagent_etl.personal_data.erasure`), by the load (a delivery that held an
erased person) and by retention, each inside its caller's transaction. A rewritten body is the JSON array
of the records kept, whatever its shape was (JSON object, form, multipart: a gzip body was decoded when it
landed); the payload row gets the new size and SHA-256 and says what was removed, and a load of it gives
the same rows minus the records removed. A purged body's chunks are deleted; its payload row keeps size,
SHA-256, counts and times, and says when and under which setting.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, delete, insert, select, update

from cloudagent_etl.errors import PayloadError
from cloudagent_etl.landing.reading import open_payload_body
from cloudagent_etl.landing.schema import CHUNK_BYTES, callback_payload_chunks, callback_payloads

#: Spooled to disk past this: a body of hundreds of MB is never held whole.
_SPOOL_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class PurgedBody:
    """A payload whose raw body retention deleted: when, and under which setting."""

    payload_id: int
    purged_at: datetime
    setting: str

    def describe(self) -> str:
        return (
            f"the raw data of payload {self.payload_id} was purged on {self.purged_at:%Y-%m-%d} "
            f"under {self.setting}"
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):  # ijson's exact numbers: written back as they were read
        return orjson.Fragment(str(value))
    raise TypeError(f"cannot write {type(value).__name__} back into a body")


def payload_ids_with_bodies(conn: Connection) -> list[int]:
    """Every payload whose raw body is kept (not purged), oldest first."""
    return list(
        conn.scalars(
            select(callback_payloads.c.payload_id)
            .where(callback_payloads.c.body_purged_at.is_(None))
            .order_by(callback_payloads.c.payload_id)
        )
    )


def remove_records(
    conn: Connection,
    payload_id: int,
    removes: Callable[[Any], bool],
    *,
    why: str,
    now: datetime,
    dry_run: bool,
) -> list[int]:
    """Rewrite the payload's body without the records ``removes`` picks; their positions in the old body.

    The records after a removed one move up: whoever keeps positions into the body (the rejects) renumbers
    them. A body that does not parse is left as it is (nothing removed): the load recorded it as failed,
    and it holds no record a load could have stored. With ``dry_run`` nothing is written.
    """
    from cloudagent_etl.normalize import iter_records

    row = conn.execute(
        select(
            callback_payloads.c.content_type,
            callback_payloads.c.body_purged_at,
            callback_payloads.c.body_rewrite_note,
        ).where(callback_payloads.c.payload_id == payload_id)
    ).one_or_none()
    if row is None or row.body_purged_at is not None:
        return []
    removed: list[int] = []
    kept = 0
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as rewritten:
        digest = hashlib.sha256()

        def write(data: bytes) -> None:
            digest.update(data)
            rewritten.write(data)

        write(b"[")
        try:
            records = iter_records(open_payload_body(conn, payload_id), row.content_type)
            for position, record in enumerate(records):
                if removes(record):
                    removed.append(position)
                    continue
                write((b"," if kept else b"") + orjson.dumps(record, default=_json_default))
                kept += 1
        except PayloadError:
            return []
        write(b"]")
        if not removed or dry_run:
            return removed
        # A body equal to another of the request (the same delivery, landed twice and rewritten twice)
        # takes a trailing newline per copy: the request's bodies stay distinct by SHA-256.
        while _sha256_taken(conn, payload_id, digest.copy().hexdigest()):
            write(b"\n")
        size = rewritten.tell()
        rewritten.seek(0)
        conn.execute(
            delete(callback_payload_chunks).where(callback_payload_chunks.c.payload_id == payload_id)
        )
        for seq, data in enumerate(iter(lambda: rewritten.read(CHUNK_BYTES), b"")):
            conn.execute(
                insert(callback_payload_chunks), {"payload_id": payload_id, "seq": seq, "data": data}
            )
    was = "" if row.content_type == "application/json" else f" (was {row.content_type})"
    note = (
        f"{now:%Y-%m-%d %H:%M:%S} UTC: {len(removed)} record(s) removed ({why}); rewritten as a JSON "
        f"array of the {kept} kept{was}"
    )
    conn.execute(
        update(callback_payloads)
        .where(callback_payloads.c.payload_id == payload_id)
        .values(
            sha256=digest.hexdigest(),
            size_bytes=size,
            content_type="application/json",
            body_rewritten_at=now,
            body_rewrite_note="; ".join(filter(None, (row.body_rewrite_note, note))),
        )
    )
    return removed


def _sha256_taken(conn: Connection, payload_id: int, sha256: str) -> bool:
    request_id = (
        select(callback_payloads.c.request_id)
        .where(callback_payloads.c.payload_id == payload_id)
        .scalar_subquery()
    )
    return (
        conn.execute(
            select(callback_payloads.c.payload_id).where(
                callback_payloads.c.request_id == request_id,
                callback_payloads.c.sha256 == sha256,
                callback_payloads.c.payload_id != payload_id,
            )
        ).first()
        is not None
    )


def purgeable_bodies(conn: Connection, received_before: datetime) -> list[tuple[int, int]]:
    """(payload id, size) of every loaded payload received before ``received_before`` with its body kept."""
    return [
        (int(payload_id), int(size))
        for payload_id, size in conn.execute(
            select(callback_payloads.c.payload_id, callback_payloads.c.size_bytes)
            .where(
                callback_payloads.c.parse_state == "loaded",
                callback_payloads.c.received_at < received_before,
                callback_payloads.c.body_purged_at.is_(None),
            )
            .order_by(callback_payloads.c.payload_id)
        )
    ]


def purge_bodies(conn: Connection, payload_ids: list[int], *, now: datetime, setting: str) -> None:
    """Delete the raw bodies of ``payload_ids`` and record when and under which ``setting``."""
    for payload_id in payload_ids:
        conn.execute(
            delete(callback_payload_chunks).where(callback_payload_chunks.c.payload_id == payload_id)
        )
        conn.execute(
            update(callback_payloads)
            .where(callback_payloads.c.payload_id == payload_id)
            .values(body_purged_at=now, purge_setting=setting)
        )


def purged_bodies(engine: Engine, payload_ids: list[int]) -> Iterator[PurgedBody]:
    """Those of ``payload_ids`` whose raw body was purged."""
    if not payload_ids:
        return
    with engine.connect() as conn:
        for payload_id, purged_at, setting in conn.execute(
            select(
                callback_payloads.c.payload_id,
                callback_payloads.c.body_purged_at,
                callback_payloads.c.purge_setting,
            ).where(
                callback_payloads.c.payload_id.in_(payload_ids),
                callback_payloads.c.body_purged_at.is_not(None),
            )
        ):
            yield PurgedBody(int(payload_id), purged_at, str(setting))
