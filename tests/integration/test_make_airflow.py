"""``make airflow``, ``make airflow-status`` and ``make airflow-stop`` themselves, on the embedded SQLite
default, with two simulated CloudAgent accounts (``ACCOUNTS=2``).

Its own module (and so its own xdist worker): it starts a whole stack of its own, beside the PostgreSQL one.
One start/stop cycle checks, on the way: the steps are printed as they happen, the scheduler (and the
dag-processor, triggerer) started only once the api-server answered, a run under the scheduler syncs both
accounts (the same campaign names, each account's own rows), and status/stop run for another folder name
this stack and stop nothing.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cloudagent_dev.localstack import StackSettings, StackState
from cloudagent_dev.processes import free_port, still_running
from tests.timing import DEADLINE_S

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
#: The steps ``make airflow`` prints, in this order (the three components may get ready in any order).
STEPS = [
    "warehouse migrate: done in",
    "simulator ready on",
    "receiver ready on",
    "airflow db migrate: done in",
    "airflow pools set: done in",
    "api-server started (pid",
    "api-server ready on",
    "scheduler started (pid",
    "dag-processor started (pid",
    "triggerer started (pid",
]
AFTER_THE_STARTS = ["scheduler ready after", "dag-processor ready after", "triggerer ready after"]


def make(target: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = ["make", "-s", "-C", str(REPO), target]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def make_airflow(env: dict[str, str]) -> tuple[int, list[tuple[float, str]]]:
    """``make airflow``; its exit code and each output line with the seconds after the start it arrived."""
    began = time.monotonic()
    with subprocess.Popen(
        ["make", "-s", "-C", str(REPO), "airflow", "ACCOUNTS=2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as process:  # fmt: skip
        assert process.stdout is not None
        lines = [(time.monotonic() - began, line.rstrip("\n")) for line in process.stdout]
        return process.wait(timeout=30), lines


def first(lines: list[tuple[float, str]], text: str) -> int:
    return next(index for index, (_, line) in enumerate(lines) if text in line)


@pytest.mark.timeout(600)
def test_make_airflow_then_airflow_stop_on_the_embedded_sqlite_default(tmp_path) -> None:
    """The literal Makefile targets, with SQLite for the warehouse and for Airflow's metadata."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDAGENT_", "AIRFLOW"))}
    env["CLOUDAGENT_LOCALSTACK_DIR"] = str(tmp_path)
    env["CLOUDAGENT_LOCALSTACK_REGISTRY"] = str(tmp_path / "registry")
    for name in ("AIRFLOW", "RECEIVER", "SIMULATOR"):
        env[f"CLOUDAGENT_{name}_PORT"] = str(free_port())
    settings = StackSettings.from_env({**env, "CLOUDAGENT_LOCALSTACK_ACCOUNTS": "2"})
    recorded: tuple = ()
    try:
        code, lines = make_airflow(env)
        output = "\n".join(line for _, line in lines)
        assert code == 0, output
        state = StackState.load(settings.state_path)
        recorded = state.processes
        assert f"login: admin / {state.admin_password()}" in output
        assert f"CloudAgent: the simulator on http://127.0.0.1:{settings.simulator_port}" in output
        assert "(account demo_user, demo_user_2)" in output
        health = httpx.get(f"{state.airflow_url}/api/v2/monitor/health", timeout=DEADLINE_S).json()
        assert health["metadatabase"]["status"] == "healthy"
        assert (tmp_path / "airflow" / "airflow.db").exists()
        assert (tmp_path / "cloudagent.db").exists()

        # Each step is printed as it ends, not all at the end.
        order = [first(lines, step) for step in STEPS]
        assert order == sorted(order), output
        assert min(first(lines, step) for step in AFTER_THE_STARTS) > order[-1], output
        arrived = {step: lines[first(lines, step)][0] for step in STEPS}
        assert arrived["warehouse migrate: done in"] < arrived["api-server ready on"] - 5, lines

        # The scheduler, dag-processor and triggerer started after the api-server answered.
        steps = [step for step, _ in state.events]
        assert steps.index("api-server ready") < min(
            steps.index(f"{name} started") for name in ("scheduler", "dag-processor", "triggerer")
        ), steps
        by_name = {process.name: process for process in state.processes}
        ready_at = state.event_time("api-server ready")
        assert by_name["api-server"].created < ready_at
        for name in ("scheduler", "dag-processor", "triggerer"):
            # The OS's start time: psutil counts it from a boot time in whole seconds (up to 1 s early).
            assert by_name[name].created > ready_at - 1.0, (name, by_name[name].created, ready_at)

        # A run under the scheduler syncs both accounts, each into its own rows.
        _both_accounts_sync_under_the_scheduler(state, settings)

        # Status and stop for another folder name this stack and its stop command, and stop nothing.
        elsewhere = {**env, "CLOUDAGENT_LOCALSTACK_DIR": str(tmp_path / "elsewhere")}
        command = f"CLOUDAGENT_LOCALSTACK_DIR={shlex.quote(str(tmp_path))} make airflow-stop"
        for target in ("airflow-status", "airflow-stop"):
            other = make(target, elsewhere)
            assert other.returncode != 0, other.stdout + other.stderr
            assert f"a local stack runs in {tmp_path} " in other.stdout
            assert f"    {command}\n" in other.stdout
            assert "is stopped" not in other.stdout + other.stderr
        assert all(process.process() is not None for process in recorded), "stop elsewhere stopped some"

        status = make("airflow-status", env)
        assert status.returncode == 0, status.stdout + status.stderr
        for process in recorded:
            assert f"{process.name:<14} pid {process.pid:<8} alive" in status.stdout
        assert state.airflow_url in status.stdout
    finally:
        stopped = make("airflow-stop", env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"the local stack in {tmp_path} is stopped" in stopped.stdout
    assert len(recorded) == 6
    assert still_running(recorded) == []
    assert not settings.state_path.exists()
    after = make("airflow-status", env)
    assert after.returncode != 0
    assert f"no local stack recorded in {tmp_path}" in after.stdout


def _both_accounts_sync_under_the_scheduler(state: StackState, settings: StackSettings) -> None:
    from sqlalchemy import func, select

    from cloudagent_dev.localstack import DAG_ID, DEMO_CAMPAIGNS, api_token
    from cloudagent_etl.db import create_db_engine
    from cloudagent_etl.warehouse.tables import dial_status

    headers = {"Authorization": f"Bearer {api_token(state.airflow_url, state.admin_password() or '')}"}
    with httpx.Client(base_url=state.airflow_url, headers=headers, timeout=30) as api:
        pools = api.get("/api/v2/pools/cloudagent_api")
        assert pools.json()["slots"] == 2, pools.text
        created = api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": "2025-06-02T00:00:00Z"})
        assert created.status_code == 200, created.text
        run_id = created.json()["dag_run_id"]
        deadline = time.monotonic() + 300
        while (run := api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json())["state"] not in (
            "success", "failed"
        ):  # fmt: skip
            assert time.monotonic() < deadline, f"the run is still {run['state']} after 300 s"
            time.sleep(2)
        instances = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        loads = [ti for ti in instances.json()["task_instances"] if ti["task_id"] == "campaign.load"]
    assert run["state"] == "success", run
    labels = sorted(ti["rendered_map_index"] for ti in loads)
    expected = sorted([*DEMO_CAMPAIGNS, *(f"cloudagent_second/{c}" for c in DEMO_CAMPAIGNS)])
    assert labels == expected
    engine = create_db_engine(settings.warehouse_db_url)
    try:
        with engine.connect() as conn:
            per_account = dict(
                conn.execute(
                    select(dial_status.c.account, func.count()).group_by(dial_status.c.account)
                ).all()
            )
    finally:
        engine.dispose()
    assert set(per_account) == {"demo_user", "demo_user_2"}
    assert all(rows > 0 for rows in per_account.values()), per_account
