"""Installed into an Airflow that is not ours: a fresh ``AIRFLOW_HOME``, only the documented settings.

No plugins folder, no ``PYTHONPATH``, nothing from the test session's Airflow: the environment is built
from scratch as the README's "Install into an existing Airflow" section lists it, and the commands are the
ones it gives (``airflow db migrate``, ``airflow providers list``, ``airflow dags test``), each a
subprocess of this venv's ``airflow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudagent_dev.databases import connection_uri
from tests.checks import LOGICAL_DATE
from tests.fixtures.receiver import ReceiverHandle
from tests.fixtures.simulator import SimulatorHandle
from tests.timing import DEADLINE_S

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = Path(sys.executable).with_name("airflow")
#: What one `airflow` command below takes by itself at most (`dags test` of two campaigns: about a minute on
#: a quiet machine, more than 300 s at load average ~25); the one deadline is added for a busy machine.
COMMAND_WORK_S = 300


def _text(output: str | bytes | None) -> str:
    """A subprocess's output as a timeout leaves it: text, bytes or nothing."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


@pytest.mark.parametrize("db_kind", ["sqlite"])
@pytest.mark.timeout(2 * (COMMAND_WORK_S + DEADLINE_S))  # a backstop: five commands, two of them long
def test_a_fresh_airflow_home_parses_and_runs_the_dag_with_only_the_documented_settings(
    tmp_path: Path, receiver: ReceiverHandle, fresh_simulator: SimulatorHandle
) -> None:
    home = tmp_path / "airflow"
    env = {
        "PATH": f"{AIRFLOW.parent}{os.pathsep}/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_CLOUDAGENT_DEFAULT": json.dumps(
            {
                "conn_type": "cloudagent",
                "host": fresh_simulator.base_url,
                "login": fresh_simulator.user,
                "password": fresh_simulator.api_key,
            }
        ),
        "AIRFLOW_CONN_CLOUDAGENT_DB": connection_uri(receiver.db_url),
        "AIRFLOW_CONN_CLOUDAGENT_PSEUDONYM": json.dumps(
            {"conn_type": "generic", "password": os.environ["CLOUDAGENT_PSEUDONYM_KEY"]}
        ),
        "AIRFLOW_VAR_CLOUDAGENT_CAMPAIGNS": "Alpha,Beta",  # the comma-separated form works too
        "CLOUDAGENT_CALLBACK_BASE_URL": receiver.base_url,
    }

    def airflow(*args: str) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                [str(AIRFLOW), *args],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=COMMAND_WORK_S + DEADLINE_S,
                check=False,
            )
        except subprocess.TimeoutExpired as late:  # run() has killed it; say where it was
            output = "\n".join(_text(part)[-3000:] for part in (late.stdout, late.stderr))
            pytest.fail(f"airflow {' '.join(args)}: not done within {late.timeout:g} s:\n{output}")
        assert done.returncode == 0, (
            f"airflow {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        return done

    airflow("db", "migrate")
    providers = airflow("providers", "list", "--output", "json")
    (ours,) = [p for p in json.loads(providers.stdout) if p["package_name"] == "cloudagent-etl"]
    assert ours["description"].startswith("Sync Ozonetel CloudAgent")
    hooks = json.loads(airflow("providers", "hooks", "--output", "json").stdout)
    assert [(h["class"], h["package_name"]) for h in hooks if h["connection_type"] == "cloudagent"] == [
        ("cloudagent_airflow.hooks.CloudAgentHook", "cloudagent-etl")
    ]

    plugins = json.loads(airflow("plugins", "--output", "json").stdout)
    (page,) = [p for p in plugins if p["name"] == "cloudagent"]  # from the package's entry point
    assert [app["url_prefix"] for app in page["fastapi_apps"]] == ["/cloudagent"]

    ran = airflow("dags", "test", "cloudagent_dial_status", LOGICAL_DATE.date().isoformat())

    assert "ModuleNotFoundError" not in ran.stdout + ran.stderr
    assert "state=success" in ran.stdout + ran.stderr
    accepted = [entry for entry in fresh_simulator.requests_log() if entry["outcome"] == "accepted"]
    assert sorted(entry["campaign_name"] for entry in accepted) == ["Alpha", "Beta"]
