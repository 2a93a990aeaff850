"""The DAG runs' fixtures: freshly parsed DAGs, and a `Sync` wired to the session's receiver and simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cloudagent_dev.databases import connection_uri
from cloudagent_etl.db import create_db_engine
from tests.checks import CAMPAIGNS, Sync


@pytest.fixture
def dags(airflow_home) -> dict:
    """Freshly parsed DAGs: an in-process run's conf leaks into the DAG object's params."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.fixtures.airflow import DAGS_FOLDER

    return DagBag(dag_folder=str(DAGS_FOLDER)).dags


@pytest.fixture
def sync(monkeypatch, receiver, fresh_simulator, dags) -> Iterator[Sync]:
    api = {
        "conn_type": "cloudagent",
        "host": fresh_simulator.base_url,
        "login": fresh_simulator.user,
        "password": fresh_simulator.api_key,
    }
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DEFAULT", json.dumps(api))
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", connection_uri(receiver.db_url))
    monkeypatch.setenv("AIRFLOW_VAR_CLOUDAGENT_CAMPAIGNS", json.dumps(CAMPAIGNS))
    monkeypatch.setenv("CLOUDAGENT_CALLBACK_BASE_URL", receiver.base_url)
    # These runs are about the exports' own path (what an error of CloudAgent does to a request); the
    # preflight's account check is on in test_preflight_runs.py and in the local stack's runs.
    monkeypatch.setenv("CLOUDAGENT_ACCOUNT_CHECK", "off")
    engine = create_db_engine(receiver.db_url)
    yield Sync(engine, fresh_simulator, dags)
    engine.dispose()
