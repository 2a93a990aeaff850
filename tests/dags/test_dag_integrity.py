"""The DAG folder imports cleanly, fast, and every DAG carries the project's conventions."""

from __future__ import annotations

import pytest

from tests.fixtures.airflow import DAGS_FOLDER
from tests.timing import own_time

EXPECTED_DAG_IDS = {
    "cloudagent_dial_status",
    "cloudagent_reprocess",
    "cloudagent_missing_data",
    "cloudagent_analytics",
    "cloudagent_erasure",
    "cloudagent_retention",
}


@pytest.fixture(scope="module")
def dag_bag():
    import airflow.sdk  # noqa: F401  (Airflow's own import is not what is measured)
    from airflow.dag_processing.dagbag import DagBag

    # What parsing took less the time a busy machine kept it waiting for a CPU: our code's computing and
    # anything it blocks on (a top-level database or network call would count in full).
    with own_time() as took:
        bag = DagBag(dag_folder=str(DAGS_FOLDER))
    bag.parse_took = took
    return bag


def test_dag_folder_imports_without_errors(dag_bag) -> None:
    assert dag_bag.import_errors == {}
    assert dag_bag.captured_warnings == {}
    assert set(dag_bag.dag_ids) == EXPECTED_DAG_IDS


def test_dag_folder_parses_in_under_a_second(dag_bag) -> None:
    # Airflow is already imported by the fixture's DagBag import; this is our files' own cost.
    assert dag_bag.parse_took.own_s < 1.0, f"parsing dags/ took {dag_bag.parse_took}"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAG_IDS))
def test_dag_follows_conventions(dag_bag, dag_id: str) -> None:
    dag = dag_bag.dags[dag_id]
    assert dag.tags
    assert "cloudagent" in dag.tags
    assert dag.doc_md
    assert len(dag.doc_md) > 200
    assert dag.default_args["owner"] == "data-engineering"
    assert dag.default_args["retries"] >= 1, "transient failures must be retried"
    assert dag.catchup is False


def test_every_task_retries_and_the_wait_retries_quickly(dag_bag) -> None:
    """Infrastructure failures are retried everywhere; a wait's retry finds its live export (no API call),
    so it waits 15 s, not the default's backoff, and a callback that never came is re-requested instead."""
    tasks = {task.task_id: task for task in dag_bag.dags["cloudagent_dial_status"].tasks}
    wait = tasks["campaign.wait_for_callback"]
    assert (wait.retries, wait.retry_delay.total_seconds(), wait.retry_exponential_backoff) == (2, 15, False)
    retried = {task_id: task.retries for task_id, task in tasks.items() if task_id != "preflight"}
    assert all(retries >= 1 for retries in retried.values()), retried
    assert tasks["preflight"].retries == 0  # a wrong setting stays wrong: fail in seconds, not minutes
    assert tasks["campaign.request_export"].pool == "cloudagent_api"


@pytest.mark.parametrize("dag_id", ["cloudagent_dial_status", "cloudagent_reprocess"])
def test_the_preflight_runs_before_anything_touches_data(dag_bag, dag_id: str) -> None:
    dag = dag_bag.dags[dag_id]
    (first,) = dag.roots
    assert first.task_id == "preflight"
    assert {task.task_id for task in dag.tasks} - {"preflight"} <= first.get_flat_relative_ids(upstream=False)


def test_the_nightly_timetable_is_the_one_runs_without_a_logical_date_fall_back_to(dag_bag) -> None:
    from cloudagent_etl.pipeline import NIGHTLY_CRON, NIGHTLY_TIMEZONE

    timetable = dag_bag.dags["cloudagent_dial_status"].timetable
    assert (timetable.expression, str(timetable.timezone)) == (NIGHTLY_CRON, NIGHTLY_TIMEZONE)


def test_dial_status_params_accept_exactly_the_api_values(dag_bag) -> None:
    # The DAG file lists the values literally (it must not import httpx at parse time); keep them in step.
    from cloudagent_etl.api.request import DIALSTATUS_VALUES, SORTBY_VALUES, STATUS_VALUES

    params = dag_bag.dags["cloudagent_dial_status"].params
    assert params.get_param("status").schema["enum"] == list(STATUS_VALUES)
    assert params.get_param("dialstatus").schema["enum"] == list(DIALSTATUS_VALUES)
    assert params.get_param("sortby").schema["enum"] == list(SORTBY_VALUES)


def test_dial_status_dag_runs_nightly_on_the_previous_ist_day(dag_bag) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from airflow.serialization.encoders import coerce_to_core_timetable

    timetable = coerce_to_core_timetable(dag_bag.dags["cloudagent_dial_status"].timetable)
    interval = timetable.infer_manual_data_interval(
        run_after=datetime(2025, 6, 2, 6, 0, tzinfo=ZoneInfo("Asia/Kolkata"))
    )
    ist = ZoneInfo("Asia/Kolkata")
    assert interval.start == datetime(2025, 6, 1, 3, 30, tzinfo=ist)
    assert interval.end == datetime(2025, 6, 2, 3, 30, tzinfo=ist)
