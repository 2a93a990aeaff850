"""The steps of one sync run as plain functions; the Airflow DAGs only call these.

One run covers one data interval; per campaign it does ``request_export`` -> wait until
``landing.callback_status`` says the callback landed (or ``expire_request``) -> ``load_request``; at the
end ``quality_checks`` looks at everything the run did. Keeping the steps here (not in the DAG files) lets
them be tested on real databases without Airflow, and keeps the DAG files thin.
"""

from __future__ import annotations

import logging
import time as clock_time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import Engine

from cloudagent_etl import landing
from cloudagent_etl.accounts import CAMPAIGNS_SETTINGS, SyncTarget, sync_targets
from cloudagent_etl.api import CloudAgentClient, RateLimiter
from cloudagent_etl.errors import ApiError, ConfigurationError, PayloadError, redact
from cloudagent_etl.exports import Export
from cloudagent_etl.settings import DEFAULT_CONNECTION, ApiSettings, LoadSettings, Secret, zone

if TYPE_CHECKING:
    from cloudagent_etl.normalize import SecretValues
    from cloudagent_etl.personal_data.phones import PseudonymKey
    from cloudagent_etl.warehouse import LoadCounts

log = logging.getLogger(__name__)

#: How long a wait for a callback lasts by default (the DAG's ``callback_timeout_minutes``).
DEFAULT_CALLBACK_TIMEOUT = timedelta(minutes=60)


#: The nightly schedule: each run exports the 24 h ending at 03:30 in CloudAgent's (India's) time zone.
NIGHTLY_CRON = "30 3 * * *"
NIGHTLY_TIMEZONE = "Asia/Kolkata"
#: When a nightly window starts and ends (the next day), in ``NIGHTLY_TIMEZONE``: the cron's time of day.
NIGHTLY_START = time(3, 30)


def last_complete_interval(now: datetime) -> tuple[datetime, datetime]:
    """The nightly data interval that ended last at ``now``: what a run without a logical date syncs
    (a manual or REST trigger with ``logical_date: null``)."""
    if now.tzinfo is None:
        raise ConfigurationError(f"now must be timezone-aware, got {now.isoformat()}")
    local = now.astimezone(ZoneInfo(NIGHTLY_TIMEZONE))
    end = local.replace(hour=NIGHTLY_START.hour, minute=NIGHTLY_START.minute, second=0, microsecond=0)
    if end > local:
        end -= timedelta(days=1)
    return end - timedelta(days=1), end


