"""What has been synced, at a glance: coverage per campaign × IST day, the loads behind each cell, the answer
rate per day and the latest rejects by reason. The CloudAgent page in Airflow, ``cloudagent-etl status`` and
the alerts all read it from here (read-only queries; no Airflow).

A window belongs to the IST day its midpoint falls in, so a nightly window (03:30 IST to 03:30 IST the next
day, started ``lookback_minutes`` early) is its first day's. Each cell takes the state of the best request
behind it: ``loaded`` > ``received`` (a callback landed, not loaded yet) > ``requested`` (waiting for the
callback) > ``rejected`` (CloudAgent refused the campaign or the account's apiKey: asking again cannot help
until the configuration changes) > the latest of ``expired`` / ``failed``; a configured campaign with no
request for a day is ``never_requested`` from the day its syncing started (the setting
``cloudagent_sync_start``, else the day it was first configured or requested: :mod:`cloudagent_etl.targets`)
and ``before_start`` before it. Only ``expired``, ``failed`` and ``never_requested`` are missing data a
backfill can fix. Nothing here reads a payload's bytes or a reject's raw record, and request errors are
stored redacted: no apiKey, token or payload byte reaches the page or the terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from cloudagent_etl import landing, warehouse
from cloudagent_etl.accounts import SyncTarget
from cloudagent_etl.pipeline import NIGHTLY_START, NIGHTLY_TIMEZONE, last_complete_interval
from cloudagent_etl.settings import zone
from cloudagent_etl.targets import TargetRecord, coverage_starts
from cloudagent_etl.warehouse import DayRate, LoadCounts

#: The zone of CloudAgent's day (the nightly schedule's) and of the warehouse's ``day_ist`` columns.
IST = ZoneInfo(NIGHTLY_TIMEZONE)


class CellState(StrEnum):
    """The state of one campaign × day, best first."""

    LOADED = "loaded"
    RECEIVED = "received"
    REQUESTED = "requested"
    REJECTED = "rejected"
    EXPIRED = "expired"
    FAILED = "failed"
    NEVER_REQUESTED = "never_requested"
    BEFORE_START = "before_start"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def mark(self) -> str:
        """One character for the terminal grid."""
        return _MARKS[self]


_LABELS = {
    CellState.LOADED: "loaded",
    CellState.RECEIVED: "received, not loaded",
    CellState.REQUESTED: "requested",
    CellState.REJECTED: "rejected by CloudAgent",
    CellState.EXPIRED: "expired",
    CellState.FAILED: "failed",
    CellState.NEVER_REQUESTED: "never requested",
    CellState.BEFORE_START: "before syncing started",
}
_MARKS = {
    CellState.LOADED: "L",
    CellState.RECEIVED: "R",
    CellState.REQUESTED: "W",
    CellState.REJECTED: "!",
    CellState.EXPIRED: "X",
    CellState.FAILED: "F",
    CellState.NEVER_REQUESTED: "-",
    CellState.BEFORE_START: ".",
}
#: States a backfill should fix: the missing data (the others are loaded, on their way, refused by CloudAgent
#: or before syncing started).
BACKFILL_STATES = frozenset({CellState.EXPIRED, CellState.FAILED, CellState.NEVER_REQUESTED})


def window_day(window_start: datetime, window_end: datetime, timezone: str = NIGHTLY_TIMEZONE) -> date:
    """The day a window belongs to: the day of its midpoint, in the account's time zone (IST by default)."""
    return (window_start + (window_end - window_start) / 2).astimezone(zone(timezone)).date()


def request_day(request: landing.ExportRequest) -> date:
    """The day of a request's window, in its account's time zone."""
    return window_day(request.window_start, request.window_end, request.timezone)


def nightly_window(day: date) -> tuple[datetime, datetime]:
    """The nightly data interval of an IST day: 03:30 IST that day to 03:30 IST the next (in UTC)."""
    start = datetime.combine(day, NIGHTLY_START, tzinfo=IST)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


def last_complete_day(now: datetime) -> date:
    """The latest IST day whose nightly window has closed at ``now``."""
    return window_day(*last_complete_interval(now))


@dataclass(frozen=True)
class RequestSummary:
    """One export request behind a cell, its late payloads and its loads: what the page shows on hover
    (the request row holds no token, and no payload byte is read)."""

    request: landing.ExportRequest
    late_payloads: int = 0
    loads: LoadCounts = field(default_factory=LoadCounts)


