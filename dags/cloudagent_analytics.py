"""
### CloudAgent analytics: the dbt models, rebuilt when new data lands

Scheduled on the Asset `cloudagent_dial_status`, which a nightly sync (`quality_checks`) or a reprocess
updates when it has loaded: each update is followed by one run (updates that land while a run is going
are served by the next one).

- `dbt_build`: `dbt build` of the project in `dbt/`: the staging and mart models and every test (keys,
  accepted dial and lead statuses, every row's load run, freshness per account and campaign). A failing
  test fails the task, naming the test; the marts are not rebuilt from a source that failed its tests.
  Then `dbt docs generate` refreshes the documentation in `$CLOUDAGENT_DATA_DIR/dbt/target`.

dbt runs from its own virtual environment (`make dbt-venv`, or `CLOUDAGENT_DBT_EXECUTABLE`), on the
warehouse of the connection `cloudagent_db`; the models need PostgreSQL, so on a SQLite warehouse the task
is skipped saying so. See the README's analyst section for the marts.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from cloudagent_airflow.assets import DIAL_STATUS


@dag(
    dag_id="cloudagent_analytics",
    schedule=[DIAL_STATUS],
    start_date=pendulum.datetime(2025, 1, 1, tz="Asia/Kolkata"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["cloudagent", "analytics", "dbt"],
    default_args={"owner": "data-engineering", "retries": 1, "retry_delay": timedelta(minutes=2)},
)
def cloudagent_analytics() -> None:
    @task
    def dbt_build() -> dict:
        import logging

        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from cloudagent_airflow.hooks import CloudAgentDbHook
        from cloudagent_etl import analytics, settings

        database_url = CloudAgentDbHook().get_uri()
        if not analytics.runs_on(database_url):
            raise AirflowSkipException(
                "the dbt models run on PostgreSQL only; cloudagent_db is not PostgreSQL"
            )
        target = settings.data_dir() / "dbt" / "target"
        log = logging.getLogger(__name__)
        try:
            for command in (["build"], ["docs", "generate"]):
                log.info("%s", analytics.run_dbt(command, database_url, target_path=target).stdout)
        except analytics.DbtError as exc:
            if exc.exit_code == 1:  # a model or test failed: a retry would fail the same way
                raise AirflowFailException(str(exc)) from None
            raise
        return {"target": str(target), "docs": str(target / "index.html")}

    dbt_build()


cloudagent_analytics()
