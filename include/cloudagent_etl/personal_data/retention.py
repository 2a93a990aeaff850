"""Retention: raw data is kept as long as it serves reprocessing, then purged; what audits need stays.

Raw bodies of loaded payloads received more than ``CLOUDAGENT_RAW_RETENTION_DAYS`` (default
:data:`DEFAULT_RAW_RETENTION_DAYS`) ago are deleted: the payload row keeps size, SHA-256, counts and times,
so coverage and audits still hold, and a reprocess of the window says when its raw data was purged and under
which setting. Rejects' raw records of the same age are emptied (``{}``; the reason and counts stay).
Superseded versions loaded more than ``CLOUDAGENT_HISTORY_RETENTION_DAYS`` ago are deleted when that is
set (off by default: history is what the warehouse is for). The current rows are never purged: an erasure
removes a person, retention removes copies.

The clock is a parameter (``now``): tests move it, the DAG and the command pass the wall clock.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Engine, delete, func, select, update

from cloudagent_etl import landing
from cloudagent_etl.databases import database_for
from cloudagent_etl.errors import ConfigurationError
from cloudagent_etl.warehouse.tables import dial_status_rejects, dial_status_superseded

RAW_RETENTION_SETTING: Final = "CLOUDAGENT_RAW_RETENTION_DAYS"
HISTORY_RETENTION_SETTING: Final = "CLOUDAGENT_HISTORY_RETENTION_DAYS"
#: 30 days: a month of raw data covers a reprocess after a normalize fix or a late correction, and a
#: backfill's overlap; everything the audits need (payload metadata, load runs, receipts) is kept anyway.
DEFAULT_RAW_RETENTION_DAYS: Final = 30


@dataclass(frozen=True)
class RetentionSettings:
    raw_days: int = DEFAULT_RAW_RETENTION_DAYS
    #: None: superseded versions are kept.
    history_days: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetentionSettings:
        values = os.environ if env is None else env
        raw = _days(values, RAW_RETENTION_SETTING)
        return cls(
            raw_days=DEFAULT_RAW_RETENTION_DAYS if raw is None else raw,
            history_days=_days(values, HISTORY_RETENTION_SETTING),
        )

    def raw_setting(self) -> str:
        return f"{RAW_RETENTION_SETTING}={self.raw_days}"


def _days(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigurationError(f"{name} must be a whole number of days, at least 1: {value!r}")
    return int(value)


@dataclass(frozen=True)
class PurgeReport:
    bodies: int
    body_bytes: int
    reject_raw_records: int
    superseded_versions: int
    dry_run: bool

    def summary(self) -> str:
        verb = "would purge" if self.dry_run else "purged"
        return (
            f"{verb} {self.bodies} raw bodies ({self.body_bytes} bytes), {self.reject_raw_records} "
            f"rejects' raw records, {self.superseded_versions} superseded versions"
        )


def purge(
    engine: Engine, settings: RetentionSettings, *, now: datetime, dry_run: bool = False
) -> PurgeReport:
    """Purge what is older than ``settings`` say at ``now``, in one transaction (see the module docstring)."""
    raw_cutoff = now - timedelta(days=settings.raw_days)
    database = database_for(engine)
    with database.write_transaction(engine) as conn:
        database.hold_personal_data_lock(conn, exclusive=True)
        bodies = landing.purgeable_bodies(conn, raw_cutoff)
        old_rejects = (
            dial_status_rejects.c.rejected_at < raw_cutoff
        ) & dial_status_rejects.c.raw_purged_at.is_(None)
        rejects = int(
            conn.execute(
                select(func.count()).select_from(dial_status_rejects).where(old_rejects)
            ).scalar_one()
        )
        superseded = 0
        if settings.history_days is not None:
            old_versions = dial_status_superseded.c.loaded_at < now - timedelta(days=settings.history_days)
            superseded = int(
                conn.execute(
                    select(func.count()).select_from(dial_status_superseded).where(old_versions)
                ).scalar_one()
            )
        if not dry_run:
            landing.purge_bodies(
                conn, [payload_id for payload_id, _ in bodies], now=now, setting=settings.raw_setting()
            )
            conn.execute(
                update(dial_status_rejects).where(old_rejects).values(raw_record={}, raw_purged_at=now)
            )
            if superseded:
                conn.execute(delete(dial_status_superseded).where(old_versions))
        else:
            conn.rollback()
    return PurgeReport(len(bodies), sum(size for _, size in bodies), rejects, superseded, dry_run)