@dataclass(frozen=True)
class Cell:
    """One campaign of one account × day, and the requests behind it (oldest first)."""

    target: SyncTarget
    day: date
    requests: tuple[RequestSummary, ...] = ()
    #: The first day the target is synced (None: not yet configured in a run nor requested).
    start: date | None = None
    #: The target's record when CloudAgent rejected it (its message names the setting to change).
    rejection: TargetRecord | None = None

    @property
    def campaign(self) -> str:
        return self.target.campaign

    @property
    def state(self) -> CellState:
        states = {summary.request.state for summary in self.requests}
        for state in (landing.RequestState.LOADED, landing.RequestState.RECEIVED):
            if state in states:
                return CellState(state.value)
        if landing.RequestState.REQUESTED in states:
            return CellState.REQUESTED
        if not self.requests and (self.start is None or self.day < self.start):
            return CellState.BEFORE_START
        if self.rejection is not None:
            return CellState.REJECTED
        if not self.requests:
            return CellState.NEVER_REQUESTED
        return CellState(self.requests[-1].request.state.value)

    @property
    def latest(self) -> landing.ExportRequest | None:
        return self.requests[-1].request if self.requests else None

    @property
    def window(self) -> tuple[datetime, datetime]:
        """The window of the latest request, else the day's nightly window."""
        if self.latest is not None:
            return self.latest.window_start, self.latest.window_end
        return nightly_window(self.day)

    @property
    def loads(self) -> LoadCounts:
        total = LoadCounts()
        for summary in self.requests:
            total += summary.loads
        return total

    @property
    def missing(self) -> bool:
        """Data that should be there and is not loaded (rejected and not-yet-synced days are not)."""
        return self.state not in (CellState.LOADED, CellState.REJECTED, CellState.BEFORE_START)

    @property
    def rejection_text(self) -> str | None:
        """What CloudAgent refused and the setting to change (a rejected cell only)."""
        if self.state is not CellState.REJECTED or self.rejection is None:
            return None
        return self.rejection.check_message

    def count(self, state: landing.RequestState) -> int:
        return sum(1 for summary in self.requests if summary.request.state is state)

    @property
    def late_payloads(self) -> int:
        return sum(summary.late_payloads for summary in self.requests)


@dataclass(frozen=True)
class Coverage:
    """The grid: every campaign of every account × every day of the range, a cell each."""

    days: tuple[date, ...]
    targets: tuple[SyncTarget, ...]
    cells: Mapping[tuple[SyncTarget, date], Cell]
    starts: Mapping[SyncTarget, date] = field(default_factory=dict)
    rejections: Mapping[SyncTarget, TargetRecord] = field(default_factory=dict)

    def cell(self, target: SyncTarget, day: date) -> Cell:
        return self.cells.get((target, day)) or Cell(
            target, day, start=self.starts.get(target), rejection=self.rejections.get(target)
        )

    def rejected(self) -> list[tuple[SyncTarget, TargetRecord]]:
        """The targets of the grid CloudAgent rejected, with their records."""
        return [(t, self.rejections[t]) for t in self.targets if t in self.rejections]

    def missing(self) -> list[Cell]:
        """Every cell not loaded, by day then account and campaign."""
        return [self.cell(t, d) for d in self.days for t in self.targets if self.cell(t, d).missing]

    def backfills(self) -> list[Backfill]:
        """Backfills that would fix the expired, failed and never-requested cells: one per run of
        consecutive days missing the same campaigns of the same accounts."""
        backfills: list[Backfill] = []
        for day in self.days:
            targets = tuple(t for t in self.targets if self.cell(t, day).state in BACKFILL_STATES)
            if not targets:
                continue
            last = backfills[-1] if backfills else None
            if last and last.targets == targets and last.last_day == day - timedelta(days=1):
                backfills[-1] = Backfill(last.first_day, day, targets)
            else:
                backfills.append(Backfill(day, day, targets))
        return backfills


@dataclass(frozen=True)
class Backfill:
    """Days ``first_day`` .. ``last_day`` to sync again, and the campaigns of each account missing there.

    A nightly run's logical date is its window's start (03:30 IST of its day): a backfill of the dial
    status DAG from :attr:`from_date` to :attr:`to_date` covers exactly these days. How to start one is
    the orchestrator's business (the provider renders Airflow's command and REST body, whose run
    configuration is :attr:`accounts`: only these campaigns of these accounts are requested).
    """

    first_day: date
    last_day: date
    targets: tuple[SyncTarget, ...]

    @property
    def accounts(self) -> dict[str, list[str]]:
        """Connection id -> the campaigns to sync again (the run's ``accounts`` param)."""
        accounts: dict[str, list[str]] = {}
        for target in self.targets:
            accounts.setdefault(target.conn_id, []).append(target.campaign)
        return accounts

    @property
    def from_date(self) -> datetime:
        return datetime.combine(self.first_day, NIGHTLY_START, tzinfo=IST)

    @property
    def to_date(self) -> datetime:
        return datetime.combine(self.last_day, NIGHTLY_START, tzinfo=IST)


