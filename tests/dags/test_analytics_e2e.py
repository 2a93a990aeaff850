"""The analytics DAG: a nightly run that loads queues it (its Asset), and its run builds the dbt models."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from cloudagent_airflow.assets import DIAL_STATUS
from cloudagent_etl.warehouse.tables import dial_status
from tests.checks import Sync

pytestmark = pytest.mark.usefixtures("airflow_home")


def queued_for(dag_id: str) -> list[str]:
    """The Asset URIs whose events wait to trigger ``dag_id`` (what the scheduler turns into a run)."""
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = select(AssetModel.uri).join(AssetDagRunQueue, AssetDagRunQueue.asset_id == AssetModel.id)
        return list(session.scalars(query.where(AssetDagRunQueue.target_dag_id == dag_id)))


def deploy(unpaused: str) -> None:
    """What the dag processor does (the DAGs and their Asset references in the metadata DB), and unpause."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.models import DagModel
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()  # the bundle "dags-folder" that the DAGs belong to
    # Parsed as the dag processor and `dag.test()` parse it (relative to the bundle): the same serialized
    # DAGs, so the runs later tests make in this metadata database find one version of each, not two.
    (bundle,) = [bundle for bundle in manager.get_all_dag_bundles() if bundle.name == "dags-folder"]
    if not bundle.is_initialized:
        bundle.initialize()
    bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
    sync_bag_to_db(bag, bundle.name, bundle.version)
    with create_session() as session:
        session.execute(
            DagModel.__table__.update().where(DagModel.dag_id == unpaused).values(is_paused=False)
        )


@pytest.mark.slow
@pytest.mark.parametrize("db_kind", ["postgres"])
def test_a_nightly_run_that_loads_triggers_one_dbt_build_of_the_marts(
    sync: Sync, dbt_venv: Path, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLOUDAGENT_DATA_DIR", str(tmp_path / "data"))
    analytics_dag = sync.dags["cloudagent_analytics"]
    assert list(analytics_dag.timetable.asset_condition.objects) == [DIAL_STATUS]
    deploy(unpaused="cloudagent_analytics")
    assert queued_for("cloudagent_analytics") == []

    state, _ = sync.run(campaigns=["Alpha"])

    assert state == "success"
    assert queued_for("cloudagent_analytics") == [DIAL_STATUS.uri]  # the scheduler would start one run

    run = analytics_dag.test()

    (ti,) = run.get_task_instances()
    assert (run.state, ti.state) == ("success", "success")
    with sync.engine.connect() as conn:
        leads = conn.execute(select(func.count()).select_from(dial_status)).scalar_one()
        funnel = conn.execute(text("SELECT SUM(leads) FROM analytics_marts.daily_funnel")).scalar_one()
    assert funnel == leads > 0
    assert (tmp_path / "data" / "dbt" / "target" / "index.html").is_file()


@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_on_a_sqlite_warehouse_the_dbt_build_is_skipped(sync: Sync) -> None:
    run = sync.dags["cloudagent_analytics"].test()

    (ti,) = run.get_task_instances()
    assert ti.state == "skipped"
