"""The sync steps on real SQLite and PostgreSQL, with the CloudAgent API answered by httpx.MockTransport."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from cloudagent_etl import landing, pipeline
from cloudagent_etl.accounts import SyncTarget, parse_campaigns
from cloudagent_etl.api.limiter import api_call_log
from cloudagent_etl.api.request import ExportFilters
from cloudagent_etl.errors import (
    ConfigurationError,
    InvalidApiKeyError,
    InvalidCampaignNameError,
    PayloadError,
    ValidationError,
)
from cloudagent_etl.exports import Export
from cloudagent_etl.landing import CallbackStatus, RequestState, export_requests
from cloudagent_etl.settings import DEFAULT_CONNECTION, ApiSettings, Secret
from tests.factories import land

API_KEY = "k3y-never-shown-0123456789"
CALLBACK_BASE = "http://127.0.0.1:9/hooks"
WINDOW = (datetime(2025, 6, 1, 22, 0, tzinfo=UTC), datetime(2025, 6, 2, 22, 0, tzinfo=UTC))
FILTERS = ExportFilters()


def targets(*campaigns: str) -> list[SyncTarget]:
    """The campaigns of the one account of these tests."""
    return [SyncTarget(DEFAULT_CONNECTION, campaign) for campaign in campaigns]


def export_of(campaign: str, filters: ExportFilters = FILTERS) -> Export:
    """The export of ``campaign``'s test window for the account of :func:`api_settings`."""
    return Export("acme", campaign, *WINDOW, filters, "Asia/Kolkata", CALLBACK_BASE)


@pytest.fixture
def api_settings() -> ApiSettings:
    return ApiSettings(
        user_name="acme", api_key=Secret(API_KEY), base_url="http://cloudagent.test", timezone="Asia/Kolkata"
    )


def answering(body: dict, seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(200, json=body)

    return httpx.MockTransport(handle)


# ------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["A", "B"], ["A", "B"]),
        ('["A", " B ", "A"]', ["A", "B"]),
        ("A, B,,C", ["A", "B", "C"]),
        (("Sales",), ["Sales"]),
    ],
)
def test_parse_campaigns_accepts_lists_json_and_commas(value: object, expected: list[str]) -> None:
    assert parse_campaigns(value) == expected


@pytest.mark.parametrize("value", [None, [], "", " , ", "[1, 2]", "[oops", 42])
def test_parse_campaigns_refuses_nothing_to_sync_and_non_text(value: object) -> None:
    with pytest.raises(ConfigurationError):
        parse_campaigns(value)


def test_export_window_starts_lookback_minutes_early() -> None:
    start, end = WINDOW
    assert pipeline.export_window(start, end, 15) == (start - timedelta(minutes=15), end)


@pytest.mark.parametrize(
    ("start", "end", "lookback"),
    [
        (WINDOW[0], WINDOW[0], 15),  # the zero-length interval a plain "@daily" gives in Airflow 3
        (WINDOW[0].replace(tzinfo=None), WINDOW[1], 15),
        (WINDOW[0], WINDOW[1], -1),
    ],
)
def test_export_window_refuses_empty_naive_or_negative(
    start: datetime, end: datetime, lookback: float
) -> None:
    with pytest.raises(ConfigurationError):
        pipeline.export_window(start, end, lookback)


def test_parse_window_needs_offsets_and_order() -> None:
    start, end = pipeline.parse_window("2025-06-01T00:00:00+05:30", "2025-06-02T00:00:00+05:30")
    assert end - start == timedelta(days=1)
    assert start.utcoffset() == timedelta(hours=5, minutes=30)
    for bad in (
        ("2025-06-01T00:00:00", "2025-06-02T00:00:00+05:30"),
        ("2025-06-02T00:00Z", "2025-06-01T00:00Z"),
    ):
        with pytest.raises(ConfigurationError):
            pipeline.parse_window(*bad)


def test_export_filters_default_each_missing_param() -> None:
    assert ExportFilters.from_params(
        {"status": "Fail", "dispositions": "", "campaigns": ["A"]}
    ).as_dict() == {
        "sortby": "2",
        "status": "Fail",
        "dialstatus": "ALL",
        "dispositions": "ALL",
    }