#: Renders a backfill as a command to paste (the provider's, found through the entry point group
#: ``cloudagent_etl.backfill_commands``).
BackfillCommand = Callable[[Backfill], str]


@dataclass(frozen=True)
class RejectGroup:
    """Rejected records of the range that broke the same rules."""

    reason: str
    records: int
    campaigns: tuple[str, ...]
    last_rejected_at: datetime


@dataclass(frozen=True)
class StatusReport:
    """Everything the page and the terminal show for a range of days."""

    coverage: Coverage
    answer_rates: tuple[DayRate, ...]
    rejects: tuple[RejectGroup, ...]
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def day_range(days: int, until: date | None = None, *, now: datetime | None = None) -> tuple[date, ...]:
    """``days`` IST days ending with ``until`` (default: the last day whose window has closed)."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    last = until or last_complete_day(now or datetime.now(UTC))
    return tuple(last - timedelta(days=offset) for offset in range(days - 1, -1, -1))


def status_report(
    engine: Engine,
    *,
    days: int = 7,
    until: date | None = None,
    accounts: Mapping[str, Iterable[str]] | None = None,
    now: datetime | None = None,
    reject_groups: int = 20,
    sync_start: date | None = None,
) -> StatusReport:
    """The report for ``days`` days ending with ``until``; the campaigns of ``accounts`` (the configured
    ones: connection id -> campaigns) get a row even when they have no request in the range.
    ``sync_start``: the setting ``cloudagent_sync_start`` (see :func:`coverage`)."""
    day_list = day_range(days, until, now=now)
    return StatusReport(
        coverage=coverage(engine, day_list, accounts or {}, sync_start=sync_start),
        answer_rates=tuple(warehouse.answer_rates(engine, day_list)),
        rejects=tuple(latest_rejects(engine, day_list, limit=reject_groups)),
    )


def _range_bounds(days: Sequence[date]) -> tuple[datetime, datetime]:
    """Windows whose midpoint may fall in ``days``: those overlapping the range, with a day's margin."""
    return nightly_window(days[0] - timedelta(days=1))[0], nightly_window(days[-1] + timedelta(days=1))[1]


def coverage(
    engine: Engine,
    days: Sequence[date],
    accounts: Mapping[str, Iterable[str]],
    *,
    sync_start: date | None = None,
) -> Coverage:
    """The grid of ``days`` × (the campaigns of ``accounts`` and every campaign with a request in the
    range), a row per account's campaign. A campaign's days before its syncing started (``sync_start`` for
    every campaign, else its first configured or requested day) are not missing."""
    by_cell: dict[tuple[SyncTarget, date], list[RequestSummary]] = {}
    for summary in _requests_in(engine, days):
        request = summary.request
        target = SyncTarget(request.conn_id, request.campaign_name)
        by_cell.setdefault((target, request_day(request)), []).append(summary)
    configured = [SyncTarget(conn_id, campaign) for conn_id, names in accounts.items() for campaign in names]
    targets = list(dict.fromkeys(configured))
    targets += sorted({target for target, _ in by_cell} - set(targets), key=lambda t: (t.conn_id, t.campaign))
    starts, records = coverage_starts(engine, sync_start)
    rejections = {target: record for target, record in records.items() if record.rejected}
    cells = {
        key: Cell(
            *key,
            tuple(sorted(found, key=lambda s: (s.request.created_at, s.request.attempt))),
            start=starts.get(key[0]),
            rejection=rejections.get(key[0]),
        )
        for key, found in by_cell.items()
    }
    return Coverage(
        days=tuple(days), targets=tuple(targets), cells=cells, starts=starts, rejections=rejections
    )


def _requests_in(engine: Engine, days: Sequence[date]) -> list[RequestSummary]:
    """The requests whose window belongs to one of ``days``, with their late payloads and loads."""
    requests = [
        request
        for request in landing.requests_overlapping(engine, *_range_bounds(days))
        if days[0] <= request_day(request) <= days[-1]
    ]
    ids = [request.request_id for request in requests]
    late = landing.late_payload_counts(engine, ids)
    loads = warehouse.load_counts_by_request(engine, ids)
    return [
        RequestSummary(request, late.get(request.request_id, 0), loads.get(request.request_id, LoadCounts()))
        for request in requests
    ]


