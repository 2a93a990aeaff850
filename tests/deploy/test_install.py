"""The README's "Install into an existing Airflow", followed from a fresh venv and a fresh AIRFLOW_HOME: the
built wheel with Airflow's constraints (derived from the development lock, which pins Airflow 3.3.2's tree:
the published constraints URL cannot be reached from here), the provider and its connection types listed,
the DAGs listed once serialized, and ``airflow dags test`` of a DAG that needs no CloudAgent.

Nothing of the development venv is used: the new venv has only what the wheel and Airflow bring.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.timing import DEADLINE_S

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
INSTALL = README.split("<!-- install:start -->", 1)[1].split("<!-- install:end -->", 1)[0]
#: Packages of the lock that are this project's development tools: as constraints they would only restrict
#: versions, never install anything, but a constraints file is Airflow's tree, so they are left out.
DEV_TOOLS = {"pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "ruff", "mypy", "pandas-stubs",
             "check-jsonschema", "playwright", "psutil"}  # fmt: skip
#: Installing Airflow into an empty venv (from the package cache), migrating its metadata and the commands.
INSTALL_WORK_S = 300


def constraints_from_lock(path: Path) -> None:
    """A constraints file from requirements.txt: every pinned package but the development tools."""
    pins = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if match and re.sub(r"\[.*\]", "", match.group(1)).lower() not in DEV_TOOLS:
            pins.append(f"{match.group(1)}=={match.group(2)}")
    path.write_text("\n".join(pins) + "\n")


def run(command: list[str], env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout + DEADLINE_S, check=False
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_WORK_S + 4 * DEADLINE_S)
def test_the_readme_install_works_from_a_fresh_venv_and_airflow_home(tmp_path: Path) -> None:
    began = time.monotonic()
    steps = [
        "make wheel", "pip install", "--constraint", 'mkdir -p "$AIRFLOW_HOME/dags"', "airflow db migrate",
        "airflow providers list", "airflow providers hooks", "cloudagent-etl migrate",
        "airflow pools set cloudagent_api", "airflow dags reserialize", "airflow dags list",
    ]  # fmt: skip
    for step in steps:
        assert step in INSTALL, step  # the README says what this test does
    uv = str(Path(sys.executable).with_name("uv"))
    dist = tmp_path / "dist"
    # `make wheel`'s build, from the checkout (its by-products are removed, as make wheel does).
    run([uv, "build", "-q", "--wheel", "-o", str(dist), str(ROOT)], dict(os.environ))
    for leftover in ("build", "include/cloudagent_etl.egg-info"):
        subprocess.run(["rm", "-rf", str(ROOT / leftover)], check=True)
    (wheel,) = dist.glob("cloudagent_etl-*.whl")
    constraints = tmp_path / "constraints.txt"
    constraints_from_lock(constraints)

    venv = tmp_path / "venv"
    run([uv, "venv", "-q", "--python", sys.executable, str(venv)], dict(os.environ))
    bin_dir = venv / "bin"
    home = tmp_path / "airflow-home"
    home.mkdir()
    database = tmp_path / "cloudagent.db"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_CLOUDAGENT_DEFAULT": json.dumps(
            {"conn_type": "cloudagent", "host": "http://127.0.0.1:9", "login": "u", "password": "k"}
        ),
        "AIRFLOW_CONN_CLOUDAGENT_DB": f"sqlite:///{database}",
        "AIRFLOW_CONN_CLOUDAGENT_PSEUDONYM": json.dumps(
            {"conn_type": "generic", "password": os.environ["CLOUDAGENT_PSEUDONYM_KEY"]}
        ),
        "AIRFLOW_VAR_CLOUDAGENT_CAMPAIGNS": '["Sales"]',
        **{k: v for k, v in os.environ.items() if k.startswith(("UV_", "PIP_", "SSL_", "REQUESTS_CA"))},
    }
    installed_at = time.monotonic()
    run(
        [uv, "pip", "install", "-q", "--python", str(bin_dir / "python"), "apache-airflow==3.3.2", str(wheel),
         "--constraint", str(constraints)],
        env, timeout=INSTALL_WORK_S,
    )  # fmt: skip
    install_s = time.monotonic() - installed_at
    frozen = run([uv, "pip", "freeze", "--python", str(bin_dir / "python")], env)
    assert not [
        tool
        for tool in ("pytest", "ruff", "mypy", "playwright", "hypothesis")
        if f"\n{tool}==" in f"\n{frozen}"
    ]

    (home / "dags").mkdir(parents=True)  # mkdir -p "$AIRFLOW_HOME/dags"
    airflow = str(bin_dir / "airflow")
    run([airflow, "db", "migrate"], env, timeout=180)
    assert "cloudagent-etl" in run([airflow, "providers", "list"], env)
    hooks = run([airflow, "providers", "hooks"], env)
    (row,) = [line for line in hooks.splitlines() if "cloudagent_airflow.hooks.CloudAgentHook" in line]
    assert row.split("|")[0].strip() == "cloudagent"  # the connection type the UI's form offers
    for dag_file in (ROOT / "dags").glob("*.py"):
        (home / "dags" / dag_file.name).write_text(dag_file.read_text())
    run([str(bin_dir / "cloudagent-etl"), "migrate", "--database-url", f"sqlite:///{database}"], env)
    run([airflow, "pools", "set", "cloudagent_api", "1", "CloudAgent API"], env)
    assert "cloudagent_dial_status" not in run([airflow, "dags", "list"], env)  # no dag-processor ran yet
    run([airflow, "dags", "reserialize"], env)
    listed = run([airflow, "dags", "list"], env)
    for dag_id in ("cloudagent_dial_status", "cloudagent_missing_data", "cloudagent_reprocess"):
        assert dag_id in listed
    conf = {"window_start": "2025-06-01T03:30:00+05:30", "window_end": "2025-06-02T03:30:00+05:30"}
    tested = run(
        [airflow, "dags", "test", "cloudagent_reprocess", "2025-06-02", "--conf", json.dumps(conf)], env
    )
    assert "failed" not in tested.lower().split("dagrun finished")[-1][:200], tested[-2000:]
    whole_s = time.monotonic() - began
    print(f"\ninstall of Airflow and the wheel {install_s:.0f} s, the whole test {whole_s:.0f} s")
