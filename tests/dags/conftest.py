"""One throw-away Airflow installation for the whole session: home, metadata DB, this repo's dags/plugins.

Airflow reads its configuration when it is first imported, so the environment is set here, at conftest
import, before any test module imports Airflow. The metadata DB is migrated once per session (its time
is printed with ``-s``); Airflow itself is imported once per test process (~1.4 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
PLUGINS_FOLDER = REPO / "plugins"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="cloudagent-airflow-home-"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    }
)
if str(PLUGINS_FOLDER) not in sys.path:
    sys.path.append(str(PLUGINS_FOLDER))


@pytest.fixture(scope="session")
def airflow_home() -> Iterator[Path]:
    """The session's Airflow home, with a migrated metadata database."""
    started = time.perf_counter()
    # The real command (not airflow.utils.db.initdb): it stamps the schema version that CLI runs check.
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True, capture_output=True
    )
    print(f"\n`airflow db migrate` took {time.perf_counter() - started:.1f} s")
    yield AIRFLOW_HOME
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)