# ------------------------------------------------------------------------------------------ requests
def test_request_export_records_the_unique_id_and_goes_through_the_limiter(engine, api_settings) -> None:
    seen: list[httpx.Request] = []
    transport = answering({"status": "queued", "message": "ok", "uniqueId": "U-1"}, seen)

    request_id = pipeline.request_export(
        engine,
        api_settings,
        export_of("Sales"),
        dag_id="d",
        run_id="r",
        transport=transport,
    )

    row = landing.require_export_request(engine, request_id)
    assert (row.state, row.unique_id, row.campaign_name, row.dag_id, row.run_id) == (
        RequestState.REQUESTED,
        "U-1",
        "Sales",
        "d",
        "r",
    )
    assert (row.window_start, row.window_end) == WINDOW
    assert (row.filters, row.timezone, row.callback_base_url) == (
        FILTERS.as_dict(),
        "Asia/Kolkata",
        CALLBACK_BASE,
    )
    assert row.export == export_of("Sales")
    body = json.loads(seen[0].content)
    assert body["callBackUrl"].startswith(f"{CALLBACK_BASE}/callbacks/dial-status/{request_id}/")
    assert (body["campaignName"], body["fromDate"], body["toDate"]) == (
        "Sales",
        "2025-06-02 03:30:00",
        "2025-06-03 03:30:00",
    )
    with engine.connect() as conn:
        calls = conn.execute(select(api_call_log.c.account)).scalars().all()
    assert calls == ["acme"]


def test_a_live_export_is_reused_and_a_settled_one_is_not(engine, api_settings) -> None:
    """A task retry or a cleared task while the export is on its way spends no API call."""
    seen: list[httpx.Request] = []
    transport = answering({"status": "success", "uniqueId": "U-2"}, seen)
    first = pipeline.request_export(engine, api_settings, export_of("Sales"), transport=transport)
    retried = pipeline.request_export(engine, api_settings, export_of("Sales"), transport=transport)
    land(engine, first, b"[]")
    while_received = pipeline.request_export(engine, api_settings, export_of("Sales"), transport=transport)
    assert first == retried == while_received
    assert len(seen) == 1

    pipeline.load_request(engine, first)
    after_the_load = pipeline.request_export(engine, api_settings, export_of("Sales"), transport=transport)
    other_filters = pipeline.request_export(
        engine,
        api_settings,
        export_of("Sales", ExportFilters(status="Fail")),
        transport=transport,
    )
    assert len({first, after_the_load, other_filters}) == 3
    urls = [json.loads(request.content)["callBackUrl"] for request in seen]
    assert len(set(urls)) == len(urls) == 3, "each new export has its own callback URL and token"


def test_an_export_past_its_deadline_is_not_reused_and_the_new_one_says_why(engine, api_settings) -> None:
    seen: list[httpx.Request] = []
    transport = answering({"status": "success", "uniqueId": "U-3"}, seen)
    gone = pipeline.request_export(
        engine, api_settings, export_of("Sales"),
        callback_timeout=timedelta(0), transport=transport,
    )  # fmt: skip
    fresh = pipeline.request_export(engine, api_settings, export_of("Sales"), transport=transport)
    assert fresh != gone
    assert len(seen) == 2
    assert landing.require_export_request(engine, gone).state is RequestState.EXPIRED
    assert (
        landing.require_export_request(engine, fresh).reason
        == f"re-request after {gone} passed its callback deadline"
    )


def test_a_terminal_api_error_fails_the_request_with_the_api_message(engine, api_settings) -> None:
    transport = answering({"status": "error", "message": "apiKey is invalid", "uniqueId": ""})

    with pytest.raises(InvalidApiKeyError, match="apiKey is invalid"):
        pipeline.request_export(engine, api_settings, export_of("Sales"), transport=transport)

    with engine.connect() as conn:
        row = conn.execute(select(export_requests)).one()
    assert row.state == "failed"
    assert "apiKey is invalid" in row.error
    assert API_KEY not in row.error


def test_an_invalid_filter_fails_before_anything_is_sent_or_stored(engine, api_settings) -> None:
    seen: list[httpx.Request] = []
    with pytest.raises(ValidationError, match="dialstatus"):
        pipeline.request_export(
            engine,
            api_settings,
            export_of("Sales", ExportFilters.from_params({"dialstatus": "maybe"})),
            transport=answering({}, seen),
        )
    assert seen == []
    with engine.connect() as conn:
        assert conn.execute(select(export_requests.c.state)).all() == []


# ------------------------------------------------------------------------------------------ waiting
def _requested(engine, api_settings, campaign: str = "Sales", unique_id: str = "U-9") -> str:
    transport = answering({"status": "success", "uniqueId": unique_id})
    export = Export.of(api_settings, campaign, WINDOW, FILTERS, CALLBACK_BASE)
    return pipeline.request_export(engine, api_settings, export, transport=transport)


