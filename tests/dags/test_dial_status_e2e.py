"""End to end: the real DAGs under ``dag.test()``, with the simulator and the receiver as real processes.

Each test runs on SQLite and on PostgreSQL (``db_kind``), on the database of the session's receiver. The
simulator's ground truth (the exact records each callback carried) is the reference the warehouse is
compared with.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from cloudagent_etl.api.limiter import api_call_log
from cloudagent_etl.landing import callback_payloads
from cloudagent_etl.warehouse.tables import dial_status_history
from tests.checks import CAMPAIGNS, LOGICAL_DATE, Sync, assert_warehouse_matches
from tests.timing import DEADLINE_S

pytestmark = pytest.mark.usefixtures("airflow_home")


def test_a_run_loads_exactly_what_cloudagent_sent_and_a_rerun_changes_nothing(sync: Sync) -> None:
    state, tis = sync.run()

    assert state == "success", {key: ti.state for key, ti in tis.items()}
    assert {campaign for task_id, campaign in tis if task_id == "campaign.load"} == set(CAMPAIGNS)
    assert_warehouse_matches(sync)
    assert [r.state for r in sync.requests()] == ["loaded", "loaded"]
    first = sync.warehouse()
    history = sync.count(dial_status_history)

    state, _ = sync.run()

    assert state == "success"
    assert sync.warehouse() == first
    assert sync.count(dial_status_history) == history
    assert len(sync.requests()) == 4  # a rerun asks again (fresh exports), and merges to the same state


def test_three_consecutive_intervals_give_the_union(sync: Sync) -> None:
    for day in range(3):
        state, _ = sync.run(logical_date=LOGICAL_DATE + timedelta(days=day))
        assert state == "success"

    assert_warehouse_matches(sync)
    windows = sorted({(r.window_start, r.window_end) for r in sync.requests()})
    assert len(windows) == 3
    for (_, end), (next_start, _) in itertools.pairwise(windows):
        assert next_start == end - timedelta(minutes=15)  # contiguous, with the default look-back


def test_duplicate_and_late_deliveries_change_nothing_and_reprocess_is_idempotent(sync: Sync) -> None:
    sync.simulator.configure(duplicate_deliveries=1, late_delay_s=2.0)

    state, _ = sync.run(campaigns=["Alpha"])

    assert state == "success"
    unique_id = sync.requests()[0].unique_id
    sync.simulator.wait_for_deliveries(unique_id, count=3)  # first + duplicate + late
    assert_warehouse_matches(sync)
    before = sync.warehouse()

    window = {"window_start": "2025-06-01T00:00:00+05:30", "window_end": "2025-06-03T00:00:00+05:30"}
    state, tis = sync.run("cloudagent_reprocess", campaigns=["Alpha"], **window)

    assert state == "success"
    assert [key for key in tis if key[0] == "reload"] != []
    assert sync.warehouse() == before
    assert len(sync.simulator.requests_log()) == 1  # reprocessing never calls the API


def test_an_invalid_api_key_fails_fast_with_the_api_message(sync: Sync, monkeypatch) -> None:
    api = json.loads(os.environ["AIRFLOW_CONN_CLOUDAGENT_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DEFAULT", json.dumps({**api, "password": "wrong-key-0000"}))
    started = time.monotonic()

    state, tis = sync.run()

    assert state == "failed"
    # Fast: no Airflow retry (30 s apart) and no client retry, both counted below; the whole run within
    # the one deadline rules out any other wait (a busy machine runs `dag.test` itself slowly).
    assert time.monotonic() - started < DEADLINE_S
    requested = {
        campaign: ti for (task_id, campaign), ti in tis.items() if task_id == "campaign.request_export"
    }
    assert {ti.state for ti in requested.values()} == {"failed"}
    assert {ti.try_number for ti in requested.values()} == {1}  # no Airflow retry
    assert len(sync.simulator.requests_log()) == len(CAMPAIGNS)  # and no client retry
    assert [(r.state, r.error) for r in sync.requests()] == [
        (
            "failed",
            "AuthenticationFailedError: CloudAgent rejected the request: Authentication failed: fix the "
            "apiKey or the userName: the password or the login of connection cloudagent_default",
        )
    ] * 2
    assert tis[("quality_checks", -1)].state == "failed"


def test_a_callback_that_never_comes_is_requested_again_then_fails_with_a_clear_message(sync: Sync) -> None:
    sync.simulator.configure(never_deliver=True)
    started = time.monotonic()

    state, tis = sync.run(campaigns=["Alpha"], callback_timeout_minutes=0.03, re_requests=1)

    assert state == "failed"
    assert time.monotonic() - started < DEADLINE_S  # two 1.8 s timeouts, not the default 60 minutes
    assert tis[("campaign.wait_for_callback", "Alpha")].state == "failed"
    assert tis[("campaign.load", "Alpha")].state == "upstream_failed"
    first, second = sync.requests()
    assert (first.state, second.state) == ("expired", "expired")
    assert (second.attempt, second.retry_of) == (2, first.request_id)
    for request in (first, second):
        assert "campaign 'Alpha'" in request.error
        assert request.window_start.isoformat() in request.error
        assert f"uniqueId {request.unique_id}" in request.error
    assert len(sync.simulator.requests_log()) == 2


def test_a_dropped_callback_is_requested_again_through_the_limiter_and_the_campaign_loads(sync: Sync) -> None:
    sync.simulator.configure(drop_exports=1)

    state, tis = sync.run(campaigns=["Alpha"], callback_timeout_minutes=0.05)

    assert state == "success", {key: ti.state for key, ti in tis.items()}
    dropped, delivered = sync.requests()
    assert (dropped.state, delivered.state) == ("expired", "loaded")
    assert (delivered.attempt, delivered.retry_of) == (2, dropped.request_id)
    assert_warehouse_matches(sync)
    with sync.engine.connect() as conn:
        admitted = sorted(conn.execute(select(api_call_log.c.called_at, api_call_log.c.purpose)).all())
    arrivals = sorted(entry["arrived_at"] for entry in sync.simulator.requests_log())
    assert len(admitted) == len(arrivals) == 2, "every call CloudAgent saw was admitted by the limiter"
    assert all(called_at <= arrived for (called_at, _), arrived in zip(admitted, arrivals, strict=True))
    assert [purpose.split()[-1] for _, purpose in admitted] == [dropped.request_id, delivered.request_id]


def test_a_three_part_export_loads_whole_in_the_nightly_run(sync: Sync) -> None:
    sync.simulator.configure(parts=3)

    state, _ = sync.run(campaigns=["Alpha"])

    assert state == "success"
    (request,) = sync.requests()
    assert request.state == "loaded"
    with sync.engine.connect() as conn:
        payloads = callback_payloads.c
        parts = conn.execute(select(payloads.part_no, payloads.part_count, payloads.parse_state)).all()
    assert sorted(parts) == [(1, 3, "loaded"), (2, 3, "loaded"), (3, 3, "loaded")]
    assert_warehouse_matches(sync)


def test_a_failing_campaign_does_not_stop_the_others(sync: Sync) -> None:
    state, tis = sync.run(campaigns=["Alpha", "NoSuchCampaign", "Beta"])

    assert state == "failed"
    assert tis[("campaign.request_export", "NoSuchCampaign")].state == "failed"
    assert tis[("campaign.load", "Alpha")].state == "success"
    assert tis[("campaign.load", "Beta")].state == "success"
    assert tis[("quality_checks", -1)].state == "failed"
    assert {r.campaign_name: r.state for r in sync.requests()} == {
        "Alpha": "loaded",
        "NoSuchCampaign": "failed",
        "Beta": "loaded",
    }
    assert_warehouse_matches(sync)


#: What the two `airflow dags test` runs below take by themselves: six mapped campaigns each, 62 s of it the
#: limiter's. About 2 minutes on a quiet machine, 5 at load average ~14 (seen: killed at 300 s there).
TWO_RUNS_WORK_S = 300


@pytest.mark.slow
@pytest.mark.timeout(TWO_RUNS_WORK_S + DEADLINE_S + 240)  # and the Airflow home's migration (47 s seen)
def test_the_limiter_holds_across_a_nightly_run_and_a_backfill_at_once(
    sync: Sync, airflow_home, tmp_path
) -> None:
    """Two `airflow dags test` processes (tonight, a backfill day) share one account: 12 calls, 10/min."""
    campaigns = [*CAMPAIGNS, "Gamma", "Nope1", "Nope2", "Nope3"]  # unknown campaigns still count as calls
    processes = []
    logs = []
    try:
        for name, day in (("nightly", 1), ("backfill", -3)):
            home = tmp_path / name
            home.mkdir()
            shutil.copy(
                airflow_home / "airflow.db", home / "airflow.db"
            )  # a private copy of the migrated metadata
            env = {
                **os.environ,
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            }
            logical_date = (LOGICAL_DATE + timedelta(days=day)).date().isoformat()
            airflow = str(Path(sys.executable).with_name("airflow"))
            command = [
                airflow,
                "dags",
                "test",
                "cloudagent_dial_status",
                logical_date,
                "--conf",
                json.dumps({"campaigns": campaigns}),
            ]
            logs.append((tmp_path / f"{name}.log").open("wb"))
            processes.append(subprocess.Popen(command, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
        ends_by = time.monotonic() + TWO_RUNS_WORK_S + DEADLINE_S
        for process, log in zip(processes, logs, strict=True):
            try:
                process.wait(timeout=max(0.0, ends_by - time.monotonic()))
            except subprocess.TimeoutExpired:
                tail = Path(log.name).read_text(errors="replace")[-3000:]
                pytest.fail(
                    f"{log.name}: not done within {TWO_RUNS_WORK_S + DEADLINE_S:g} s; its end:\n{tail}"
                )
            # The unknown campaigns fail their runs on purpose: `dags test` then exits 1 with "DagRun failed".
            output = Path(log.name).read_text(errors="replace")
            assert (process.returncode, "DagRun failed" in output) == (1, True), output[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()

    log = sync.simulator.requests_log()
    assert [entry for entry in log if entry["message"] == "Max limit exceeded"] == []
    arrivals = sorted(entry["arrived_at"] for entry in log)
    with sync.engine.connect() as conn:
        admitted = conn.scalars(select(api_call_log.c.purpose)).all()
    assert len(arrivals) == len(admitted) == 2 * len(campaigns), admitted
    busiest = max(sum(1 for t in arrivals if start <= t < start + 60) for start in arrivals)
    assert busiest <= 10
    assert arrivals[-1] - arrivals[0] >= 60  # the limiter really made the 11th call wait
    loaded = {(r.campaign_name, r.window_start) for r in sync.requests() if r.state == "loaded"}
    assert len(loaded) == 2 * 3


@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_a_run_without_a_logical_date_syncs_the_last_complete_nightly_interval(sync: Sync) -> None:
    """What a REST trigger with ``logical_date: null`` makes: no data interval in the context."""
    from cloudagent_etl.pipeline import last_complete_interval

    before = last_complete_interval(datetime.now(UTC))
    state, tis = sync.run(logical_date=None, campaigns=["Alpha"])

    assert state == "success", {key: ti.state for key, ti in tis.items()}
    (request,) = sync.requests()
    assert (request.window_start + timedelta(minutes=15), request.window_end) in (
        before,
        last_complete_interval(datetime.now(UTC)),  # the test ran across 03:30 IST
    )
    assert request.state == "loaded"