def latest_rejects(engine: Engine, days: Sequence[date], *, limit: int = 20) -> list[RejectGroup]:
    """Rejected records of the requests of ``days``, grouped by reason, the most recent group first."""
    campaign_of = {
        summary.request.request_id: summary.request.campaign_name for summary in _requests_in(engine, days)
    }
    groups: dict[str, tuple[int, set[str], datetime]] = {}
    for count in warehouse.reject_counts(engine, campaign_of):
        records, campaigns, last = groups.get(count.reason, (0, set(), count.last_rejected_at))
        campaigns.add(campaign_of[count.request_id])
        groups[count.reason] = (records + count.records, campaigns, max(last, count.last_rejected_at))
    ordered = sorted(groups.items(), key=lambda item: (item[1][2], item[1][0]), reverse=True)
    return [
        RejectGroup(reason, records, tuple(sorted(campaigns)), last)
        for reason, (records, campaigns, last) in ordered[:limit]
    ]


# ------------------------------------------------------------------------------------- presentation
def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _loads_json(loads: LoadCounts) -> dict[str, Any]:
    return {
        "loads": loads.loads,
        "failed_loads": loads.failed_payloads,
        "records": loads.rows_in,
        "inserted": loads.inserted,
        "updated": loads.updated,
        "unchanged": loads.unchanged,
        "duplicates": loads.duplicates,
        "rejected": loads.rejected,
        "seconds": round(loads.seconds, 3),
        "last_loaded_at": _iso(loads.last_loaded_at),
    }


def report_json(report: StatusReport) -> dict[str, Any]:
    """The report as JSON-ready data (what the page's data endpoint answers)."""
    grid = report.coverage
    single_account = len({rate.account for rate in report.answer_rates}) <= 1
    cells = []
    for target in grid.targets:
        for day in grid.days:
            cell = grid.cell(target, day)
            start, end = cell.window
            cells.append(
                {
                    "account": target.conn_id,
                    "campaign": target.campaign,
                    "row": target.label,
                    "day": day.isoformat(),
                    "state": cell.state.value,
                    "label": cell.state.label,
                    "window_start": start.isoformat(),
                    "window_end": end.isoformat(),
                    "requests": len(cell.requests),
                    "expired": cell.count(landing.RequestState.EXPIRED),
                    "failed": cell.count(landing.RequestState.FAILED),
                    "late_payloads": cell.late_payloads,
                    "rejection": cell.rejection_text,
                    "loads": _loads_json(cell.loads),
                    "attempts": [_request_json(request) for request in cell.requests],
                }
            )
    return {
        "generated_at": report.generated_at.isoformat(),
        "days": [day.isoformat() for day in grid.days],
        "rows": [
            {
                "account": t.conn_id,
                "campaign": t.campaign,
                "label": t.label,
                "start": grid.starts[t].isoformat() if t in grid.starts else None,
                "rejection": grid.rejections[t].check_message if t in grid.rejections else None,
            }
            for t in grid.targets
        ],
        "accounts": list(dict.fromkeys(target.conn_id for target in grid.targets)),
        "states": {state.value: state.label for state in CellState},
        "cells": cells,
        "missing": len(grid.missing()),
        "rejected": [
            {"account": t.conn_id, "campaign": t.campaign, "label": t.label, "message": record.check_message}
            for t, record in grid.rejected()
        ],
        "backfills": [
            {
                "first_day": backfill.first_day.isoformat(),
                "last_day": backfill.last_day.isoformat(),
                "accounts": backfill.accounts,
                "labels": [target.label for target in backfill.targets],
                "from_date": backfill.from_date.isoformat(),
                "to_date": backfill.to_date.isoformat(),
            }
            for backfill in grid.backfills()
        ],
        "answer_rates": [
            {
                "account": rate.account,
                "campaign": rate.campaign,
                "series": rate.campaign if single_account else f"{rate.account}: {rate.campaign}",
                "day": rate.day.isoformat(),
                "leads": rate.leads,
                "answered": rate.answered,
                "answer_rate": round(rate.answer_rate, 4),
            }
            for rate in report.answer_rates
        ],
        "rejects": [
            {
                "reason": group.reason,
                "records": group.records,
                "campaigns": list(group.campaigns),
                "last_rejected_at": group.last_rejected_at.isoformat(),
            }
            for group in report.rejects
        ],
    }


