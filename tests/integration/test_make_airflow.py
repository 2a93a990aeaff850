"""``make airflow`` and ``make airflow-stop`` themselves, on the embedded SQLite default.

Its own module (and so its own xdist worker): it starts a whole stack of its own, beside the PostgreSQL one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from cloudagent_dev.localstack import StackSettings, StackState
from cloudagent_dev.processes import free_port, still_running

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_make_airflow_then_airflow_stop_on_the_embedded_sqlite_default(tmp_path) -> None:
    """The literal Makefile targets, with SQLite for the warehouse and for Airflow's metadata."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDAGENT_", "AIRFLOW"))}
    env["CLOUDAGENT_LOCALSTACK_DIR"] = str(tmp_path)
    for name in ("AIRFLOW", "RECEIVER", "SIMULATOR"):
        env[f"CLOUDAGENT_{name}_PORT"] = str(free_port())
    settings = StackSettings.from_env(env)
    make = ["make", "-C", str(REPO)]
    recorded: tuple = ()
    try:
        started = subprocess.run([*make, "airflow"], env=env, capture_output=True, text=True, timeout=360)
        assert started.returncode == 0, started.stdout + started.stderr
        state = StackState.load(settings.state_path)
        recorded = state.processes
        assert f"login: admin / {state.admin_password()}" in started.stdout
        health = httpx.get(f"{state.airflow_url}/api/v2/monitor/health", timeout=10).json()
        assert health["metadatabase"]["status"] == "healthy"
        assert (tmp_path / "airflow" / "airflow.db").exists()
        assert (tmp_path / "cloudagent.db").exists()
    finally:
        stopped = subprocess.run(
            [*make, "airflow-stop"], env=env, capture_output=True, text=True, timeout=120
        )
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert len(recorded) == 6
    assert still_running(recorded) == []
    assert not settings.state_path.exists()
