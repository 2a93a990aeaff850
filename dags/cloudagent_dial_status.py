"""
### CloudAgent dial status: nightly sync and backfills

Each run exports one data interval (the 24 h ending 03:30 IST on the run's date, started
`lookback_minutes` early) of **Campaign Dial Status** data, one campaign at a time, and merges it
into the warehouse table `dial_status`. Per campaign (one mapped instance each, named by campaign):

1. `request_export`: asks CloudAgent for the export through the shared 10/min limiter (pool
   `cloudagent_api`). Terminal API errors (bad apiKey, unknown campaign...) fail at once with the API's
   message; transient ones retry with backoff. Every try makes a fresh request and callback URL.
2. `wait_for_callback`: deferrable; waits for the callback to land, at most `callback_timeout_minutes`,
   then marks the request `expired` and fails naming campaign, window and uniqueId. Not retried: to
   retry a campaign, **clear its `request_export` with downstream**, which requests a fresh export.
3. `load`: normalizes and merges the landed payloads (idempotent, newer wins).

One campaign failing does not stop the others; `quality_checks` fails the run at the end, listing
every campaign that did not load. Backfill: `airflow backfill create --dag-id cloudagent_dial_status
--from-date ... --to-date ...` or the UI's backfill dialog. Logic lives in `cloudagent_etl.pipeline`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task, task_group
from cloudagent_airflow.assets import DIAL_STATUS
from cloudagent_airflow.operators import WaitForCallbackOperator


@dag(
    dag_id="cloudagent_dial_status",
    schedule=CronDataIntervalTimetable("30 3 * * *", timezone="Asia/Kolkata"),
    start_date=pendulum.datetime(2025, 1, 1, tz="Asia/Kolkata"),
    catchup=False,
    max_active_runs=2,
    doc_md=__doc__,
    tags=["cloudagent", "ingestion", "dial-status"],
    default_args={
        "owner": "data-engineering",
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
    },
    params={
        "campaigns": Param(
            None,
            type=["null", "array"],
            items={"type": "string"},
            description="Campaigns to sync; empty = the Variable cloudagent_campaigns.",
        ),
        "status": Param("All", enum=["All", "Fail", "Success", "Pending"], description="Lead status filter."),
        "dialstatus": Param("ALL", enum=["ALL", "Fail", "NoAnswer", "user_disconnected", "answered"]),
        "dispositions": Param("ALL", type="string", minLength=1, description="ALL or one disposition."),
        "sortby": Param("2", enum=["0", "1", "2"], description="0 all data, 1 created date, 2 updated date."),
        "lookback_minutes": Param(15, type="number", minimum=0, maximum=1440),
        "callback_timeout_minutes": Param(60, type="number", exclusiveMinimum=0, maximum=1440),
    },
)
def cloudagent_dial_status() -> None:
    @task
    def campaigns_to_sync() -> list[str]:
        from airflow.sdk import Variable
        from cloudagent_etl.pipeline import parse_campaigns

        override = get_current_context()["params"]["campaigns"]
        return parse_campaigns(override or Variable.get("cloudagent_campaigns", default=None) or [])

    @task(pool="cloudagent_api", map_index_template="{{ campaign }}")
    def request_export(campaign: str) -> str:
        from airflow.sdk.exceptions import AirflowFailException
        from cloudagent_airflow.hooks import CloudAgentDbHook, CloudAgentHook
        from cloudagent_etl import pipeline, settings
        from cloudagent_etl.errors import TerminalError

        context = get_current_context()
        context["campaign"] = campaign  # type: ignore[typeddict-unknown-key]  # names the mapped instance
        params = context["params"]
        window = pipeline.export_window(
            context["data_interval_start"], context["data_interval_end"], params["lookback_minutes"]
        )
        with CloudAgentDbHook().engine() as engine:
            try:
                return pipeline.request_export(
                    engine,
                    CloudAgentHook().get_settings(),
                    settings.callback_base_url(),
                    campaign,
                    *window,
                    pipeline.export_filters(params),
                    dag_id=context["dag"].dag_id,
                    run_id=context["run_id"],
                )
            except TerminalError as exc:
                raise AirflowFailException(str(exc)) from exc

    @task(map_index_template="{{ campaign }}")
    def load(request_id: str, campaign: str) -> dict:
        from cloudagent_airflow.hooks import CloudAgentDbHook, CloudAgentHook
        from cloudagent_etl import pipeline

        get_current_context()["campaign"] = campaign  # type: ignore[typeddict-unknown-key]
        with CloudAgentDbHook().engine() as engine:
            return pipeline.load_request(
                engine, request_id, timezone=CloudAgentHook().get_settings().timezone
            )

    @task_group(group_id="campaign")
    def sync_campaign(campaign: str) -> None:
        requested = request_export(campaign)
        waited = WaitForCallbackOperator(
            task_id="wait_for_callback",
            request_id=requested,
            campaign_name=campaign,
            timeout_minutes="{{ params.callback_timeout_minutes }}",
            map_index_template="{{ task.campaign_name }}",
        )
        load(waited.output, campaign)

    @task(trigger_rule="all_done", outlets=[DIAL_STATUS])
    def quality_checks(campaigns: list[str]) -> None:
        from airflow.sdk.exceptions import AirflowFailException
        from cloudagent_airflow.hooks import CloudAgentDbHook
        from cloudagent_etl import pipeline

        context = get_current_context()
        with CloudAgentDbHook().engine() as engine:
            problems = pipeline.quality_checks(
                engine, campaigns=campaigns, dag_id=context["dag"].dag_id, run_id=context["run_id"]
            )
        if problems:
            raise AirflowFailException("quality checks failed:\n- " + "\n- ".join(problems))

    campaigns = campaigns_to_sync()
    sync_campaign.expand(campaign=campaigns) >> quality_checks(campaigns)


cloudagent_dial_status()