def test_expire_request_marks_it_expired_with_a_message_naming_campaign_window_and_unique_id(
    engine, api_settings
) -> None:
    request_id = _requested(engine, api_settings)
    assert landing.callback_status(engine, request_id) is CallbackStatus.WAITING

    message = pipeline.expire_request(engine, request_id, waited_minutes=0.5)

    assert "'Sales'" in message
    assert WINDOW[0].isoformat() in message
    assert "uniqueId U-9" in message
    assert "attempt 1" in message
    request = landing.require_export_request(engine, request_id)
    assert (request.state, request.error) == (RequestState.EXPIRED, message)


def test_expire_request_leaves_a_request_whose_callback_landed(engine, api_settings) -> None:
    request_id = _requested(engine, api_settings)
    land(engine, request_id, b"[]")

    assert pipeline.expire_request(engine, request_id, waited_minutes=1) is None
    assert landing.require_export_request(engine, request_id).state is RequestState.RECEIVED


def test_expire_request_of_an_unknown_request_is_an_error(engine) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        pipeline.expire_request(engine, "00000000-0000-0000-0000-000000000000", waited_minutes=1)


# ------------------------------------------------------------------------------------------ load
def test_load_request_fails_only_when_no_payload_could_be_parsed(engine, api_settings) -> None:
    record = {"CampaignName": "Sales", "DataUniqueId": "L1", "UpdatedDate": "2025-06-02 10:00:00"}
    partly = _requested(engine, api_settings)
    land(engine, partly, [record])
    land(engine, partly, b"[not json")

    counts = pipeline.load_request(engine, partly)
    assert (counts["payloads"], counts["failed_payloads"], counts["inserted"]) == (2, 1, 1)
    assert landing.require_export_request(engine, partly).state is RequestState.LOADED

    broken = _requested(engine, api_settings, unique_id="U-10")
    land(engine, broken, b"[not json")
    with pytest.raises(PayloadError, match="nothing could be loaded"):
        pipeline.load_request(engine, broken)
    assert landing.require_export_request(engine, broken).state is RequestState.FAILED


def test_load_request_reads_times_in_the_time_zone_recorded_on_the_request(engine, api_settings) -> None:
    """The load needs only the database: the export's time zone travels with the request."""
    from cloudagent_etl.warehouse.tables import dial_status

    dubai = ApiSettings(
        user_name="acme", api_key=Secret(API_KEY), base_url="http://cloudagent.test", timezone="Asia/Dubai"
    )
    request_id = _requested(engine, dubai)
    land(
        engine,
        request_id,
        [{"CampaignName": "Sales", "DataUniqueId": "L1", "UpdatedDate": "2025-06-02 10:00:00"}],
    )

    pipeline.load_request(engine, request_id)

    with engine.connect() as conn:
        updated_at = conn.execute(select(dial_status.c.updated_at)).scalar_one()
    assert updated_at == datetime(2025, 6, 2, 6, 0, tzinfo=UTC)  # 10:00 in Dubai (UTC+4)


# ------------------------------------------------------------------------------------------ quality
def test_quality_checks_list_every_campaign_that_did_not_load(engine, api_settings) -> None:
    failing = answering({"status": "error", "message": "campaignName is invalid", "uniqueId": ""})
    with pytest.raises(InvalidCampaignNameError):
        pipeline.request_export(
            engine,
            api_settings,
            export_of("Nope"),
            dag_id="d",
            run_id="r",
            transport=failing,
        )
    ok = answering({"status": "success", "uniqueId": "U-ok"})
    loaded = pipeline.request_export(
        engine, api_settings, export_of("Sales"), dag_id="d", run_id="r", transport=ok
    )
    land(engine, loaded, b"[]")
    pipeline.load_request(engine, loaded)

    problems = pipeline.quality_checks(
        engine, targets=targets("Sales", "Nope", "Never"), dag_id="d", run_id="r"
    )

    assert len(problems) == 2
    assert "campaign 'Nope' of connection cloudagent_default" in problems[0]
    assert "campaignName is invalid" in problems[0]
    assert "'Never'" in problems[1]
    assert "no export request" in problems[1]
    assert pipeline.quality_checks(engine, targets=targets("Sales"), dag_id="d", run_id="r") == []


