"""What to alert about when data is missing, and the message: campaigns, windows and why.

Two alerts, found in the database: a run that ends with campaigns not loaded (:func:`unloaded_in_run`),
and a campaign × IST day still not loaded some hours after its window closed (:func:`overdue`, checked
hourly by the ``cloudagent_missing_data`` DAG: each day is reported once, in the hour its threshold
passes). How the message is sent is Airflow's business (``cloudagent_airflow.alerts``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Engine

from cloudagent_etl import landing, status
from cloudagent_etl.accounts import SyncTarget
from cloudagent_etl.settings import DEFAULT_CONNECTION


@dataclass(frozen=True)
class MissingData:
    """One account's campaign window that has no loaded export, and why."""

    target: SyncTarget
    window_start: datetime
    window_end: datetime
    reason: str

    @property
    def campaign(self) -> str:
        return self.target.campaign

    def line(self) -> str:
        start, end = (moment.astimezone(status.IST) for moment in (self.window_start, self.window_end))
        window = f"window {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} IST"
        account = "" if self.target.conn_id == DEFAULT_CONNECTION else f" (connection {self.target.conn_id})"
        return f"{self.campaign}{account}: {window}: {self.reason}"


@dataclass(frozen=True)
class Alert:
    """A notification: a subject line and one line per missing campaign window."""

    subject: str
    missing: tuple[MissingData, ...]
    #: Lines that are not a missing window (a rejected campaign, and the setting to change).
    notes: tuple[str, ...] = ()

    @property
    def campaigns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(item.campaign for item in self.missing))

    @property
    def connections(self) -> tuple[str, ...]:
        """The connections of the accounts with missing data: the settings to look at first."""
        return tuple(dict.fromkeys(item.target.conn_id for item in self.missing))

    @property
    def message(self) -> str:
        lines = [*(item.line() for item in self.missing), *self.notes]
        return "\n".join([self.subject, *(f"- {line}" for line in lines)])


def rejection_alert(lines: Iterable[str]) -> Alert | None:
    """CloudAgent refused accounts or campaigns (news of an account check: each is said once, when first
    seen with its configuration). None when there is nothing new."""
    found = tuple(lines)
    if not found:
        return None
    return Alert("CloudAgent rejected configured accounts or campaigns", (), found)


def _why(request: landing.ExportRequest) -> str:
    reason = f"{request.state.value} (attempt {request.attempt}, uniqueId {request.unique_id or 'none'})"
    return reason + (f": {request.error}" if request.error else "")


def unloaded_in_run(
    engine: Engine,
    *,
    dag_id: str,
    run_id: str,
    targets: Iterable[SyncTarget] | None,
    window: tuple[datetime, datetime],
) -> Alert | None:
    """The campaigns of a run whose latest export is not loaded (None when every one loaded).

    ``targets`` None means the run stopped before it had its list of campaigns (preflight or the list
    failed): then nothing of ``window`` was synced.
    """
    subject = f"CloudAgent: run {run_id} of {dag_id} ended with campaigns not loaded"
    if targets is None:
        stopped = "the run stopped before it had a campaign list (see its preflight / exports_to_sync task)"
        every = SyncTarget(DEFAULT_CONNECTION, "(every campaign)")
        return Alert(subject, (MissingData(every, *window, stopped),))
    latest = landing.latest_requests_of_run(engine, dag_id, run_id)
    missing = []
    for target in targets:
        request = latest.get((target.conn_id, target.campaign))
        if request is None:
            missing.append(MissingData(target, *window, "no export request was made in this run"))
        elif not request.is_loaded:
            missing.append(MissingData(target, request.window_start, request.window_end, _why(request)))
    return Alert(subject, tuple(missing)) if missing else None


def overdue(
    engine: Engine,
    *,
    accounts: Mapping[str, Iterable[str]],
    hours: float,
    since: datetime,
    until: datetime,
    sync_start: date | None = None,
) -> Alert | None:
    """Campaign × IST days of ``accounts`` (connection id -> campaigns) still not loaded ``hours`` after
    their nightly window closed, for the days whose threshold passed in [``since``, ``until``) (an hourly
    check reports each day once). Days before a campaign's syncing started and campaigns CloudAgent
    rejected are not missing (:func:`status.coverage`): a rejection is alerted once, by the run that found
    it (:func:`rejection_alert`)."""
    delay, instant = timedelta(hours=hours), timedelta(microseconds=1)
    first = status.last_complete_day(since - delay - instant) + timedelta(days=1)
    last = status.last_complete_day(until - delay - instant)
    if last < first:
        return None
    configured = {SyncTarget(conn_id, campaign) for conn_id, names in accounts.items() for campaign in names}
    days = status.day_range((last - first).days + 1, last)
    grid = status.coverage(engine, days, accounts, sync_start=sync_start)
    missing = []
    for cell in grid.missing():
        if cell.target not in configured:
            continue
        reason = f"{cell.state.label} {hours:g} h after its window closed"
        latest = cell.latest
        if latest is not None:
            reason += f" (attempt {latest.attempt}, uniqueId {latest.unique_id or 'none'})"
            reason += f": {latest.error}" if latest.error else ""
        missing.append(MissingData(cell.target, *cell.window, reason))
    if not missing:
        return None
    return Alert(f"CloudAgent: data still missing {hours:g} h after its window closed", tuple(missing))
