"""The wait operator: done at once when the callback already landed, defers otherwise, and fails clearly."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from cloudagent_dev.localstack import connection_uri
from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine
from tests.factories import WINDOW, land, new_request


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch, db_url: str) -> Iterator[Engine]:
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", connection_uri(db_url))
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


def wait_for(request_id: str, timeout_minutes: float = 2):
    from cloudagent_airflow.operators import WaitForCallbackOperator

    return WaitForCallbackOperator(
        task_id="wait_for_callback", request_id=request_id, timeout_minutes=timeout_minutes
    )


def test_a_callback_that_already_landed_needs_no_wait(db: Engine) -> None:
    request_id = new_request(db).request_id
    land(db, request_id, b"[]")
    assert wait_for(request_id).execute(context={}) == request_id


def test_a_missing_callback_defers_to_the_trigger_with_a_fixed_deadline(db: Engine) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    request_id = new_request(db).request_id
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        wait_for(request_id, timeout_minutes=2).execute(context={})
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == "cloudagent_airflow.triggers.CallbackArrivedTrigger"
    assert kwargs["request_id"] == request_id
    assert before + 120 <= kwargs["deadline"] <= time.time() + 120
    assert deferred.value.method_name == "execute_complete"


def test_a_request_that_already_failed_fails_the_wait_at_once(db: Engine) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    request_id = new_request(db).request_id
    landing.mark_failed(db, request_id, "AuthenticationFailedError")
    with pytest.raises(AirflowFailException, match="failed or expired before the wait began"):
        wait_for(request_id).execute(context={})


def test_a_timeout_expires_the_request_and_fails_naming_campaign_window_and_unique_id(db: Engine) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    request_id = new_request(db, "Sales", unique_id="U-77").request_id
    with pytest.raises(AirflowFailException) as failed:
        wait_for(request_id).execute_complete({}, {"status": "timeout", "request_id": request_id})
    message = str(failed.value)
    assert "'Sales'" in message
    assert WINDOW[0].isoformat() in message
    assert "uniqueId U-77" in message
    assert landing.require_export_request(db, request_id).state is landing.RequestState.EXPIRED


def test_a_timeout_that_raced_the_callback_succeeds(db: Engine) -> None:
    request_id = new_request(db).request_id
    land(db, request_id, b"[]")
    assert wait_for(request_id).execute_complete({}, {"status": "timeout"}) == request_id
    assert landing.require_export_request(db, request_id).state is landing.RequestState.RECEIVED


def test_the_events_of_the_trigger(db: Engine) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    request_id = new_request(db).request_id
    assert wait_for(request_id).execute_complete({}, {"status": "received"}) == request_id
    with pytest.raises(AirflowFailException, match="became expired"):
        wait_for(request_id).execute_complete({}, {"status": "error", "message": "it became expired"})
