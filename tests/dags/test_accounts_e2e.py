"""Two CloudAgent accounts in one deployment, side by side and never mixed, through the real DAG.

One simulator process serves both accounts (a BPO's two clients): the same campaign names, different
records, one account in IST and one in Dubai. The DAG runs under ``dag.test()`` against the session's
receiver, once on each database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select

from cloudagent_dev.databases import connection_uri
from cloudagent_etl.api.limiter import DEFAULT_SAFETY_MARGIN_S
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.landing import export_requests
from cloudagent_etl.warehouse.tables import dial_status, dial_status_history, load_runs
from tests.checks import LOGICAL_DATE, assert_secret_only_in_raw_bytes
from tests.fixtures.simulator import SimulatorHandle

pytestmark = pytest.mark.usefixtures("airflow_home")

#: Connection id -> the simulator account it holds; both sync campaigns named Alpha and Beta.
CONNECTIONS = {"cloudagent_client_a": "client_a", "cloudagent_client_b": "client_b"}
ACCOUNTS = {conn_id: ["Alpha", "Beta"] for conn_id in CONNECTIONS}


class TwoAccounts:
    def __init__(self, engine: Engine, simulator: SimulatorHandle, dags: dict) -> None:
        self.engine, self.simulator, self.dags = engine, simulator, dags

    def run(self, **conf: object) -> tuple[str, dict[tuple[str, str], object]]:
        """One nightly run; its state and ``{(task_id, rendered map index or ""): ti}``."""
        run = self.dags["cloudagent_dial_status"].test(logical_date=LOGICAL_DATE, run_conf=conf)
        return run.state, {(ti.task_id, ti.rendered_map_index or ""): ti for ti in run.get_task_instances()}

    def requests(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(select(export_requests).order_by(export_requests.c.created_at)).all()

    def warehouse(self, account: str) -> dict[tuple[str, str], dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(dial_status).where(dial_status.c.account == account)).mappings().all()
        return {(row["campaign_name"], row["record_key"]): dict(row) for row in rows}

    def truth(self, account: str) -> dict[tuple[str, str], dict]:
        """The newest version of every record the simulator delivered for ``account``."""
        newest: dict[tuple[str, str], dict] = {}
        for export in self.simulator.exports(account):
            for record in self.simulator.ground_truth(export["unique_id"]):
                key = (record["CampaignName"], record["DataUniqueId"])
                if key not in newest or record["UpdatedDate"] > newest[key]["UpdatedDate"]:
                    newest[key] = record
        return newest


@pytest.fixture
def accounts(monkeypatch, receiver, two_account_simulator: SimulatorHandle, dags) -> Iterator[TwoAccounts]:
    for conn_id, user in CONNECTIONS.items():
        account = two_account_simulator.account(user)
        connection = {
            "conn_type": "cloudagent", "host": two_account_simulator.base_url, "login": account.user,
            "password": account.api_key, "extra": {"timezone": account.timezone},
        }  # fmt: skip
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    monkeypatch.delenv("AIRFLOW_CONN_CLOUDAGENT_DEFAULT", raising=False)
    monkeypatch.setenv("AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS", json.dumps(ACCOUNTS))
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", connection_uri(receiver.db_url))
    monkeypatch.setenv("CLOUDAGENT_CALLBACK_BASE_URL", receiver.base_url)
    monkeypatch.setenv("CLOUDAGENT_ACCOUNT_CHECK", "off")  # the exports' own path (see tests/dags/conftest)
    engine = create_db_engine(receiver.db_url)
    yield TwoAccounts(engine, two_account_simulator, dags)
    engine.dispose()


@pytest.mark.slow
def test_two_accounts_with_the_same_campaign_names_load_their_own_records_and_a_rerun_changes_nothing(
    accounts: TwoAccounts,
) -> None:
    state, tis = accounts.run()

    assert state == "success", {key: ti.state for key, ti in tis.items()}
    labels = {label for task_id, label in tis if task_id == "campaign.load"}
    assert labels == {f"{conn_id}/{campaign}" for conn_id in CONNECTIONS for campaign in ("Alpha", "Beta")}
    for user in CONNECTIONS.values():
        truth, rows = accounts.truth(user), accounts.warehouse(user)
        assert truth, f"the simulator delivered nothing for {user}: the test would prove nothing"
        assert set(rows) == set(truth)
        for key, record in truth.items():
            assert rows[key]["disposition"] == (record["Disposition"] or None), key
            assert rows[key]["phone_number_raw"] == record["PhoneNumber"], key
        assert_secret_only_in_raw_bytes(accounts.engine, accounts.simulator.account(user).api_key)
    # The same lead ids exist in both accounts (the generator numbers leads per day), with other values.
    shared = set(accounts.warehouse("client_a")) & set(accounts.warehouse("client_b"))
    assert shared, "no key is in both accounts: the test would not show that they are kept apart"
    with accounts.engine.connect() as conn:
        windows = dict(conn.execute(select(export_requests.c.account, export_requests.c.window_end)).all())
        conn_ids = set(conn.execute(select(export_requests.c.cloudagent_conn_id)).scalars())
    # Each account exported 03:30-to-03:30 of its own day (the run's interval ends 03:30 IST on 06-02).
    assert windows["client_a"].astimezone(ZoneInfo("Asia/Kolkata")).strftime("%m-%d %H:%M") == "06-02 03:30"
    assert windows["client_b"].astimezone(ZoneInfo("Asia/Dubai")).strftime("%m-%d %H:%M") == "06-02 03:30"
    assert conn_ids == set(CONNECTIONS)

    before = _snapshot(accounts.engine)
    state, _ = accounts.run()
    assert state == "success"
    assert _snapshot(accounts.engine) == before


def _snapshot(engine: Engine) -> dict[str, object]:
    """The warehouse without lineage: a rerun may add load runs, never change a version."""
    with engine.connect() as conn:
        versions = conn.execute(
            select(dial_status_history.c.account, dial_status_history.c.campaign_name,
                   dial_status_history.c.record_key, dial_status_history.c.updated_at,
                   dial_status_history.c.disposition).order_by("account", "campaign_name", "record_key")
        ).all()  # fmt: skip
        inserted = conn.execute(select(func.sum(load_runs.c.inserted))).scalar_one()
    return {"versions": versions, "inserted": inserted}


@pytest.mark.slow
def test_a_wrong_api_key_fails_only_its_account_naming_the_connection(
    accounts: TwoAccounts, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    account = accounts.simulator.account("client_b")
    wrong = {"conn_type": "cloudagent", "host": accounts.simulator.base_url, "login": account.user,
             "password": "not-the-key", "extra": {"timezone": account.timezone}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_CLIENT_B", json.dumps(wrong))

    state, tis = accounts.run()

    assert state == "failed"
    states = {label: ti.state for (task_id, label), ti in tis.items() if task_id.startswith("campaign.")}
    assert states["cloudagent_client_a/Alpha"] == states["cloudagent_client_a/Beta"] == "success"
    failed = [tis[("campaign.request_export", f"cloudagent_client_b/{c}")] for c in ("Alpha", "Beta")]
    assert [ti.state for ti in failed] == ["failed", "failed"]
    assert [ti.try_number for ti in failed] == [1, 1]  # a wrong key is not retried
    assert set(accounts.warehouse("client_a")) == set(accounts.truth("client_a"))
    assert accounts.warehouse("client_b") == {}
    (alert,) = [r.getMessage() for r in caplog.records if r.name == "cloudagent_airflow.alerts"]
    assert "Alpha (connection cloudagent_client_b)" in alert
    assert "Authentication failed" in alert
    assert "cloudagent_client_a" not in alert
    assert "not-the-key" not in alert


@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_a_backfill_of_one_account_touches_nothing_of_the_other(accounts: TwoAccounts) -> None:
    state, _ = accounts.run(accounts={"cloudagent_client_b": ["Beta"]})

    assert state == "success"
    assert [(e["account"], e["campaign_name"]) for e in accounts.simulator.requests_log()] == [
        ("client_b", "Beta")
    ]
    assert accounts.warehouse("client_a") == {}
    assert {campaign for campaign, _ in accounts.warehouse("client_b")} == {"Beta"}


@pytest.mark.slow
@pytest.mark.parametrize("db_kind", ["postgres"])
def test_each_account_keeps_its_own_limit_and_the_two_run_side_by_side(
    accounts: TwoAccounts, airflow_home, tmp_path
) -> None:
    """Two `airflow dags test` processes, one per account, at once: 12 calls each against 10/min each.

    Each account must wait out its own window once (its 11th call), but not the other's: together they
    finish in about one window, not two.
    """
    nopes = [f"Nope{n}" for n in range(1, 11)]  # unknown campaigns still count as calls
    began = time.time()
    processes = []
    for conn_id in CONNECTIONS:
        home = tmp_path / conn_id
        home.mkdir()
        shutil.copy(airflow_home / "airflow.db", home / "airflow.db")  # a private copy of the metadata
        env = {**os.environ, "AIRFLOW_HOME": str(home),
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}  # fmt: skip
        conf = {"accounts": {conn_id: ["Alpha", "Beta", *nopes]}}
        command = [str(Path(sys.executable).with_name("airflow")), "dags", "test", "cloudagent_dial_status"]
        command += [LOGICAL_DATE.date().isoformat(), "--conf", json.dumps(conf)]
        log = (tmp_path / f"{conn_id}.log").open("wb")
        processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for process, log in processes:
        process.wait(timeout=600)
        log.close()
        output = Path(log.name).read_text(errors="replace")
        assert (process.returncode, "DagRun failed" in output) == (1, True), output[-3000:]  # the Nopes

    window = 60 + DEFAULT_SAFETY_MARGIN_S
    spans = {}
    for user in CONNECTIONS.values():
        log = accounts.simulator.requests_log(user)
        assert [entry for entry in log if entry["message"] == "Max limit exceeded"] == []
        arrivals = sorted(entry["arrived_at"] for entry in log)
        assert len(arrivals) == 12, log
        assert max(sum(1 for t in arrivals if start <= t < start + 60) for start in arrivals) <= 10
        assert arrivals[-1] - arrivals[0] >= 60  # the limiter made this account's 11th call wait
        spans[user] = (arrivals[0], arrivals[-1])
    together = max(end for _, end in spans.values()) - min(start for start, _ in spans.values())
    floors = 2 * window
    print(f"\nper-account limiter: both accounts' calls spanned {together:.0f} s, against {floors:.0f} s for "
          f"their two floors one after the other (run took {time.time() - began:.0f} s)")  # fmt: skip
    assert together < floors, spans
    (a_start, a_end), (b_start, b_end) = spans.values()
    assert max(a_start, b_start) < min(a_end, b_end), "the accounts' calls did not overlap"
    loaded = {(r.account, r.campaign_name) for r in accounts.requests() if r.state == "loaded"}
    assert loaded == {(user, c) for user in CONNECTIONS.values() for c in ("Alpha", "Beta")}