# ------------------------------------------------------------------------------------------ sweep
def test_sweep_expires_an_export_whose_wait_died_and_loads_what_was_left_behind(engine, api_settings) -> None:
    ok = answering({"status": "success", "uniqueId": "U-s"})
    record = {"CampaignName": "Sales", "DataUniqueId": "L1", "UpdatedDate": "2025-06-02 10:00:00"}
    # the worker running this wait was killed: the export stays requested past its deadline
    killed = pipeline.request_export(
        engine,
        api_settings,
        export_of("Sales"),
        callback_timeout=timedelta(0),
        transport=ok,
    )
    # its callback landed but the load never ran (the run was marked failed)
    abandoned = pipeline.request_export(
        engine,
        api_settings,
        export_of("Support"),
        callback_timeout=timedelta(0),
        transport=ok,
    )
    land(engine, abandoned, [{**record, "CampaignName": "Support"}])
    # loaded, then a late callback
    loaded = pipeline.request_export(engine, api_settings, export_of("Renewals"), transport=ok)
    land(engine, loaded, [])
    pipeline.load_request(engine, loaded)
    land(engine, loaded, [{**record, "CampaignName": "Renewals"}])
    # still on its way: left alone
    waiting = pipeline.request_export(engine, api_settings, export_of("Leads"), transport=ok)

    report = pipeline.sweep(engine)

    assert report.expired == [killed]
    assert set(report.loaded) == {abandoned, loaded}
    assert report.failed == {}
    states = {
        rid: landing.require_export_request(engine, rid) for rid in (killed, abandoned, loaded, waiting)
    }
    assert states[killed].state is RequestState.EXPIRED
    assert "expired by a sweep" in (states[killed].error or "")
    assert states[abandoned].state is RequestState.LOADED
    assert states[waiting].state is RequestState.REQUESTED
    assert landing.unloaded_payload_counts(engine, [abandoned, loaded]) == {}
    again = pipeline.sweep(engine)
    assert (again.expired, again.loaded, again.failed) == ([], {}, {})


def test_quality_checks_fail_a_loaded_request_with_payloads_that_landed_after_its_load(
    engine, api_settings
) -> None:
    ok = answering({"status": "success", "uniqueId": "U-q"})
    request_id = pipeline.request_export(
        engine, api_settings, export_of("Sales"), dag_id="d", run_id="r", transport=ok
    )
    land(engine, request_id, [])
    pipeline.load_request(engine, request_id)
    assert pipeline.quality_checks(engine, targets=targets("Sales"), dag_id="d", run_id="r") == []
    land(engine, request_id, b"[1]")  # part 2 of 2, after the load

    [problem] = pipeline.quality_checks(engine, targets=targets("Sales"), dag_id="d", run_id="r")

    assert "1 of its payloads landed after the load" in problem


def test_a_run_reusing_another_runs_live_export_is_checked_on_that_export(engine, api_settings) -> None:
    seen: list[httpx.Request] = []
    ok = answering({"status": "success", "uniqueId": "U-r"}, seen)
    first = pipeline.request_export(
        engine,
        api_settings,
        export_of("Sales"),
        dag_id="d",
        run_id="scheduled",
        transport=ok,
    )
    reused = pipeline.request_export(
        engine,
        api_settings,
        export_of("Sales"),
        dag_id="d",
        run_id="manual",
        transport=ok,
    )
    assert (reused, len(seen)) == (first, 1)
    land(engine, first, [])
    pipeline.load_request(engine, first)

    assert pipeline.quality_checks(engine, targets=targets("Sales"), dag_id="d", run_id="manual") == []


@pytest.mark.parametrize(
    ("now", "interval"),
    [
        # 03:30 IST is 22:00 UTC the day before.
        ("2026-12-01T22:00:00+00:00", ("2026-11-30T22:00:00+00:00", "2026-12-01T22:00:00+00:00")),
        ("2026-12-01T21:59:59+00:00", ("2026-11-29T22:00:00+00:00", "2026-11-30T22:00:00+00:00")),
        ("2026-12-02T10:00:00+05:30", ("2026-11-30T22:00:00+00:00", "2026-12-01T22:00:00+00:00")),
    ],
)
def test_a_run_without_a_logical_date_exports_the_last_complete_nightly_interval(now, interval) -> None:
    start, end = (datetime.fromisoformat(value) for value in interval)
    assert pipeline.last_complete_interval(datetime.fromisoformat(now)) == (start, end)
    assert pipeline.export_window(None, None, 15, now=datetime.fromisoformat(now)) == (
        start - timedelta(minutes=15),
        end,
    )
    with pytest.raises(ConfigurationError, match="both its start and its end"):
        pipeline.export_window(start, None, 15)
