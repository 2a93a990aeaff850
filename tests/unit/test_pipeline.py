"""The sync steps on real SQLite and PostgreSQL, with the CloudAgent API answered by httpx.MockTransport."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from cloudagent_etl import landing, pipeline, schema
from cloudagent_etl.errors import (
    ConfigurationError,
    InvalidApiKeyError,
    InvalidCampaignNameError,
    PayloadError,
    ValidationError,
)
from cloudagent_etl.settings import ApiSettings, Secret

API_KEY = "k3y-never-shown-0123456789"
CALLBACK_BASE = "http://127.0.0.1:9/hooks"
WINDOW = (datetime(2025, 6, 1, 22, 0, tzinfo=UTC), datetime(2025, 6, 2, 22, 0, tzinfo=UTC))
FILTERS = dict(pipeline.DEFAULT_FILTERS)


@pytest.fixture
def api_settings() -> ApiSettings:
    return ApiSettings(user_name="acme", api_key=Secret(API_KEY), base_url="http://cloudagent.test")


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
    assert pipeline.parse_campaigns(value) == expected


@pytest.mark.parametrize("value", [None, [], "", " , ", "[1, 2]", "[oops", 42])
def test_parse_campaigns_refuses_nothing_to_sync_and_non_text(value: object) -> None:
    with pytest.raises(ConfigurationError):
        pipeline.parse_campaigns(value)


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
    assert pipeline.export_filters({"status": "Fail", "dispositions": ""}) == {
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
        CALLBACK_BASE,
        "Sales",
        *WINDOW,
        FILTERS,
        dag_id="d",
        run_id="r",
        transport=transport,
    )

    row = landing.get_export_request(engine, request_id)
    assert (row.state, row.unique_id, row.campaign_name, row.dag_id, row.run_id) == (
        "requested",
        "U-1",
        "Sales",
        "d",
        "r",
    )
    assert (row.window_start, row.window_end) == WINDOW
    body = json.loads(seen[0].content)
    assert body["callBackUrl"].startswith(f"{CALLBACK_BASE}/callbacks/dial-status/{request_id}/")
    assert (body["campaignName"], body["fromDate"], body["toDate"]) == (
        "Sales",
        "2025-06-02 03:30:00",
        "2025-06-03 03:30:00",
    )
    with engine.connect() as conn:
        calls = conn.execute(select(schema.api_call_log.c.account)).scalars().all()
    assert calls == ["acme"]


def test_each_request_gets_its_own_row_and_callback_token(engine, api_settings) -> None:
    seen: list[httpx.Request] = []
    transport = answering({"status": "success", "uniqueId": "U-2"}, seen)
    first = pipeline.request_export(
        engine, api_settings, CALLBACK_BASE, "Sales", *WINDOW, FILTERS, transport=transport
    )
    second = pipeline.request_export(
        engine, api_settings, CALLBACK_BASE, "Sales", *WINDOW, FILTERS, transport=transport
    )
    urls = [json.loads(request.content)["callBackUrl"] for request in seen]
    assert first != second
    assert urls[0] != urls[1]


def test_a_terminal_api_error_fails_the_request_with_the_api_message(engine, api_settings) -> None:
    transport = answering({"status": "error", "message": "apiKey is invalid", "uniqueId": ""})

    with pytest.raises(InvalidApiKeyError, match="apiKey is invalid"):
        pipeline.request_export(
            engine, api_settings, CALLBACK_BASE, "Sales", *WINDOW, FILTERS, transport=transport
        )

    with engine.connect() as conn:
        row = conn.execute(select(schema.export_requests)).one()
    assert row.state == "failed"
    assert "apiKey is invalid" in row.error
    assert API_KEY not in row.error


def test_an_invalid_filter_fails_before_anything_is_sent(engine, api_settings) -> None:
    seen: list[httpx.Request] = []
    with pytest.raises(ValidationError, match="dialstatus"):
        pipeline.request_export(
            engine,
            api_settings,
            CALLBACK_BASE,
            "Sales",
            *WINDOW,
            {**FILTERS, "dialstatus": "maybe"},
            transport=answering({}, seen),
        )
    assert seen == []
    with engine.connect() as conn:
        assert conn.execute(select(schema.export_requests.c.state)).scalar_one() == "failed"


# ------------------------------------------------------------------------------------------ waiting
def _requested(engine, api_settings, campaign: str = "Sales", unique_id: str = "U-9") -> str:
    transport = answering({"status": "success", "uniqueId": unique_id})
    return pipeline.request_export(
        engine, api_settings, CALLBACK_BASE, campaign, *WINDOW, FILTERS, transport=transport
    )


def test_expire_request_marks_it_expired_with_a_message_naming_campaign_window_and_unique_id(
    engine, api_settings
) -> None:
    request_id = _requested(engine, api_settings)
    assert pipeline.callback_status(engine, request_id) == "requested"

    message = pipeline.expire_request(engine, request_id, waited_minutes=0.5)

    assert "'Sales'" in message
    assert WINDOW[0].isoformat() in message
    assert "uniqueId U-9" in message
    assert "request_export" in message  # says how to retry
    assert pipeline.callback_status(engine, request_id) == "expired"


def test_expire_request_leaves_a_request_whose_callback_landed(engine, api_settings) -> None:
    request_id = _requested(engine, api_settings)
    landing.store_callback(engine, request_id, landing.CallbackBody.from_bytes(b"[]"))

    assert pipeline.callback_status(engine, request_id) == "received"
    assert pipeline.expire_request(engine, request_id, waited_minutes=1) is None
    assert pipeline.callback_status(engine, request_id) == "received"


def test_callback_status_of_an_unknown_request_is_an_error(engine) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        pipeline.callback_status(engine, "00000000-0000-0000-0000-000000000000")


# ------------------------------------------------------------------------------------------ reprocess
def test_requests_to_reprocess_picks_landed_requests_overlapping_the_window(engine, api_settings) -> None:
    landed = _requested(engine, api_settings, "Sales")
    landing.store_callback(engine, landed, landing.CallbackBody.from_bytes(b"[]"))
    other_campaign = _requested(engine, api_settings, "Support")
    landing.store_callback(engine, other_campaign, landing.CallbackBody.from_bytes(b"[]"))
    _requested(engine, api_settings, "Sales")  # never called back: nothing to reprocess
    expired = _requested(engine, api_settings, "Sales")
    assert pipeline.expire_request(engine, expired, waited_minutes=60)
    late = landing.store_callback(engine, expired, landing.CallbackBody.from_bytes(b"[1]"))
    assert late.late  # the callback came after the wait gave up: stored, flagged, and reprocessable

    assert pipeline.requests_to_reprocess(engine, ["Sales"], *WINDOW) == [landed, expired]
    assert (
        pipeline.requests_to_reprocess(engine, ["Sales", "Support"], WINDOW[1], WINDOW[1] + timedelta(days=1))
        == []
    )
    assert set(
        pipeline.requests_to_reprocess(
            engine, ["Sales", "Support"], WINDOW[0] - timedelta(hours=1), WINDOW[0] + timedelta(hours=1)
        )
    ) == {landed, other_campaign, expired}


# ------------------------------------------------------------------------------------------ load
def test_load_request_fails_only_when_no_payload_could_be_parsed(engine, api_settings) -> None:
    record = {"CampaignName": "Sales", "DataUniqueId": "L1", "UpdatedDate": "2025-06-02 10:00:00"}
    partly = _requested(engine, api_settings)
    landing.store_callback(engine, partly, landing.CallbackBody.from_bytes(json.dumps([record]).encode()))
    landing.store_callback(engine, partly, landing.CallbackBody.from_bytes(b"[not json"))

    counts = pipeline.load_request(engine, partly, timezone="Asia/Kolkata")
    assert (counts["payloads"], counts["failed_payloads"], counts["inserted"]) == (2, 1, 1)
    assert landing.get_export_request(engine, partly).state == "loaded"

    broken = _requested(engine, api_settings, unique_id="U-10")
    landing.store_callback(engine, broken, landing.CallbackBody.from_bytes(b"[not json"))
    with pytest.raises(PayloadError, match="nothing could be loaded"):
        pipeline.load_request(engine, broken, timezone="Asia/Kolkata")
    assert landing.get_export_request(engine, broken).state == "failed"


# ------------------------------------------------------------------------------------------ quality
def test_quality_checks_list_every_campaign_that_did_not_load(engine, api_settings) -> None:
    failing = answering({"status": "error", "message": "campaignName is invalid", "uniqueId": ""})
    with pytest.raises(InvalidCampaignNameError):
        pipeline.request_export(
            engine,
            api_settings,
            CALLBACK_BASE,
            "Nope",
            *WINDOW,
            FILTERS,
            dag_id="d",
            run_id="r",
            transport=failing,
        )
    ok = answering({"status": "success", "uniqueId": "U-ok"})
    loaded = pipeline.request_export(
        engine, api_settings, CALLBACK_BASE, "Sales", *WINDOW, FILTERS, dag_id="d", run_id="r", transport=ok
    )
    landing.store_callback(engine, loaded, landing.CallbackBody.from_bytes(b"[]"))
    pipeline.load_request(engine, loaded, timezone="Asia/Kolkata")

    problems = pipeline.quality_checks(engine, campaigns=["Sales", "Nope", "Never"], dag_id="d", run_id="r")

    assert len(problems) == 2
    assert "'Nope'" in problems[0]
    assert "campaignName is invalid" in problems[0]
    assert "'Never'" in problems[1]
    assert "no export request" in problems[1]
    assert pipeline.quality_checks(engine, campaigns=["Sales"], dag_id="d", run_id="r") == []