def _request_json(summary: RequestSummary) -> dict[str, Any]:
    request = summary.request
    return {
        "request_id": request.request_id,
        "unique_id": request.unique_id,
        "attempt": request.attempt,
        "state": request.state.value,
        "window_start": request.window_start.isoformat(),
        "window_end": request.window_end.isoformat(),
        "created_at": _iso(request.created_at),
        "requested_at": _iso(request.requested_at),
        "received_at": _iso(request.received_at),
        "settled_at": _iso(request.settled_at),
        "callback_deadline": _iso(request.callback_deadline),
        "error": request.error,
        "reason": request.reason,
        "dag_id": request.dag_id,
        "run_id": request.run_id,
        "late_payloads": summary.late_payloads,
        "loads": _loads_json(summary.loads),
    }


def format_report(report: StatusReport, backfill_command: BackfillCommand | None = None) -> str:
    """The report for a terminal: the grid, the loads and attempts per cell, what to backfill (as commands
    when ``backfill_command`` renders them), rejects."""
    grid = report.coverage
    first, last = grid.days[0], grid.days[-1]
    lines = [
        f"coverage {first} .. {last} (IST days; a day's window is 03:30 IST to 03:30 IST the next day)",
        "",
    ]
    width = max([len("campaign"), *(len(target.label) for target in grid.targets)])
    lines.append("  ".join(["campaign".ljust(width), *(day.strftime("%m-%d") for day in grid.days)]))
    for target in grid.targets:
        marks = [grid.cell(target, day).state.mark.ljust(5) for day in grid.days]
        lines.append("  ".join([target.label.ljust(width), *marks]).rstrip())
    if not grid.targets:
        lines.append("(no campaign configured and no export request in these days)")
    lines.append("legend: " + "  ".join(f"{state.mark} {state.label}" for state in CellState))

    header = ("day", "campaign", "state", "requests", "records", "inserted", "updated", "unchanged",
              "rejected", "load s")  # fmt: skip
    rows = []
    for day in grid.days:
        for target in grid.targets:
            cell = grid.cell(target, day)
            if not cell.requests:  # nothing was asked for: no counts to show
                continue
            loads = cell.loads
            rows.append(
                (str(day), target.label, cell.state.label, str(len(cell.requests)), str(loads.rows_in),
                 str(loads.inserted), str(loads.updated), str(loads.unchanged), str(loads.rejected),
                 f"{loads.seconds:.1f}")
            )  # fmt: skip
    lines += ["", "per campaign and day:", *_table(header, rows)]

    missing = grid.missing()
    lines += ["", f"missing: {len(missing)} campaign-day(s)" + (":" if missing else "")]
    for cell in missing:
        start, end = cell.window
        window = f"{start.astimezone(IST):%Y-%m-%d %H:%M} .. {end.astimezone(IST):%Y-%m-%d %H:%M} IST"
        lines.append(f"  {cell.day}  {cell.target.label}  {cell.state.label}  window {window}")
        for request in (summary.request for summary in cell.requests):
            unique_id = request.unique_id or "none"
            lines.append(
                f"    attempt {request.attempt}: {request.state.value}, uniqueId {unique_id}, "
                f"request {request.request_id}" + (f": {request.error}" if request.error else "")
            )
    rejected = grid.rejected()
    if rejected:
        lines += ["", "rejected by CloudAgent (no backfill is offered until the configuration changes):"]
        lines += [f"  {target.label}: {record.check_message}" for target, record in rejected]
    backfills = grid.backfills()
    if backfills:
        lines += ["", "to backfill what is missing (expired, failed or never requested):"]
        for backfill in backfills:
            labels = ", ".join(target.label for target in backfill.targets)
            what = f"{backfill.first_day} .. {backfill.last_day}: {labels}"
            lines.append(f"  {backfill_command(backfill)}" if backfill_command else f"  {what}")

    lines += ["", "rejects by reason:"]
    if report.rejects:
        lines += _table(
            ("records", "campaigns", "last rejected (UTC)", "reason"),
            [(str(g.records), ",".join(g.campaigns), f"{g.last_rejected_at:%Y-%m-%d %H:%M}", g.reason)
             for g in report.rejects],
        )  # fmt: skip
    else:
        lines.append("  none")
    return "\n".join(lines) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(value)) for value in column) for column in zip(header, *rows, strict=True)]
    return [
        "  " + "  ".join(str(value).ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
