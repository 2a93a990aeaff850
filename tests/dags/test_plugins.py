"""The Airflow adapters: hooks read connections from AIRFLOW_CONN_* (as deployments set them), the trigger."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest

from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine

API_CONN = json.dumps(
    {
        "conn_type": "cloudagent",
        "host": "http://127.0.0.1:8765/",
        "login": "acme",
        "password": "s3cret-api-key",
        "extra": {"timezone": "Asia/Kolkata", "rate_limit_per_minute": 5, "not_allowed": "ignored"},
    }
)


def test_cloudagent_hook_reads_the_connection_and_only_allowed_extras(monkeypatch) -> None:
    from cloudagent_airflow.hooks import CloudAgentHook

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DEFAULT", API_CONN)
    settings = CloudAgentHook().get_settings()
    assert (settings.base_url, settings.user_name, settings.api_key.get()) == (
        "http://127.0.0.1:8765",
        "acme",
        "s3cret-api-key",
    )
    assert settings.rate_limit_per_minute == 5
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("conn_uri", "expected"),
    [
        ("sqlite:////abs/dir/cloudagent.db", "sqlite:////abs/dir/cloudagent.db"),
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        (
            "postgresql://etl:p%40ss%2Fword@db.internal:5433/warehouse?sslmode=require&other=x",
            "postgresql+psycopg://etl:p%40ss%2Fword@db.internal:5433/warehouse?sslmode=require",
        ),
        ("postgres://etl@db/warehouse", "postgresql+psycopg://etl@db/warehouse"),
    ],
)
def test_db_hook_turns_the_connection_uri_back_into_a_sqlalchemy_url(monkeypatch, conn_uri, expected) -> None:
    from sqlalchemy.engine import make_url

    from cloudagent_airflow.hooks import CloudAgentDbHook

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", conn_uri)
    url = CloudAgentDbHook().get_uri()
    assert url == expected
    if url.startswith("postgresql"):
        assert make_url(url).password in (None, "p@ss/word")


def test_db_hook_opens_the_database_it_names(monkeypatch, db_url) -> None:
    from cloudagent_airflow.hooks import CloudAgentDbHook

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", db_url.replace("postgresql+psycopg://", "postgresql://"))
    with CloudAgentDbHook().engine() as engine, engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM export_requests").scalar_one() == 0


def test_trigger_serializes_to_plain_json_without_the_database_url() -> None:
    from cloudagent_airflow.triggers import CallbackArrivedTrigger

    trigger = CallbackArrivedTrigger(request_id="r-1", deadline=123.5, poll_interval_s=2)
    classpath, kwargs = trigger.serialize()
    assert classpath == "cloudagent_airflow.triggers.CallbackArrivedTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert CallbackArrivedTrigger(**kwargs).serialize() == (classpath, kwargs)


def _new_request(engine) -> str:
    window = (datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 2, tzinfo=UTC))
    new = landing.create_export_request(
        engine,
        account="acme",
        campaign_name="Sales",
        window_start=window[0],
        window_end=window[1],
        filters={},
    )
    return new.request_id


async def _first_event(trigger):
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


def test_trigger_fires_once_the_callback_lands(monkeypatch, db_url) -> None:
    from cloudagent_airflow.triggers import CallbackArrivedTrigger

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", db_url.replace("postgresql+psycopg://", "postgresql://"))
    engine = create_db_engine(db_url)
    request_id = _new_request(engine)
    trigger = CallbackArrivedTrigger(request_id=request_id, deadline=time.time() + 30, poll_interval_s=0.05)

    async def land_later_and_wait():
        waiting = asyncio.ensure_future(_first_event(trigger))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await asyncio.to_thread(
            landing.store_callback, engine, request_id, landing.CallbackBody.from_bytes(b"[]")
        )
        return await asyncio.wait_for(waiting, 10)

    assert asyncio.run(land_later_and_wait()) == {"request_id": request_id, "status": "received"}
    engine.dispose()


def test_trigger_times_out_at_its_deadline(monkeypatch, db_url) -> None:
    from cloudagent_airflow.triggers import CallbackArrivedTrigger

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", db_url.replace("postgresql+psycopg://", "postgresql://"))
    engine = create_db_engine(db_url)
    request_id = _new_request(engine)
    started = time.monotonic()
    trigger = CallbackArrivedTrigger(request_id=request_id, deadline=time.time() + 0.5, poll_interval_s=10)

    assert asyncio.run(_first_event(trigger)) == {"request_id": request_id, "status": "timeout"}
    assert 0.4 < time.monotonic() - started < 5
    engine.dispose()
