"""Erasure on request: one person, given by phone number, removed from everything this project keeps.

In one transaction (all or nothing, bodies included), holding the personal-data lock exclusively (no load
runs meanwhile; :meth:`Database.hold_personal_data_lock`): the person's records leave every raw body kept
(rewritten without them, see :mod:`cloudagent_etl.landing.personal_data`), ``dial_status``, every
superseded version and the rejects; a receipt says what was removed, when, for whom and why, without the
number; and the pseudonym joins the suppression list, so that later loads keep the person out. Erasing
again finds nothing and writes no new receipt. A dry run counts and changes nothing.

A record is the person's when its phone field (any alias) is their number in any writing; rows loaded
before pseudonyms existed are found by their canonical number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, Text, cast, delete, func, or_, select

from cloudagent_etl import landing
from cloudagent_etl.databases import database_for
from cloudagent_etl.personal_data.phones import PseudonymKey, parse_phone
from cloudagent_etl.personal_data.records import record_e164
from cloudagent_etl.warehouse import renumber_rejects
from cloudagent_etl.warehouse.tables import (
    dial_status,
    dial_status_rejects,
    dial_status_superseded,
    erasure_receipts,
    suppressed_pseudonyms,
)

#: The counts' name for the records removed from raw bodies (the other names are tables).
RAW_BODIES = "raw_bodies"


@dataclass(frozen=True)
class ErasureReport:
    """What an erasure removed (or, in a dry run, would remove), per table and in raw bodies."""

    phone_pseudonym: str
    counts: Mapping[str, int]
    dry_run: bool
    receipt_id: int | None = None
    #: The receipt of an earlier erasure of the same person, when this one found nothing left.
    earlier_receipt_id: int | None = None
    payloads_rewritten: list[int] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        counts = ", ".join(f"{name}: {count}" for name, count in self.counts.items())
        if self.dry_run:
            return f"dry run, nothing changed; would remove {counts}"
        if self.receipt_id is None:
            return f"nothing left to erase ({counts}); already erased, receipt {self.earlier_receipt_id}"
        return f"erased {counts}; receipt {self.receipt_id}; the person is kept out of later loads"


def erase(
    engine: Engine,
    phone: str,
    *,
    key: PseudonymKey,
    region: str,
    requested_by: str | None = None,
    reason: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> ErasureReport:
    """Erase the person of ``phone`` (any common writing, read in ``region``); see the module docstring.

    A number that cannot be read raises ``PhoneNumberError`` before anything is touched.
    """
    e164 = parse_phone(phone, region)
    pseudonym = key.pseudonym(e164)
    moment = now or datetime.now(UTC)
    database = database_for(engine)
    counts: dict[str, int] = {}
    with database.write_transaction(engine) as conn:
        database.hold_personal_data_lock(conn, exclusive=True)
        payloads = landing.payload_ids_with_bodies(conn)
        rewritten = []
        removed_from_bodies = 0
        counts[dial_status_rejects.name] = _erase_rejects(conn, e164, region, dry_run=dry_run)
        for payload_id in payloads:
            removed = landing.remove_records(
                conn,
                payload_id,
                lambda record: record_e164(record, region) == e164,
                why="erasure on request",
                now=moment,
                dry_run=dry_run,
            )
            if removed:
                rewritten.append(payload_id)
                removed_from_bodies += len(removed)
                if not dry_run:  # the person's rejects are gone already: the others move up
                    renumber_rejects(conn, payload_id, removed)
        counts[RAW_BODIES] = removed_from_bodies
        for table in (dial_status, dial_status_superseded):
            person = or_(
                table.c.phone_pseudonym == pseudonym,
                table.c.phone_e164 == e164,
                table.c.phone_number == e164[1:],
            )
            counts[table.name] = int(
                conn.execute(select(func.count()).select_from(table).where(person)).scalar_one()
            )
            if counts[table.name] and not dry_run:
                conn.execute(delete(table).where(person))
        order = (RAW_BODIES, dial_status.name, dial_status_superseded.name, dial_status_rejects.name)
        counts = {name: counts[name] for name in order}
        earlier = conn.execute(
            select(suppressed_pseudonyms.c.receipt_id).where(
                suppressed_pseudonyms.c.phone_pseudonym == pseudonym
            )
        ).scalar_one_or_none()
        if dry_run or (earlier is not None and not any(counts.values())):
            conn.rollback()
            return ErasureReport(
                pseudonym, counts, dry_run, earlier_receipt_id=earlier, payloads_rewritten=rewritten
            )
        receipt_id = int(
            conn.execute(
                erasure_receipts.insert()
                .values(
                    phone_pseudonym=pseudonym,
                    counts=counts,
                    erased_at=moment,
                    requested_by=requested_by,
                    reason=reason,
                )
                .returning(erasure_receipts.c.receipt_id)
            ).scalar_one()
        )
        conn.execute(
            database.insert_ignoring_conflicts(suppressed_pseudonyms),
            {"phone_pseudonym": pseudonym, "suppressed_at": moment, "receipt_id": receipt_id},
        )
    return ErasureReport(pseudonym, counts, dry_run, receipt_id=receipt_id, payloads_rewritten=rewritten)


def _erase_rejects(conn: Any, e164: str, region: str, *, dry_run: bool) -> int:
    """Delete the rejects whose raw record is the person's: those whose text holds the number's last four
    digits are read, and their phone field decides."""
    candidates = conn.execute(
        select(
            dial_status_rejects.c.payload_id, dial_status_rejects.c.position, dial_status_rejects.c.raw_record
        ).where(cast(dial_status_rejects.c.raw_record, Text).like(f"%{e164[-4:]}%"))
    ).all()
    theirs = []
    for payload_id, position, raw_record in candidates:
        record = orjson.loads(raw_record) if isinstance(raw_record, str | bytes) else raw_record
        if record_e164(record, region) == e164:
            theirs.append((payload_id, position))
    if theirs and not dry_run:
        for payload_id, position in theirs:
            conn.execute(
                delete(dial_status_rejects).where(
                    dial_status_rejects.c.payload_id == payload_id, dial_status_rejects.c.position == position
                )
            )
    return len(theirs)
