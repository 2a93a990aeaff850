"""The load reports its lineage through Airflow's OpenLineage provider, and lineage never fails a load.

The provider reads its transport once per process, when Airflow loads its plugins: each run here is its own
``airflow dags test`` process (a private copy of the migrated metadata), with the provider's file transport
(``AIRFLOW__OPENLINEAGE__TRANSPORT``) writing the events the test then reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cloudagent_etl.warehouse.tables import load_runs
from tests.checks import LOGICAL_DATE, Sync, assert_warehouse_matches
from tests.timing import DEADLINE_S

pytestmark = pytest.mark.usefixtures("airflow_home")

#: One `airflow dags test` of one campaign: ~20 s on a quiet machine.
RUN_WORK_S = 120


def dags_test(airflow_home: Path, folder: Path, transport: dict[str, Any]) -> str:
    """Run the nightly DAG for one campaign in its own process; its output (the run must succeed)."""
    home = folder / "airflow-home"
    home.mkdir()
    shutil.copy(airflow_home / "airflow.db", home / "airflow.db")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "cloudagent-test",
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    command = [airflow, "dags", "test", "cloudagent_dial_status", LOGICAL_DATE.date().isoformat(), "--conf",
               json.dumps({"campaigns": ["Alpha"]})]  # fmt: skip
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=RUN_WORK_S + DEADLINE_S, check=False
    )
    output = done.stdout + done.stderr
    (folder / "dags-test.log").write_text(output)  # kept for a failure's diagnosis
    assert done.returncode == 0, output[-4000:]
    return output


def events_of(path: Path, job_suffix: str) -> list[dict]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [event for event in events if event["job"]["name"].endswith(job_suffix)]


@pytest.mark.parametrize("db_kind", ["postgres"])
@pytest.mark.slow
@pytest.mark.timeout(RUN_WORK_S + 2 * DEADLINE_S + 120)
def test_the_load_reports_the_export_it_read_and_the_tables_it_wrote(
    sync: Sync, airflow_home: Path, tmp_path: Path
) -> None:
    events_file = tmp_path / "openlineage.jsonl"

    dags_test(airflow_home, tmp_path, {"type": "file", "log_file_path": str(events_file), "append": True})

    assert_warehouse_matches(sync)
    (request,) = sync.requests()
    completes = [e for e in events_of(events_file, "campaign.load") if e["eventType"] == "COMPLETE"]
    assert len(completes) == 1, [e["eventType"] for e in events_of(events_file, "campaign.load")]
    (event,) = completes

    (read,) = event["inputs"]
    host = sync.simulator.base_url.split("//", 1)[1].split(":", 1)[0]
    assert read["namespace"] == f"cloudagent://{host}"
    assert read["name"] == (
        f"{request.account}/Alpha/{request.window_start.isoformat()}/{request.window_end.isoformat()}"
    )
    export_facet = read["facets"]["cloudagent_export"]
    assert export_facet["uniqueId"] == request.unique_id
    assert export_facet["requestId"] == request.request_id

    url = sync.engine.url
    namespace = f"postgres://{url.host}:{url.port or 5432}"
    written = {(output["namespace"], output["name"]): output for output in event["outputs"]}
    assert set(written) == {
        (namespace, f"{url.database}.public.{table}")
        for table in ("dial_status", "dial_status_superseded", "dial_status_rejects", "load_runs")
    }
    with sync.engine.connect() as conn:
        (run,) = conn.execute(select(load_runs)).mappings().all()
    current = written[(namespace, f"{url.database}.public.dial_status")]
    assert current["outputFacets"]["outputStatistics"]["rowCount"] == run["inserted"] + run["updated"] > 0

    load_facet = event["run"]["facets"]["cloudagent_load"]
    assert load_facet["requestId"] == request.request_id
    assert (load_facet["rowsIn"], load_facet["inserted"], load_facet["rejected"]) == (
        run["rows_in"],
        run["inserted"],
        run["rejected"],
    )
    assert event["run"]["facets"]["parent"]["job"]["name"] == "cloudagent_dial_status"
    assert sync.simulator.api_key not in events_file.read_text()


@pytest.mark.parametrize("db_kind", ["sqlite"])
@pytest.mark.slow
@pytest.mark.timeout(RUN_WORK_S + 2 * DEADLINE_S + 120)
def test_a_lineage_backend_that_fails_never_fails_the_load(
    sync: Sync, airflow_home: Path, tmp_path: Path
) -> None:
    """The transport's file is a directory: every emission fails; the run, and its load, succeed."""
    not_a_file = tmp_path / "events-are-not-writable-here"
    not_a_file.mkdir()

    dags_test(airflow_home, tmp_path, {"type": "file", "log_file_path": str(not_a_file), "append": True})

    assert_warehouse_matches(sync)
    assert [r.state for r in sync.requests()] == ["loaded"]
    assert list(not_a_file.iterdir()) == []