def export_window(
    data_interval_start: datetime | None,
    data_interval_end: datetime | None,
    lookback_minutes: float,
    *,
    timezone: str = NIGHTLY_TIMEZONE,
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """The window to export for a data interval: the interval, started ``lookback_minutes`` early, at the
    same local times in the account's ``timezone`` (the nightly schedule's times are IST; an account in
    another zone exports 03:30-to-03:30 of its own day).

    The overlap catches records whose updated date was written late; the idempotent merge makes the
    records seen twice harmless. A run without a data interval (no logical date) gets the last complete
    nightly interval at ``now``.
    """
    if data_interval_start is None and data_interval_end is None:
        data_interval_start, data_interval_end = last_complete_interval(now or datetime.now(UTC))
        log.info(
            "the run has no data interval (no logical date): exporting the last complete one, %s..%s",
            data_interval_start.isoformat(),
            data_interval_end.isoformat(),
        )
    if data_interval_start is None or data_interval_end is None:
        raise ConfigurationError("a data interval needs both its start and its end")
    for name, value in (
        ("data_interval_start", data_interval_start),
        ("data_interval_end", data_interval_end),
    ):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ConfigurationError(f"{name} must be timezone-aware, got {value.isoformat()}")
    if lookback_minutes < 0:
        raise ConfigurationError(f"lookback_minutes must not be negative, got {lookback_minutes}")
    if data_interval_end <= data_interval_start:
        raise ConfigurationError(
            f"the data interval is empty ({data_interval_start.isoformat()} .. "
            f"{data_interval_end.isoformat()}): the DAG needs a timetable with real data intervals"
        )
    start, end = (_same_local_time(moment, timezone) for moment in (data_interval_start, data_interval_end))
    return start - timedelta(minutes=lookback_minutes), end


def _same_local_time(moment: datetime, timezone: str) -> datetime:
    """The instant whose wall clock in ``timezone`` reads what ``moment``'s reads in the nightly zone."""
    if timezone == NIGHTLY_TIMEZONE:
        return moment
    return moment.astimezone(ZoneInfo(NIGHTLY_TIMEZONE)).replace(tzinfo=zone(timezone))


def plan_exports(
    accounts: Mapping[str, list[str]],
    timezones: Mapping[str, str],
    data_interval_start: datetime | None,
    data_interval_end: datetime | None,
    lookback_minutes: float,
) -> list[dict[str, str]]:
    """The exports of a run: every campaign of every account (the accounts taking turns, see
    :func:`accounts.sync_targets`), each with its account's window (``timezones``: connection id -> zone),
    as JSON-ready dicts for the run's mapped instances."""
    windows = {
        conn_id: export_window(
            data_interval_start, data_interval_end, lookback_minutes, timezone=timezones[conn_id]
        )
        for conn_id in accounts
    }
    return [
        {
            "conn_id": target.conn_id,
            "campaign": target.campaign,
            "label": target.label,
            "window_start": windows[target.conn_id][0].isoformat(),
            "window_end": windows[target.conn_id][1].isoformat(),
        }
        for target in sync_targets(accounts)
    ]


def targets_of(exports: Iterable[Mapping[str, str]]) -> list[SyncTarget]:
    """The campaigns of the accounts of a run's exports (as :func:`plan_exports` made them)."""
    return [SyncTarget(export["conn_id"], export["campaign"]) for export in exports]


def parse_window(window_start: object, window_end: object) -> tuple[datetime, datetime]:
    """A window from two ISO date-times with an offset (a zone-less time would be a guess)."""
    bounds = []
    for name, value in (("window_start", window_start), ("window_end", window_end)):
        if not isinstance(value, str) or not value:
            raise ConfigurationError(
                f"{name} is required (an ISO date-time with offset, e.g. 2025-06-01T00:00+05:30)"
            )
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigurationError(f"{name} is not an ISO date-time: {value!r}") from None
        if moment.tzinfo is None:
            raise ConfigurationError(f"{name} needs a UTC offset (e.g. +05:30): {value!r}")
        bounds.append(moment)
    if bounds[1] <= bounds[0]:
        raise ConfigurationError(f"window_end must be after window_start: {window_start} .. {window_end}")
    return bounds[0], bounds[1]


def request_export(
    engine: Engine,
    api_settings: ApiSettings,
    export: Export,
    *,
    callback_timeout: timedelta = DEFAULT_CALLBACK_TIMEOUT,
    dag_id: str | None = None,
    run_id: str | None = None,
    retry_of: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> str:
    """Ask CloudAgent for ``export``, unless an export of it is live; our request id.

    One live export per window (:func:`landing.claim_export`): a task retry, a cleared task or a
    concurrent run of the same window gets the request already on its way, with no API call. A new
    export gets its own row and callback token, and a deadline ``callback_timeout`` away. When the call
    fails the row is marked ``failed`` with the (redacted) reason and the error is re-raised for the caller
    to decide: terminal errors fail at once, transient ones retry (with a fresh export: the failed one is
    not live). ``retry_of`` names the expired or failed export this one re-requests.
    """
    if export.callback_base_url is None:
        raise ConfigurationError(f"the export of {export.describe()} has no callback base URL")
    claimed = landing.claim_export(
        engine, export, callback_timeout=callback_timeout, dag_id=dag_id, run_id=run_id, retry_of=retry_of
    )
    if claimed.new is None:
        log.info(
            "export of %s is live already: waiting for request_id=%s (no API call)",
            export.describe(),
            claimed.request_id,
        )
        return claimed.request_id
    new = claimed.new
    callback_url = landing.callback_url(export.callback_base_url, new.request_id, new.token)
    try:
        request = export.api_request(callback_url)
        limiter = RateLimiter(engine, api_settings.user_name, api_settings.rate_limit_per_minute)
        with CloudAgentClient(api_settings, limiter=limiter, transport=transport) as client:
            unique_id = client.request_export(request, purpose=f"{export.campaign_name} {new.request_id}")
    except ApiError as exc:
        named = exc.naming(export.conn_id or DEFAULT_CONNECTION, export.campaign_name, CAMPAIGNS_SETTINGS)
        landing.mark_failed(engine, new.request_id, f"{type(named).__name__}: {named}")
        _record_refusal(engine, export, api_settings, exc, str(named))
        raise named from None
    except Exception as exc:
        message = redact(
            f"{type(exc).__name__}: {exc}", [api_settings.api_key.get(), new.token.get()], limit=2000
        )
        landing.mark_failed(engine, new.request_id, message)
        raise
    landing.record_unique_id(engine, new.request_id, unique_id)
    log.info("export requested: %s uniqueId=%s request_id=%s", export.describe(), unique_id, new.request_id)
    return new.request_id


def _record_refusal(engine: Engine, export: Export, api: ApiSettings, error: ApiError, message: str) -> None:
    """CloudAgent refused the account or the campaign of an export: the target is rejected (shown so, and not
    offered for a backfill) until a check with a changed configuration passes."""
    from cloudagent_etl import identity, targets
    from cloudagent_etl.status import window_day

    result = targets.result_of(error)
    if result is None:
        return
    target = SyncTarget(export.conn_id or DEFAULT_CONNECTION, export.campaign_name)
    digest = targets.fingerprint(identity.probe_secret(engine), api, export.campaign_name)
    day = window_day(export.window_start, export.window_end, export.timezone)
    targets.record_check(engine, target, result, message=message, fingerprint=digest, day=day)


def re_request_export(
    engine: Engine,
    api_settings: ApiSettings,
    callback_base_url: str,
    expired_request_id: str,
    *,
    callback_timeout: timedelta = DEFAULT_CALLBACK_TIMEOUT,
    transport: httpx.BaseTransport | None = None,
) -> str:
    """Request the export of an expired (or failed) request again, through the shared limiter; the new id.

    The new export is the old one, answered to today's ``callback_base_url`` (a URL fixed since the
    first request takes effect).
    """
    expired = landing.require_export_request(engine, expired_request_id)
    log.warning(
        "no callback for %s: requesting its window again (attempt %d)",
        expired.describe(),
        expired.attempt + 1,
    )
    return request_export(
        engine,
        api_settings,
        replace(expired.export, callback_base_url=callback_base_url),
        callback_timeout=callback_timeout,
        dag_id=expired.dag_id,
        run_id=expired.run_id,
        retry_of=expired.request_id,
        transport=transport,
    )


def no_callback_advice(engine: Engine, request_id: str) -> str:
    """What to check when an export's callbacks never came: the URL CloudAgent was given, and the causes."""
    url = landing.shown_callback_url(landing.require_export_request(engine, request_id))
    return (
        f"CloudAgent was given the callback URL {url}. Likely causes: that URL is not reachable from the "
        "internet (the run's preflight and `cloudagent-etl doctor` check it from inside), the receiver "
        "refused or could not store the callback (see its logs), or CloudAgent did not run the export "
        "(ask Ozonetel, quoting the uniqueId). Waiting again cannot help: fix the cause, then clear the "
        "campaign's request_export"
    )


def expire_request(engine: Engine, request_id: str, waited_minutes: float) -> str | None:
    """Mark a request whose callback did not come ``expired``; return the message to fail with.

    Returns None when the callback landed after all (the wait raced its deadline): nothing to fail.
    """
    request = landing.require_export_request(engine, request_id)
    message = (
        f"no callback within {waited_minutes:g} minutes for {request.describe()} "
        f"(attempt {request.attempt}); the request is marked expired"
    )
    if landing.mark_expired(engine, request_id, message) is landing.CallbackStatus.LANDED:
        return None
    return message


def may_request_again(engine: Engine, request_id: str, *, re_requests: int) -> bool:
    """Whether an export may be requested again: it expired, and fewer than ``re_requests`` re-requests
    of its window were made (``attempt`` counts them). So a wait lasts ``(1 + re_requests) *
    callback_timeout`` at most, plus any limiter wait. A failed export failed for a reason that a new one
    would meet again: it is not requested again."""
    request = landing.require_export_request(engine, request_id)
    return request.is_expired and request.attempt <= re_requests


def load_payload(
    engine: Engine,
    payload_id: int,
    *,
    secrets: Iterable[str | None] = (),
    settings: LoadSettings | None = None,
    batch_size: int | None = None,
    pseudonym_key: PseudonymKey | None = None,
) -> LoadCounts:
    """Load one landed payload: landing hands out its body, the warehouse merges it, landing records the
    outcome, all in one transaction (the merged rows, the ``load_runs`` row, the payload and its request
    ``loaded``).

    A payload that cannot be parsed at all (``PayloadError``) rolls back whatever it merged, then records
    a ``failed`` load run with the reason and the payload as ``failed``: nothing raises for a bad payload.
    Any other error (the database, a bug) also rolls back and records a failed load run, then raises: the
    payload stays ``pending`` and the request ``received``, so a retry loads it. Every text that leaves the
    load is redacted with ``secrets`` (the configured apiKey) and the values found under API-key fields of
    the payload. Every row gets its number's pseudonym under ``pseudonym_key`` (default
    ``CLOUDAGENT_PSEUDONYM_KEY``: without a key nothing loads); a payload holding a person erased on request
    loads without them, and its raw body is rewritten without them in the same transaction.
    """
    # Imported here: they bring pandas, which the triggerer and the receiver never need.
    from cloudagent_etl import warehouse
    from cloudagent_etl.normalize import DEFAULT_BATCH_SIZE, SecretValues
    from cloudagent_etl.personal_data.phones import PseudonymKey, phone_region
    from cloudagent_etl.personal_data.records import record_pseudonym

    key = pseudonym_key or PseudonymKey.from_env()
    region = phone_region()
    secret_values = SecretValues(secrets)
    payload = landing.landed_payload(engine, payload_id)
    started = datetime.now(UTC)
    clock = clock_time.perf_counter()
    try:
        with landing.payload_body(engine, payload_id) as body, engine.begin() as conn:
            counts = warehouse.merge_payload(
                conn,
                payload,
                body,
                started=started,
                secrets=secret_values,
                settings=settings or LoadSettings(),
                pseudonym_key=key,
                phone_region=region,
                batch_size=batch_size or DEFAULT_BATCH_SIZE,
            )
            if counts.erased:
                suppressed = warehouse.suppressed_pseudonyms(conn)  # under the lock the merge holds
                removed = landing.remove_records(
                    conn,
                    payload_id,
                    lambda record: record_pseudonym(record, key, region) in suppressed,
                    why="erased on request: kept out by the load",
                    now=started,
                    dry_run=False,
                )
                warehouse.renumber_rejects(conn, payload_id, removed)
            landing.mark_payload_loaded(conn, payload)
    except PayloadError as exc:
        error = secret_values.redact(f"payload {payload_id}: {exc}")
        counts = warehouse.record_failed_load(
            engine, payload, error, started=started, seconds=clock_time.perf_counter() - clock
        )
        landing.mark_payload_failed(engine, payload_id)
    except Exception as exc:
        error = secret_values.redact(f"payload {payload_id}: {type(exc).__name__}: {exc}")
        try:
            warehouse.record_failed_load(
                engine, payload, error, started=started, seconds=clock_time.perf_counter() - clock
            )
        except Exception:  # the database itself is gone: the original error says more
            log.error("could not record the failed load of payload %s", payload_id)
        if _shows_secret(exc, secret_values):
            raise RuntimeError(error[: warehouse.load.MAX_ERROR_CHARS]) from None
        raise
    return counts


def _shows_secret(exc: BaseException, secrets: SecretValues) -> bool:
    """Whether the message of ``exc`` or of an exception it chains holds one of ``secrets``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if secrets.redact(str(current)) != str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def load_payloads(
    engine: Engine,
    request_id: str,
    *,
    secrets: Iterable[str | None] = (),
    settings: LoadSettings | None = None,
    pseudonym_key: PseudonymKey | None = None,
) -> LoadCounts:
    """Load every payload landed for the request, oldest first, each in its own transaction.

    The request becomes ``loaded`` with its first good payload; when every payload failed to parse it
    becomes ``failed`` with the reasons (unless it was loaded or expired) and the result carries ``error``.
    A payload that lands while this runs is loaded too: the payloads are listed again after each pass,
    and one stored after the request became ``loaded`` is at worst flagged late by the receiver.

    A payload whose raw body retention purged is not loaded (what it loaded stays); when every payload of
    the request was purged, :class:`RawDataPurged` says when and under which setting, and nothing changes.
    """
    from cloudagent_etl.warehouse import LoadCounts

    secrets = tuple(secrets)
    total = LoadCounts()
    seen: set[int] = set()
    purged: list[str] = []
    while pending := [p for p in landing.received_payload_ids(engine, request_id) if p not in seen]:
        for body in landing.purged_bodies(engine, pending):
            purged.append(body.describe())
            seen.add(body.payload_id)
        for payload_id in (p for p in pending if p not in seen):
            total += load_payload(
                engine, payload_id, secrets=secrets, settings=settings, pseudonym_key=pseudonym_key
            )
            seen.add(payload_id)
    if not seen:
        raise PayloadError(f"no callback payload has landed for request {request_id}")
    if purged and not total.payloads:
        raise RawDataPurged(f"{landing.describe_request(engine, request_id)}: " + "; ".join(purged))
    if purged:
        log.warning("not reloaded, the raw data being gone: %s", "; ".join(purged))
    if total.failed_payloads == total.payloads:
        landing.mark_load_failed(engine, request_id, total.error or "no payload could be parsed")
    return total


class RawDataPurged(PayloadError):
    """A reload found no raw data left: retention purged it (the message says when, under which setting)."""


def load_request(
    engine: Engine,
    request_id: str,
    *,
    api_key: Secret | None = None,
    pseudonym_key: PseudonymKey | None = None,
) -> dict[str, Any]:
    """Normalize and merge every payload landed for the request; return the counts for the task log.

    Everything the load needs (the payloads, the export's time zone and campaign) is in the database;
    ``api_key`` (the account's, from the API connection) is redacted wherever a payload carries it. The
    bounds of record times come from :meth:`LoadSettings.from_env`.
    """
    secrets = [api_key.get()] if api_key else []
    result = load_payloads(
        engine, request_id, secrets=secrets, settings=LoadSettings.from_env(), pseudonym_key=pseudonym_key
    )
    counts = asdict(result)
    counts.pop("last_loaded_at")
    if result.failed_payloads == result.payloads:
        raise PayloadError(
            f"nothing could be loaded for {landing.describe_request(engine, request_id)}: {result.error}"
        )
    if result.failed_payloads:
        log.warning(
            "%s of %s payloads could not be parsed (see load_runs): %s",
            result.failed_payloads,
            result.payloads,
            result.error,
        )
    log.info("loaded %s: %s", landing.describe_request(engine, request_id), counts)
    return counts


@dataclass
class SweepReport:
    """What a sweep did: requests expired past their deadline, and loads of payloads left behind."""

    expired: list[str] = field(default_factory=list)
    loaded: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        loaded_rows = sum(counts["rows_in"] for counts in self.loaded.values())
        return (
            f"sweep: {len(self.expired)} overdue requests expired, {len(self.loaded)} requests with "
            f"left-behind payloads loaded ({loaded_rows} records), {len(self.failed)} could not be loaded"
        )


def sweep(
    engine: Engine,
    *,
    api_key_of: Callable[[str], Secret | None] = lambda _conn_id: None,
    pseudonym_key: PseudonymKey | None = None,
) -> SweepReport:
    """Leave nothing ``requested`` or ``received`` forever: run at the start of each run and on demand.

    Requests still waiting past their callback deadline (their wait died with its worker, or the run was
    marked failed) become ``expired``; payloads that landed but that no load will take (late callbacks,
    a load that died) are loaded, the apiKey of each request's account (``api_key_of`` its connection id)
    redacted wherever they carry it, as in any load.
    """
    report = SweepReport(expired=landing.expire_overdue(engine))
    for request_id in landing.requests_with_unloaded_payloads(engine):
        try:
            api_key = api_key_of(landing.require_export_request(engine, request_id).conn_id)
            report.loaded[request_id] = load_request(
                engine, request_id, api_key=api_key, pseudonym_key=pseudonym_key
            )
        except PayloadError as exc:
            report.failed[request_id] = str(exc)
    log.info("%s", report.summary())
    return report


def quality_checks(engine: Engine, *, targets: Iterable[SyncTarget], dag_id: str, run_id: str) -> list[str]:
    """Problems found after a run's loads; an empty list means the run is good.

    Every campaign of every account must have its latest request of this run ``loaded`` (anything else,
    including a campaign that never got a request, is listed with its error and its account's connection),
    and the warehouse rows of these campaigns must have no duplicate and no empty keys.
    """
    targets = list(targets)
    problems: list[str] = []
    latest = landing.latest_requests_of_run(engine, dag_id, run_id)
    left_behind = landing.unloaded_payload_counts(engine, [request.request_id for request in latest.values()])
    for target in targets:
        request = latest.get((target.conn_id, target.campaign))
        name = target.describe()
        if request is None:
            problems.append(f"{name}: no export request was made in this run")
        elif not request.is_loaded:
            problems.append(
                f"{name}: request {request.request_id} is {request.state.value}"
                + (f": {request.error}" if request.error else "")
            )
        elif left_behind.get(request.request_id):
            problems.append(
                f"{name}: request {request.request_id} is loaded but "
                f"{left_behind[request.request_id]} of its payloads landed after the load and are not loaded"
            )
    from cloudagent_etl.warehouse import key_problems

    problems.extend(key_problems(engine, sorted({target.campaign for target in targets})))
    return problems
