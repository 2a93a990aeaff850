"""The deferrable wait's trigger: plain-JSON serialization, fires when the callback lands, times out."""

from __future__ import annotations

import asyncio
import json
import time

from cloudagent_dev.databases import connection_uri
from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine
from tests.factories import land, new_request
from tests.timing import DEADLINE_S


def test_trigger_serializes_to_plain_json_without_the_database_url() -> None:
    from cloudagent_airflow.triggers import CallbackArrivedTrigger

    trigger = CallbackArrivedTrigger(request_id="r-1", deadline=123.5, poll_interval_s=2)
    classpath, kwargs = trigger.serialize()
    assert classpath == "cloudagent_airflow.triggers.CallbackArrivedTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert CallbackArrivedTrigger(**kwargs).serialize() == (classpath, kwargs)


async def _first_event(trigger):
    """The trigger's first event; the trigger is then closed, as the triggerer does (its engine disposed)."""
    events = trigger.run()
    try:
        async for event in events:
            return event.payload
    finally:
        await events.aclose()
    raise AssertionError("the trigger ended without an event")


def test_trigger_fires_once_the_callback_lands(monkeypatch, db_url) -> None:
    from cloudagent_airflow.triggers import CallbackArrivedTrigger

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", connection_uri(db_url))
    engine = create_db_engine(db_url)
    request_id = new_request(engine).request_id
    trigger = CallbackArrivedTrigger(request_id=request_id, deadline=time.time() + 30, poll_interval_s=0.05)

    async def land_later_and_wait():
        waiting = asyncio.ensure_future(_first_event(trigger))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await asyncio.to_thread(land, engine, request_id, b"[]")
        return await asyncio.wait_for(waiting, DEADLINE_S)

    assert asyncio.run(land_later_and_wait()) == {"request_id": request_id, "status": "received"}
    engine.dispose()


def test_trigger_times_out_at_its_deadline(monkeypatch, db_url) -> None:
    from cloudagent_airflow.triggers import CallbackArrivedTrigger

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", connection_uri(db_url))
    engine = create_db_engine(db_url)
    request_id = new_request(engine).request_id
    started = time.monotonic()
    trigger = CallbackArrivedTrigger(request_id=request_id, deadline=time.time() + 0.5, poll_interval_s=10)

    assert asyncio.run(_first_event(trigger)) == {"request_id": request_id, "status": "timeout"}
    assert 0.4 < time.monotonic() - started < 5
    engine.dispose()


def test_trigger_reports_a_request_that_someone_else_failed_or_expired(monkeypatch, db_url) -> None:
    from cloudagent_airflow.triggers import CallbackArrivedTrigger

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", connection_uri(db_url))
    engine = create_db_engine(db_url)
    request_id = new_request(engine).request_id
    landing.mark_expired(engine, request_id, "expired by a sweep")
    trigger = CallbackArrivedTrigger(request_id=request_id, deadline=time.time() + 30, poll_interval_s=0.05)

    event = asyncio.run(_first_event(trigger))

    assert (event["status"], event["request_id"]) == ("error", request_id)
    assert "failed or expired" in event["message"]
    engine.dispose()
