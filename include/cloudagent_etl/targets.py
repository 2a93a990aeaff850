"""What the pipeline knows of each account × campaign it was asked to sync: since when, and whether
CloudAgent accepts it.

One row of ``sync_targets`` per (connection, campaign), written by the preflight of a run, by the hourly
missing-data check, by ``cloudagent-etl doctor`` and when CloudAgent refuses an export:

- ``first_day``: the first IST day the campaign was configured or requested. Coverage starts there
  (unless the setting ``cloudagent_sync_start`` says otherwise): days before it were never meant to be
  synced, so they are not "missing".
- ``check_result``: the last account check (:mod:`cloudagent_etl.preflight`), or the last refusal of an
  export: ``ok``, ``campaign_unknown`` (CloudAgent does not know the campaign) or ``apikey_rejected``
  (CloudAgent refused the apiKey or the userName). A rejected campaign is shown as rejected, not missing,
  and no backfill is offered for it: requesting it again would fail the same way.
- ``fingerprint``: an HMAC (keyed with this database's installation secret, never the apiKey itself) of
  the account settings and the campaign at the time of the check: a check is repeated when the
  configuration changed, when the campaign is new and when it last failed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from sqlalchemy import Column, Date, Engine, String, Table, Text, select

from cloudagent_etl.accounts import SyncTarget
from cloudagent_etl.databases import database_for
from cloudagent_etl.errors import (
    ApiError,
    AuthenticationFailedError,
    InvalidApiKeyError,
    InvalidCampaignNameError,
    InvalidUserNameError,
)
from cloudagent_etl.settings import ApiSettings
from cloudagent_etl.sqltypes import UtcDateTime, metadata

#: The Variable (``AIRFLOW_VAR_CLOUDAGENT_SYNC_START``; ``CLOUDAGENT_SYNC_START`` for the CLI) that sets the
#: first IST day coverage counts for every campaign.
SYNC_START_VARIABLE = "cloudagent_sync_start"


class CheckResult(StrEnum):
    """What CloudAgent said of an account × campaign the last time it was asked."""

    OK = "ok"
    CAMPAIGN_UNKNOWN = "campaign_unknown"
    APIKEY_REJECTED = "apikey_rejected"

    @property
    def rejected(self) -> bool:
        return self is not CheckResult.OK


CHECK_RESULTS = tuple(result.value for result in CheckResult)

sync_targets = Table(
    "sync_targets",
    metadata,
    Column("cloudagent_conn_id", Text, primary_key=True, comment="Airflow connection of the account"),
    Column("campaign_name", Text, primary_key=True, comment="CloudAgent campaign"),
    Column(
        "first_day",
        Date,
        nullable=False,
        comment="first IST day the campaign was configured or requested: coverage starts here",
    ),
    Column(
        "check_result",
        String(32),
        nullable=True,
        comment="last account check or export refusal: ok, campaign_unknown, apikey_rejected; NULL: never",
    ),
    Column("checked_at", UtcDateTime, nullable=True, comment="when check_result was recorded (UTC)"),
    Column(
        "check_message", Text, nullable=True, comment="CloudAgent's answer and the setting to fix (no secret)"
    ),
    Column(
        "fingerprint",
        String(64),
        nullable=True,
        comment="HMAC of the account settings and campaign at the check (keyed, never the apiKey)",
    ),
    comment="per account x campaign: since when it is synced and whether CloudAgent accepts it",
)


@dataclass(frozen=True)
class TargetRecord:
    """One row of ``sync_targets``."""

    target: SyncTarget
    first_day: date
    check_result: CheckResult | None = None
    checked_at: datetime | None = None
    check_message: str | None = None
    fingerprint: str | None = None

    @property
    def rejected(self) -> bool:
        return self.check_result is not None and self.check_result.rejected


def fingerprint(secret: bytes, api: ApiSettings, campaign: str) -> str:
    """A keyed digest of what decides CloudAgent's answer: base URL, endpoint, userName, apiKey, campaign.

    Keyed with the installation secret so that the table never holds a plain hash of the apiKey.
    """
    material = "\x00".join([api.base_url, api.endpoint, api.user_name, api.api_key.get(), campaign])
    return hmac.new(secret, material.encode(), hashlib.sha256).hexdigest()


def result_of(error: ApiError) -> CheckResult | None:
    """The check result a documented CloudAgent error means (None: not about the account or campaign)."""
    if isinstance(error, InvalidCampaignNameError):
        return CheckResult.CAMPAIGN_UNKNOWN
    if isinstance(error, InvalidApiKeyError | AuthenticationFailedError | InvalidUserNameError):
        return CheckResult.APIKEY_REJECTED
    return None


def rejection_text(target: SyncTarget, result: CheckResult, setting: str | None = None) -> str:
    """What a rejection means and which setting to change: one line for cells, status and alerts."""
    where = setting or "the Variable cloudagent_accounts (or cloudagent_campaigns)"
    if result is CheckResult.CAMPAIGN_UNKNOWN:
        return (
            f"CloudAgent does not know this campaign: {target.campaign!r} is not a campaign of the account "
            f"of connection {target.conn_id}; correct the name in {where}, or remove it"
        )
    return (
        f"CloudAgent rejected the apiKey (or userName) of connection {target.conn_id}: fix its password (the "
        "apiKey) or its login (the userName)"
    )


def _day_of(moment: datetime) -> date:
    from cloudagent_etl.status import IST

    return moment.astimezone(IST).date()


def current_window_day(now: datetime | None = None) -> date:
    """The IST day of the nightly window open at ``now``: what a campaign configured now is first synced
    for (its first nightly run exports that window)."""
    from cloudagent_etl.status import last_complete_day

    return last_complete_day(now or datetime.now(UTC)) + timedelta(days=1)


def record_seen(engine: Engine, targets: Iterable[SyncTarget], day: date) -> None:
    """Record that ``targets`` were configured or requested for ``day``: new ones start there, known ones
    start at the earlier of their start and ``day``."""
    rows = [{"cloudagent_conn_id": t.conn_id, "campaign_name": t.campaign, "first_day": day} for t in targets]
    if not rows:
        return
    database = database_for(engine)
    with engine.begin() as conn:
        conn.execute(database.insert_ignoring_conflicts(sync_targets), rows)
        for row in rows:
            conn.execute(
                sync_targets.update()
                .where(
                    sync_targets.c.cloudagent_conn_id == row["cloudagent_conn_id"],
                    sync_targets.c.campaign_name == row["campaign_name"],
                    sync_targets.c.first_day > day,
                )
                .values(first_day=day)
            )


def record_check(
    engine: Engine,
    target: SyncTarget,
    result: CheckResult,
    *,
    message: str | None,
    fingerprint: str | None,
    day: date | None = None,
) -> bool:
    """Store the result of a check (or an export refusal) of ``target``; True when it is news (a rejection
    not recorded before for this configuration): the caller alerts on news only."""
    record_seen(engine, [target], day or current_window_day())
    columns = sync_targets.c
    key = (columns.cloudagent_conn_id == target.conn_id, columns.campaign_name == target.campaign)
    with engine.begin() as conn:
        before = conn.execute(
            select(sync_targets.c.check_result, sync_targets.c.fingerprint).where(*key)
        ).one_or_none()
        conn.execute(
            sync_targets.update()
            .where(*key)
            .values(
                check_result=result.value,
                checked_at=datetime.now(UTC),
                check_message=message,
                fingerprint=fingerprint,
            )
        )
    if not result.rejected:
        return False
    return before is None or before.check_result != result.value or before.fingerprint != fingerprint


def load_records(engine: Engine) -> dict[SyncTarget, TargetRecord]:
    """Every row of ``sync_targets``."""
    with engine.connect() as conn:
        rows = conn.execute(select(sync_targets)).all()
    return {
        SyncTarget(row.cloudagent_conn_id, row.campaign_name): TargetRecord(
            target=SyncTarget(row.cloudagent_conn_id, row.campaign_name),
            first_day=row.first_day,
            check_result=CheckResult(row.check_result) if row.check_result else None,
            checked_at=row.checked_at,
            check_message=row.check_message,
            fingerprint=row.fingerprint,
        )
        for row in rows
    }


def first_requested_days(engine: Engine) -> dict[SyncTarget, date]:
    """The IST day of each target's earliest export request (its window's start plus half a day: the day a
    nightly window belongs to)."""
    from cloudagent_etl.landing import first_window_starts

    return {
        SyncTarget(conn_id, campaign): _day_of(_as_utc(start) + timedelta(hours=12))
        for (conn_id, campaign), start in first_window_starts(engine).items()
    }


def _as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def coverage_starts(
    engine: Engine, sync_start: date | None = None
) -> tuple[dict[SyncTarget, date], dict[SyncTarget, TargetRecord]]:
    """The first day each known target is expected to be synced, and the ``sync_targets`` records.

    ``sync_start`` (the setting ``cloudagent_sync_start``) is the first day for every target; without it a
    target starts on the earlier of its recorded first day and its first request's day. A target that is
    neither recorded nor requested has no start: nothing of it is missing yet.
    """
    records = load_records(engine)
    if sync_start is not None:
        known = set(records) | set(first_requested_days(engine))
        return {target: sync_start for target in known}, records
    starts = {target: record.first_day for target, record in records.items()}
    for target, day in first_requested_days(engine).items():
        starts[target] = min(day, starts.get(target, day))
    return starts, records


def parse_sync_start(value: object, *, setting: str) -> date | None:
    """The setting ``cloudagent_sync_start`` (an ISO date, empty for the default); ``setting`` names it."""
    from cloudagent_etl.errors import ConfigurationError

    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ConfigurationError(
            f"{setting} must be an ISO date (YYYY-MM-DD), the first IST day to sync; got {value!r}"
        ) from None


def sync_start_from_env(env: Mapping[str, str]) -> date | None:
    """``CLOUDAGENT_SYNC_START``, or the Variable's environment form ``AIRFLOW_VAR_CLOUDAGENT_SYNC_START``."""
    for name in ("CLOUDAGENT_SYNC_START", "AIRFLOW_VAR_CLOUDAGENT_SYNC_START"):
        if env.get(name, "").strip():
            return parse_sync_start(env[name], setting=name)
    return None


def without_rejected(engine: Engine, accounts: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """``accounts`` less the campaigns CloudAgent rejected (an account left with none is left out), or a
    ConfigurationError naming every rejection when nothing is left to sync."""
    from cloudagent_etl.errors import ConfigurationError

    records = load_records(engine)
    kept: dict[str, list[str]] = {}
    refused: list[str] = []
    for conn_id, campaigns in accounts.items():
        for campaign in campaigns:
            record = records.get(SyncTarget(conn_id, campaign))
            if record is not None and record.rejected:
                refused.append(record.check_message or f"{SyncTarget(conn_id, campaign).describe()} rejected")
            else:
                kept.setdefault(conn_id, []).append(campaign)
    if not kept and refused:
        raise ConfigurationError("nothing to sync: " + "; ".join(refused))
    return kept
