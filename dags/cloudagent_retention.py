"""
### CloudAgent personal data: retention

Daily. Purges the raw callback bodies of loaded payloads received more than
`CLOUDAGENT_RAW_RETENTION_DAYS` days ago (default 30) and the raw records of rejects as old (the payload
rows keep size, SHA-256, counts and times: coverage and audits still hold; a reprocess of a purged window
says when and under which setting its raw data was purged), and, when `CLOUDAGENT_HISTORY_RETENTION_DAYS`
is set, superseded versions loaded longer ago. Same as `cloudagent-etl purge`; `dry_run` only counts.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

from cloudagent_airflow.errors import terminal_errors_fail_fast
from cloudagent_airflow.hooks import CloudAgentDbHook


@dag(
    dag_id="cloudagent_retention",
    schedule=CronDataIntervalTimetable("0 5 * * *", timezone="Asia/Kolkata"),
    start_date=pendulum.datetime(2025, 1, 1, tz="Asia/Kolkata"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["cloudagent", "personal-data"],
    default_args={"owner": "data-engineering", "retries": 2, "retry_delay": timedelta(minutes=5)},
    params={"dry_run": Param(False, type="boolean", description="Only count what would be purged.")},
)
def cloudagent_retention() -> None:
    @task
    def purge() -> dict:
        from datetime import UTC, datetime

        from cloudagent_etl.personal_data.retention import RetentionSettings, purge

        params = get_current_context()["params"]
        with terminal_errors_fail_fast(), CloudAgentDbHook().engine() as engine:
            report = purge(
                engine, RetentionSettings.from_env(), now=datetime.now(UTC), dry_run=params["dry_run"]
            )
        return {"summary": report.summary(), "bodies": report.bodies,
                "reject_raw_records": report.reject_raw_records,
                "superseded_versions": report.superseded_versions, "dry_run": report.dry_run}  # fmt: skip

    purge()


cloudagent_retention()
