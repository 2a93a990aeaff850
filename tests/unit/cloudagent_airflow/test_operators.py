"""The wait operator: done at once when the callback already landed, defers otherwise, and fails clearly."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from cloudagent_dev.databases import connection_uri
from cloudagent_etl import landing
from cloudagent_etl.api.request import ExportFilters
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.exports import Export
from tests.factories import WINDOW, land, new_request
from tests.fixtures.simulator import SimulatorHandle


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch, db_url: str) -> Iterator[Engine]:
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", connection_uri(db_url))
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


def wait_for(request_id: str, timeout_minutes: float = 2, re_requests: int = 0):
    from cloudagent_airflow.operators import WaitForCallbackOperator

    return WaitForCallbackOperator(
        task_id="wait_for_callback",
        request_id=request_id,
        cloudagent_conn_id="cloudagent_default",
        timeout_minutes=timeout_minutes,
        re_requests=re_requests,
    )


def test_a_callback_that_already_landed_needs_no_wait(db: Engine) -> None:
    request_id = new_request(db).request_id
    land(db, request_id, b"[]")
    assert wait_for(request_id).execute(context={}) == request_id


def test_a_missing_callback_defers_to_the_trigger_until_the_request_deadline(db: Engine) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    request_id = new_request(db).request_id
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        wait_for(request_id, timeout_minutes=2).execute(context={})
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == "cloudagent_airflow.triggers.CallbackArrivedTrigger"
    assert kwargs["request_id"] == request_id
    assert before + 120 <= kwargs["deadline"] <= time.time() + 120  # a bare row has no deadline yet
    assert deferred.value.method_name == "execute_complete"

    claimed = _claim(db, 7)
    with pytest.raises(TaskDeferred) as deferred:
        wait_for(claimed.request_id, timeout_minutes=2).execute(context={})
    stored = landing.require_export_request(db, claimed.request_id).callback_deadline
    assert stored is not None
    assert deferred.value.trigger.serialize()[1]["deadline"] == stored.timestamp()


def test_a_request_that_already_failed_fails_the_wait_at_once(db: Engine) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    request_id = new_request(db).request_id
    landing.mark_failed(db, request_id, "AuthenticationFailedError")
    with pytest.raises(AirflowFailException, match="is no longer awaited: AuthenticationFailedError"):
        wait_for(request_id).execute(context={})


def test_a_timeout_with_no_re_request_left_expires_the_request_and_fails_naming_it(db: Engine) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    request_id = new_request(db, "Sales", unique_id="U-77").request_id
    with pytest.raises(AirflowFailException) as failed:
        wait_for(request_id, re_requests=0).execute_complete(
            {}, {"status": "timeout", "request_id": request_id}
        )
    message = str(failed.value)
    assert "'Sales'" in message
    assert WINDOW[0].isoformat() in message
    assert "uniqueId U-77" in message
    assert "no re-request left" in message
    assert landing.require_export_request(db, request_id).state is landing.RequestState.EXPIRED


@pytest.fixture
def cloudagent(monkeypatch: pytest.MonkeyPatch, fresh_simulator: SimulatorHandle) -> SimulatorHandle:
    """The API connection and callback URL pointing at the simulator (which never delivers here)."""
    connection = {"conn_type": "cloudagent", "host": fresh_simulator.base_url, "login": fresh_simulator.user}
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDAGENT_DEFAULT", json.dumps({**connection, "password": fresh_simulator.api_key})
    )
    monkeypatch.setenv("CLOUDAGENT_CALLBACK_BASE_URL", "http://127.0.0.1:9")
    fresh_simulator.configure(never_deliver=True)
    return fresh_simulator


#: An export of the test account whose callbacks go nowhere.
EXPORT = Export("test_user", "Alpha", *WINDOW, ExportFilters(), "Asia/Kolkata", "http://127.0.0.1:9")


def _claim(db: Engine, minutes: float) -> landing.ClaimedExport:
    return landing.claim_export(
        db, EXPORT, callback_timeout=timedelta(minutes=minutes), dag_id="d", run_id="r"
    )


def test_a_timeout_requests_the_window_again_and_waits_for_the_new_export(
    db: Engine, cloudagent: SimulatorHandle
) -> None:
    from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

    first = _claim(db, 1)
    wait = wait_for(first.request_id, timeout_minutes=1, re_requests=1)

    with pytest.raises(TaskDeferred) as deferred:
        wait.execute_complete({}, {"status": "timeout", "request_id": first.request_id})

    second = deferred.value.trigger.serialize()[1]["request_id"]
    again = landing.require_export_request(db, second)
    assert (again.attempt, again.retry_of, again.state) == (
        2,
        first.request_id,
        landing.RequestState.REQUESTED,
    )
    assert landing.require_export_request(db, first.request_id).state is landing.RequestState.EXPIRED
    assert [entry["campaign_name"] for entry in cloudagent.requests_log()] == ["Alpha"]  # one API call
    with pytest.raises(AirflowFailException, match="no re-request left"):
        wait.execute_complete({}, {"status": "timeout", "request_id": second})
    assert len(cloudagent.requests_log()) == 1


def test_a_timeout_that_raced_the_callback_succeeds(db: Engine) -> None:
    request_id = new_request(db).request_id
    land(db, request_id, b"[]")
    assert wait_for(request_id).execute_complete({}, {"status": "timeout"}) == request_id
    assert landing.require_export_request(db, request_id).state is landing.RequestState.RECEIVED


def test_the_events_of_the_trigger(db: Engine) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    request_id = new_request(db).request_id
    assert wait_for(request_id).execute_complete({}, {"status": "received"}) == request_id
    landing.mark_failed(db, request_id, "CloudAgent said no")
    with pytest.raises(AirflowFailException, match="no longer awaited: CloudAgent said no"):
        wait_for(request_id).execute_complete({}, {"status": "error", "request_id": request_id})


def test_an_export_expired_by_a_sweep_during_the_wait_is_requested_again(
    db: Engine, cloudagent: SimulatorHandle
) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    first = _claim(db, 1)
    landing.mark_expired(db, first.request_id, "expired by a sweep")

    with pytest.raises(TaskDeferred) as deferred:
        wait_for(first.request_id, re_requests=2).execute_complete(
            {}, {"status": "error", "request_id": first.request_id}
        )

    second = deferred.value.trigger.serialize()[1]["request_id"]
    assert landing.require_export_request(db, second).retry_of == first.request_id


def test_a_retried_wait_after_a_re_request_waits_for_the_live_re_request_without_an_api_call(
    db: Engine, cloudagent: SimulatorHandle
) -> None:
    """A retry of the task starts again from the first request id: it must not spend another call."""
    from airflow.sdk.exceptions import TaskDeferred

    first = _claim(db, 1)
    with pytest.raises(TaskDeferred) as deferred:
        wait_for(first.request_id, timeout_minutes=1, re_requests=2).execute_complete(
            {}, {"status": "timeout", "request_id": first.request_id}
        )
    second = deferred.value.trigger.serialize()[1]["request_id"]

    with pytest.raises(TaskDeferred) as retried:  # the next try of the task: execute() on the first id
        wait_for(first.request_id, timeout_minutes=1, re_requests=2).execute(context={})

    assert retried.value.trigger.serialize()[1]["request_id"] == second
    assert len(cloudagent.requests_log()) == 1


def load_operator(request_id: str):
    from cloudagent_airflow.operators import LoadExportOperator

    return LoadExportOperator(task_id="load", request_id=request_id, cloudagent_conn_id="cloudagent_default")


@pytest.fixture
def account(monkeypatch: pytest.MonkeyPatch) -> str:
    """The API connection the load reads (its apiKey is redacted from payloads; its host names the export)."""
    api = {"conn_type": "cloudagent", "host": "https://in1-ccaas-api.ozonetel.com", "login": "test_user",
           "password": "api-key-0000"}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DEFAULT", json.dumps(api))
    return api["host"]


def test_the_load_reports_the_export_it_read_and_the_tables_it_wrote(db: Engine, account: str) -> None:
    from cloudagent_etl.simulator.data import generate_records

    request_id = new_request(db, "Sales", unique_id="cloudagent-unique-42").request_id
    land(db, request_id, generate_records("Sales", *WINDOW, seed=3, records_per_day=20))
    operator = load_operator(request_id)
    counts = operator.execute(context={})

    lineage = operator.get_openlineage_facets_on_complete(task_instance=None)

    (read,) = lineage.inputs
    assert read.namespace == "cloudagent://in1-ccaas-api.ozonetel.com"
    assert read.name == f"test_user/Sales/{WINDOW[0].isoformat()}/{WINDOW[1].isoformat()}"
    assert (read.facets["cloudagent_export"].uniqueId, read.facets["cloudagent_export"].requestId) == (
        "cloudagent-unique-42",
        request_id,
    )
    tables = ("dial_status", "dial_status_superseded", "dial_status_rejects", "load_runs")
    url = db.url
    if url.drivername.startswith("postgresql"):
        expected = {
            (f"postgres://{url.host}:{url.port or 5432}", f"{url.database}.public.{t}") for t in tables
        }
    else:
        expected = {(f"sqlite://{url.database}", t) for t in tables}
    assert {(output.namespace, output.name) for output in lineage.outputs} == expected
    (current,) = [output for output in lineage.outputs if output.name.endswith("dial_status")]
    assert current.outputFacets["outputStatistics"].rowCount == counts["inserted"] + counts["updated"] > 0
    run_facet = lineage.run_facets["cloudagent_load"]
    assert (run_facet.requestId, run_facet.rowsIn, run_facet.rejected) == (
        request_id,
        counts["rows_in"],
        counts["rejected"],
    )


def test_a_lineage_that_cannot_be_built_is_reported_empty_and_never_raises(db: Engine, account: str) -> None:
    """The export request is gone by the time the lineage is asked for: the load's success stands."""
    lineage = load_operator("no-such-request").get_openlineage_facets_on_complete(task_instance=None)

    assert (lineage.inputs, lineage.outputs, lineage.run_facets) == ([], [], {})
