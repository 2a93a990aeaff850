"""The simulator's callback deliveries (three styles, duplicates, late copies, retries) land exactly once."""

from __future__ import annotations

import json
from datetime import datetime
from urllib.parse import parse_qs

import httpx
import pytest
from sqlalchemy import Engine, select

from cloudagent_dev.landing import create_export_request, read_payload_body
from cloudagent_dev.processes import free_port
from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.landing import callback_payloads
from tests.fixtures.receiver import ReceiverHandle, StartReceiver
from tests.fixtures.simulator import SimulatorHandle
from tests.timing import wait_until


def request_export(
    simulator: SimulatorHandle, engine: Engine, campaign: str, base_url: str
) -> tuple[str, str]:
    """Create our request, ask the simulator for the export with its callback URL; (request_id, uniqueId)."""
    new = create_export_request(
        engine,
        account=simulator.user,
        campaign_name=campaign,
        window_start=datetime.fromisoformat("2026-01-01T00:00:00+05:30"),
        window_end=datetime.fromisoformat("2026-01-02T00:00:00+05:30"),
        filters={"sortby": "2"},
    )
    body = {
        "userName": simulator.user,
        "campaignName": campaign,
        "fromDate": "2026-01-01 00:00:00",
        "toDate": "2026-01-02 00:00:00",
        "callBackUrl": landing.callback_url(base_url, new.request_id, new.token),
        "sortby": "2",
        "status": "All",
        "dialstatus": "ALL",
        "dispositions": "ALL",
    }
    answer = httpx.post(
        simulator.endpoint_url, json=body, headers={"apiKey": simulator.api_key}, timeout=10
    ).json()
    assert answer["uniqueId"], answer
    landing.record_unique_id(engine, new.request_id, answer["uniqueId"])
    return new.request_id, answer["uniqueId"]


def records_in(body: bytes, content_type: str) -> list[dict[str, str]]:
    if content_type.startswith("application/x-www-form-urlencoded"):
        body = parse_qs(body.decode())["data"][0].encode()
    document = json.loads(body)
    return document["data"] if isinstance(document, dict) else document


def stored_for(engine: Engine, request_id: str) -> list[tuple[bytes, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                callback_payloads.c.payload_id,
                callback_payloads.c.content_type,
                callback_payloads.c.unique_id,
            ).where(callback_payloads.c.request_id == request_id)
        ).all()
        return [(read_payload_body(conn, row.payload_id), row.content_type, row.unique_id) for row in rows]


@pytest.mark.parametrize("style", ["json-array", "json-object", "form"])
def test_each_delivery_style_with_duplicates_lands_exactly_once(
    fresh_simulator: SimulatorHandle, receiver: ReceiverHandle, style: str
) -> None:
    fresh_simulator.configure(delivery=style, duplicate_deliveries=2, late_delay_s=0.3)
    engine = create_db_engine(receiver.db_url)
    request_id, unique_id = request_export(fresh_simulator, engine, "Alpha", receiver.base_url)
    attempts = fresh_simulator.wait_for_deliveries(unique_id, 4)
    assert all(attempt["status_code"] == 200 for attempt in attempts)
    [(body, content_type, carried_id)] = stored_for(engine, request_id)
    assert records_in(body, content_type) == fresh_simulator.ground_truth(unique_id)
    assert carried_id == (unique_id if style == "json-object" else None)
    request = landing.get_export_request(engine, request_id)
    assert request is not None
    assert request.state == "received"
    engine.dispose()


def test_deliveries_retried_until_the_receiver_is_up_land_once(
    fresh_simulator: SimulatorHandle, start_receiver: StartReceiver, sqlite_url: str
) -> None:
    # Attempts 0.5 s apart, doubling: 8 attempts keep trying for 63 s, longer than a receiver can take to
    # start on a busy machine (6 gave up after 15 s), and the last gap (32 s) is within the deadline.
    fresh_simulator.configure(delivery="json-object", delivery_backoff_s=0.5, delivery_attempts=8)
    port = free_port()
    engine = create_db_engine(sqlite_url)
    request_id, unique_id = request_export(fresh_simulator, engine, "Beta", f"http://127.0.0.1:{port}")
    wait_until(
        "the simulator tried to deliver",
        lambda: [d for d in fresh_simulator.deliveries() if d["unique_id"] == unique_id],
    )
    with start_receiver(sqlite_url, port=port):
        attempts = fresh_simulator.wait_for_deliveries(unique_id, 1)
    assert attempts[0]["status_code"] is None
    assert attempts[0]["error"]
    [(body, content_type, _)] = stored_for(engine, request_id)
    assert records_in(body, content_type) == fresh_simulator.ground_truth(unique_id)
    engine.dispose()
