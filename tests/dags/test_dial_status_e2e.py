"""End to end: the real DAGs under ``dag.test()``, with the simulator and the receiver as real processes.

Each test runs on SQLite and on PostgreSQL (``db_url``). The simulator's ground truth (the exact records
each callback carried) is the reference the warehouse is compared with.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select

from cloudagent_etl import schema
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.localstack import connection_uri

IST = ZoneInfo("Asia/Kolkata")
#: A manual run at this logical date covers 2025-06-01 03:30 IST .. 2025-06-02 03:30 IST.
LOGICAL_DATE = datetime(2025, 6, 2, tzinfo=UTC)
CAMPAIGNS = ["Alpha", "Beta"]

pytestmark = pytest.mark.usefixtures("airflow_home")


@pytest.fixture
def dags(airflow_home) -> dict:
    """Freshly parsed DAGs: an in-process run's conf leaks into the DAG object's params."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.conftest import DAGS_FOLDER

    return DagBag(dag_folder=str(DAGS_FOLDER)).dags


@dataclass
class Sync:
    """One database + simulator + receiver wired to the DAGs through AIRFLOW_CONN_* / AIRFLOW_VAR_*."""

    engine: Engine
    simulator: object
    dags: dict

    def run(self, dag_id: str = "cloudagent_dial_status", logical_date: datetime = LOGICAL_DATE, **conf):
        """Run the DAG once; return the run's state and ``{(task_id, campaign or map index): ti}``."""
        run = self.dags[dag_id].test(logical_date=logical_date, run_conf=conf)
        campaigns = conf.get("campaigns", CAMPAIGNS)  # mapped instances follow this order
        instances = {}
        for ti in run.get_task_instances():
            label = campaigns[ti.map_index] if ti.task_id.startswith("campaign.") else ti.map_index
            if ti.task_id.startswith("campaign.") and ti.state == "success":
                assert ti.rendered_map_index == str(label)  # instances are named by campaign in the UI
            instances[(ti.task_id, label)] = ti
        return run.state, instances

    def warehouse(self) -> dict[tuple[str, str], dict]:
        """``dial_status`` without lineage columns, keyed by (campaign_name, record_key)."""
        table = schema.dial_status
        columns = [
            table.c.campaign_name,
            table.c.record_key,
            *(table.c[c] for c in schema.DIAL_STATUS_VALUE_COLUMNS),
        ]
        with self.engine.connect() as conn:
            rows = conn.execute(select(*columns)).mappings().all()
        return {(row["campaign_name"], row["record_key"]): dict(row) for row in rows}

    def count(self, table) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar_one()

    def requests(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(
                select(schema.export_requests).order_by(schema.export_requests.c.created_at)
            ).all()

    def ground_truth(self) -> dict[tuple[str, str], dict]:
        """The newest version of every record the simulator delivered, keyed like the warehouse."""
        newest: dict[tuple[str, str], dict] = {}
        for logged in self.simulator.requests_log():
            if logged["outcome"] != "accepted":
                continue
            for record in self.simulator.ground_truth(logged["unique_id"]):
                key = (record["CampaignName"], record["DataUniqueId"])
                if key not in newest or record["UpdatedDate"] > newest[key]["UpdatedDate"]:
                    newest[key] = record
        return newest


def _ist(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=IST).astimezone(UTC)


def _value(text: str) -> str | None:
    """How the warehouse stores a source text: CloudAgent writes absent values as "" or "None"."""
    return None if text in ("", "None") else text


#: Source fields with a typed warehouse column, compared text to text below.
TEXT_COLUMNS = {
    "PhoneNumber": "phone_number_raw",
    "Name": "customer_name",
    "Status": "lead_status",
    "DialStatus": "dial_status",
    "Disposition": "disposition",
    "AgentID": "agent_id",
    "UCID": "ucid",
    "monitorUCID": "monitor_ucid",
}
#: Source fields with no column: they must be kept in ``extra`` (all but the API key).
EXTRA_FIELDS = ("City", "LoanAmount", "UserName")


def assert_warehouse_matches(sync: Sync) -> None:
    truth = sync.ground_truth()
    warehouse = sync.warehouse()
    assert truth, "the simulator delivered no records: the test would prove nothing"
    assert set(warehouse) == set(truth)
    for key, record in truth.items():
        row = warehouse[key]
        assert {c: row[c] for c in TEXT_COLUMNS.values()} == {
            column: _value(record[field]) for field, column in TEXT_COLUMNS.items()
        }, key
        assert row["attempts"] == int(record["Attempts"]), key
        assert row["updated_at"] == _ist(record["UpdatedDate"]), key
        assert row["created_at"] == _ist(record["CreatedDate"]), key
        assert row["extra"] == {name: record[name] for name in EXTRA_FIELDS if name in record}, key
    assert_api_key_in_no_warehouse_table(sync)


def assert_api_key_in_no_warehouse_table(sync: Sync) -> None:
    """CloudAgent puts the apiKey in every record: only the raw landing bytes may keep it."""
    key = sync.simulator.api_key
    tables = (schema.dial_status, schema.dial_status_history, schema.dial_status_rejects, schema.load_runs)
    with sync.engine.connect() as conn:
        for table in (*tables, schema.export_requests):
            dumped = json.dumps([list(row) for row in conn.execute(select(table))], default=str)
            assert key not in dumped, f"the API key leaked into {table.name}"


@pytest.fixture
def sync(monkeypatch, db_url, receiver, fresh_simulator, dags) -> Iterator[Sync]:
    api = {
        "conn_type": "cloudagent",
        "host": fresh_simulator.base_url,
        "login": fresh_simulator.user,
        "password": fresh_simulator.api_key,
    }
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DEFAULT", json.dumps(api))
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", connection_uri(db_url))
    monkeypatch.setenv("AIRFLOW_VAR_CLOUDAGENT_CAMPAIGNS", json.dumps(CAMPAIGNS))
    monkeypatch.setenv("CLOUDAGENT_CALLBACK_BASE_URL", receiver.base_url)
    engine = create_db_engine(db_url)
    yield Sync(engine, fresh_simulator, dags)
    engine.dispose()


def test_a_run_loads_exactly_what_cloudagent_sent_and_a_rerun_changes_nothing(sync: Sync) -> None:
    state, tis = sync.run()

    assert state == "success", {key: ti.state for key, ti in tis.items()}
    assert {campaign for task_id, campaign in tis if task_id == "campaign.load"} == set(CAMPAIGNS)
    assert_warehouse_matches(sync)
    assert [r.state for r in sync.requests()] == ["loaded", "loaded"]
    first = sync.warehouse()
    history = sync.count(schema.dial_status_history)

    state, _ = sync.run()

    assert state == "success"
    assert sync.warehouse() == first
    assert sync.count(schema.dial_status_history) == history
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
    sync.simulator.wait_for_deliveries(unique_id, count=3, timeout=20)  # first + duplicate + late
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
    assert time.monotonic() - started < 60
    requested = {
        campaign: ti for (task_id, campaign), ti in tis.items() if task_id == "campaign.request_export"
    }
    assert {ti.state for ti in requested.values()} == {"failed"}
    assert {ti.try_number for ti in requested.values()} == {1}  # no Airflow retry
    assert len(sync.simulator.requests_log()) == len(CAMPAIGNS)  # and no client retry
    assert [(r.state, r.error) for r in sync.requests()] == [
        ("failed", "AuthenticationFailedError: CloudAgent rejected the request: Authentication failed")
    ] * 2
    assert tis[("quality_checks", -1)].state == "failed"


def test_a_callback_that_never_comes_times_out_with_a_clear_message(sync: Sync) -> None:
    sync.simulator.configure(never_deliver=True)
    started = time.monotonic()

    state, tis = sync.run(campaigns=["Alpha"], callback_timeout_minutes=0.03)

    assert state == "failed"
    assert time.monotonic() - started < 60
    assert tis[("campaign.wait_for_callback", "Alpha")].state == "failed"
    assert tis[("campaign.load", "Alpha")].state == "upstream_failed"
    (request,) = sync.requests()
    assert request.state == "expired"
    assert "campaign 'Alpha'" in request.error
    assert request.window_start.isoformat() in request.error
    assert f"uniqueId {request.unique_id}" in request.error


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


@pytest.mark.slow
def test_the_limiter_holds_across_a_nightly_run_and_a_backfill_at_once(
    sync: Sync, airflow_home, tmp_path
) -> None:
    """Two `airflow dags test` processes (tonight, a backfill day) share one account: 12 calls, 10/min."""
    campaigns = [*CAMPAIGNS, "Gamma", "Nope1", "Nope2", "Nope3"]  # unknown campaigns still count as calls
    processes = []
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
        command = [str(Path(sys.executable).with_name("airflow")), "dags", "test", "cloudagent_dial_status"]
        command += [logical_date, "--conf", json.dumps({"campaigns": campaigns})]
        log = (tmp_path / f"{name}.log").open("wb")
        processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for process, log in processes:
        process.wait(timeout=300)
        log.close()

    arrivals = sorted(entry["arrived_at"] for entry in sync.simulator.requests_log())
    assert len(arrivals) == 2 * len(campaigns)
    busiest = max(sum(1 for t in arrivals if start <= t < start + 60) for start in arrivals)
    assert busiest <= 10
    assert arrivals[-1] - arrivals[0] >= 60  # the limiter really made the 11th call wait
    assert "Max limit exceeded" not in {entry["message"] for entry in sync.simulator.requests_log()}
    loaded = {(r.campaign_name, r.window_start) for r in sync.requests() if r.state == "loaded"}
    assert len(loaded) == 2 * 3
