"""What the warehouse says about loads, for the page, ``cloudagent-etl status`` and the alerts (read-only).

By request id (landing knows which requests a range of days holds): the counts of their loads, their
rejects by reason; and by IST day, the answer rate of each campaign from the daily summary view.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TypeVar

from sqlalchemy import Engine, and_, case, func, or_, select, text

from cloudagent_etl.warehouse.load import LoadCounts
from cloudagent_etl.warehouse.tables import WAREHOUSE_KEY, dial_status, dial_status_rejects, load_runs

#: Ids in one ``IN (...)`` list: SQLite binds each as a parameter (at most 32766 in a statement).
IDS_PER_QUERY = 1000
#: ``load_runs`` counts summed per request, as :class:`LoadCounts` names them.
_COUNTED = ("rows_in", "inserted", "updated", "unchanged", "duplicates", "rejected")

T = TypeVar("T")


def _slices(items: Iterable[T]) -> Iterator[list[T]]:
    listed = list(items)
    for first in range(0, len(listed), IDS_PER_QUERY):
        yield listed[first : first + IDS_PER_QUERY]


def load_counts_by_request(engine: Engine, request_ids: Iterable[str]) -> dict[str, LoadCounts]:
    """The loads of each request (of those given) added up; requests never loaded are left out."""
    loaded = load_runs.c.status == "loaded"
    counts: dict[str, LoadCounts] = {}
    with engine.connect() as conn:
        for ids in _slices(request_ids):
            query = (
                select(
                    load_runs.c.request_id,
                    func.count().label("payloads"),
                    func.sum(case((loaded, 0), else_=1)).label("failed_payloads"),
                    *(func.sum(case((loaded, load_runs.c[name]), else_=0)).label(name) for name in _COUNTED),
                    func.sum(load_runs.c.seconds).label("seconds"),
                    func.max(case((loaded, load_runs.c.finished_at))).label("last_loaded_at"),
                )
                .where(load_runs.c.request_id.in_(ids))
                .group_by(load_runs.c.request_id)
            )
            for row in conn.execute(query):
                summed = LoadCounts(
                    payloads=int(row.payloads),
                    failed_payloads=int(row.failed_payloads or 0),
                    seconds=float(row.seconds or 0.0),
                    last_loaded_at=row.last_loaded_at,
                )
                for name in _COUNTED:
                    setattr(summed, name, int(row._mapping[name] or 0))
                counts[row.request_id] = summed
    return counts


@dataclass(frozen=True)
class RejectCount:
    """Rejected records of one request that broke the same rules."""

    request_id: str
    reason: str
    records: int
    last_rejected_at: datetime


def reject_counts(engine: Engine, request_ids: Iterable[str]) -> list[RejectCount]:
    """Per request (of those given) and reason, the rejected records (identical ones counted)."""
    found: list[RejectCount] = []
    with engine.connect() as conn:
        for ids in _slices(request_ids):
            query = (
                select(
                    dial_status_rejects.c.request_id,
                    dial_status_rejects.c.reason,
                    func.sum(dial_status_rejects.c.occurrences).label("records"),
                    func.max(dial_status_rejects.c.rejected_at).label("last"),
                )
                .where(dial_status_rejects.c.request_id.in_(ids))
                .group_by(dial_status_rejects.c.request_id, dial_status_rejects.c.reason)
            )
            found += [
                RejectCount(row.request_id, row.reason, int(row.records), row.last)
                for row in conn.execute(query)
            ]
    return found


@dataclass(frozen=True)
class DayRate:
    """Leads and answered leads of an account's campaign on an IST day of ``updated_at`` (the daily summary
    view)."""

    account: str
    campaign: str
    day: date
    leads: int
    answered: int

    @property
    def answer_rate(self) -> float:
        return self.answered / self.leads if self.leads else 0.0


def answer_rates(engine: Engine, days: Sequence[date]) -> list[DayRate]:
    """Leads and answered leads per campaign and IST day of ``updated_at``, from the warehouse's view."""
    query = (
        "SELECT account, campaign_name, day_ist, leads, answered FROM dial_status_daily_summary "
        "WHERE day_ist >= :first AND day_ist <= :last ORDER BY day_ist, account, campaign_name"
    )
    with engine.connect() as conn:
        rows = conn.execute(text(query), {"first": days[0], "last": days[-1]}).all()
    return [
        DayRate(row.account, row.campaign_name, _as_date(row.day_ist), int(row.leads), int(row.answered or 0))
        for row in rows
    ]


def _as_date(value: object) -> date:
    """``day_ist`` is a date on PostgreSQL and ISO text on SQLite."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def key_problems(engine: Engine, campaigns: Sequence[str]) -> list[str]:
    """Keys of ``campaigns`` (of any account) in ``dial_status`` that are duplicated (at most 10 named) or
    empty."""
    key = [dial_status.c[name] for name in WAREHOUSE_KEY]
    with engine.connect() as conn:
        duplicates = conn.execute(
            select(*key, func.count().label("n"))
            .where(dial_status.c.campaign_name.in_(campaigns))
            .group_by(*key)
            .having(func.count() > 1)
            .limit(10)
        ).all()
        empty_keys = conn.execute(
            select(func.count())
            .select_from(dial_status)
            .where(
                or_(
                    dial_status.c.account.is_(None),
                    dial_status.c.campaign_name.is_(None),
                    dial_status.c.record_key.is_(None),
                    and_(dial_status.c.campaign_name.in_(campaigns), dial_status.c.record_key == ""),
                )
            )
        ).scalar_one()
    problems = [
        f"account {row.account!r}, campaign {row.campaign_name!r}: record_key {row.record_key!r} is in "
        f"dial_status {row.n} times"
        for row in duplicates
    ]
    if empty_keys:
        problems.append(
            f"dial_status has {empty_keys} rows with an empty account, campaign_name or record_key"
        )
    return problems
