"""
### CloudAgent dial status: nightly sync and backfills

Each run exports one data interval of **Campaign Dial Status** data for every configured CloudAgent
account (the 24 h ending 03:30 on the run's date, in each account's own time zone, started
`lookback_minutes` early) and merges it into the warehouse table `dial_status`. First, once per run:

- `preflight`: fails in seconds, naming the setting to fix, when the accounts to sync are not a valid
  configuration (the Variable `cloudagent_accounts`, or `cloudagent_campaigns` for the one connection
  `cloudagent_default`), an account's connection is missing, not of type `cloudagent` or incomplete, two
  connections of one account list the same campaign, no pseudonym key is set (connection
  `cloudagent_pseudonym`), the database (`cloudagent_db`) does not answer or is
  not migrated, or the callback URL (`CLOUDAGENT_CALLBACK_BASE_URL`) does not reach the receiver of this
  database (or, with a real CloudAgent, is a loopback or private address). Nothing is requested then.
  It also asks CloudAgent whether it accepts each account's apiKey and campaigns, spending no export (a
  request with an empty callBackUrl, which CloudAgent refuses only after accepting the account and the
  campaign), only about campaigns that are new, last failed or whose connection changed
  (`CLOUDAGENT_ACCOUNT_CHECK=off` turns it off). A campaign or account CloudAgent refuses is left out of
  the run, alerted once and shown as rejected on the CloudAgent page; the others are synced.
- `sweep`: requests past their callback deadline become `expired`; payloads that landed but were never
  loaded (late callbacks, a load that died) are loaded.
- `exports_to_sync`: every campaign of every account with its window (the accounts taking turns).

Then per campaign of each account (one mapped instance each, named by campaign, prefixed with the
connection unless it is `cloudagent_default`):

1. `wait_for_window`: an account whose day ends after 03:30 IST waits (deferred) for its window to close.
2. `request_export`: asks CloudAgent through the account's shared 10/min limiter (pool `cloudagent_api`:
   one slot per account), unless an export of the same window is still live (then it waits for that one:
   no API call). Terminal API errors (bad apiKey, unknown campaign...) fail at once with the API's message
   and the connection's name; transient ones retry.
3. `wait_for_callback`: deferrable until the export's deadline (`callback_timeout_minutes`, every part of
   a multi-part export); then the export is `expired` and requested again, up to `re_requests` times,
   before the task fails naming campaign, window and uniqueId (at most `(1 + re_requests) x
   callback_timeout_minutes` in all).
4. `load`: normalizes and merges the landed payloads under the account (idempotent, newer wins), and
   reports its lineage to OpenLineage (the export read, the warehouse tables written) when the
   OpenLineage provider is configured.

The `accounts` param (connection id -> campaigns), when not empty, replaces the configuration for this
run: a backfill of one account names only that one. The `campaigns` param replaces the campaign list of a
deployment with one account. A run triggered without a logical date exports the last complete nightly
interval. One campaign (or account) failing does not stop the others; `quality_checks` then fails the run
listing every campaign that did not load, and `alert_unloaded` sends them through the notifier of the
connection `cloudagent_alerts` (without it, the alert is only logged). Logic lives in
`cloudagent_etl.pipeline`; see the README for what each kind of date means and for backfills.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task, task_group

from cloudagent_airflow.assets import DIAL_STATUS
from cloudagent_airflow.errors import terminal_errors_fail_fast
from cloudagent_airflow.hooks import CloudAgentDbHook, CloudAgentHook, api_key_of, pseudonym_key
from cloudagent_airflow.operators import LoadExportOperator, WaitForCallbackOperator, WaitForWindowOperator
from cloudagent_airflow.preflight import preflight_or_fail
from cloudagent_etl.api.request import DIALSTATUS_VALUES, SORTBY_VALUES, STATUS_VALUES, ExportFilters

FILTERS = ExportFilters()  # the defaults of the filter params


@dag(
    dag_id="cloudagent_dial_status",
    schedule=CronDataIntervalTimetable("30 3 * * *", timezone="Asia/Kolkata"),
    start_date=pendulum.datetime(2025, 1, 1, tz="Asia/Kolkata"),
    catchup=False,
    max_active_runs=2,
    doc_md=__doc__,
    tags=["cloudagent", "ingestion", "dial-status"],
    default_args={"owner": "data-engineering", "retries": 3, "retry_delay": timedelta(seconds=30),
                  "retry_exponential_backoff": True},
    params={
        "accounts": Param(None, type=["null", "object"], additionalProperties={"type": "array"},
                          description="Accounts of this run: connection id -> campaigns (a backfill of one "
                          "account names only that one); empty = the Variable cloudagent_accounts."),
        "campaigns": Param(None, type=["null", "array"], items={"type": "string"},
                           description="Campaigns of this run when one account is configured; empty = the "
                           "Variable cloudagent_campaigns."),
        "status": Param(FILTERS.status, enum=list(STATUS_VALUES), description="Lead status filter."),
        "dialstatus": Param(FILTERS.dialstatus, enum=list(DIALSTATUS_VALUES)),
        "dispositions": Param(FILTERS.dispositions, type="string", minLength=1,
                              description="ALL or one disposition."),
        "sortby": Param(FILTERS.sortby, enum=list(SORTBY_VALUES),
                        description="0 all data, 1 created date, 2 updated date."),
        "lookback_minutes": Param(15, type="number", minimum=0, maximum=1440,
                                  description="Minutes each window starts before its data interval, so that "
                                  "consecutive windows overlap (the merge is idempotent)."),
        "callback_timeout_minutes": Param(60, type="number", exclusiveMinimum=0, maximum=1440,
                                          description="Minutes to wait for an export's callback before it "
                                          "expires and is requested again (re_requests)."),
        "re_requests": Param(2, type="integer", minimum=0, maximum=5,
                             description="Times an export whose callback never came is requested again."),
    },
)  # fmt: skip
def cloudagent_dial_status() -> None:
    @task(retries=0)
    def preflight() -> None:
        from cloudagent_etl import pipeline, status

        context = get_current_context()
        window = pipeline.export_window(
            context.get("data_interval_start"), context.get("data_interval_end"),
            context["params"]["lookback_minutes"],
        )  # fmt: skip
        preflight_or_fail(context["params"], day=status.window_day(*window))

    @task
    def sweep() -> dict:
        from cloudagent_etl import pipeline

        with CloudAgentDbHook().engine() as engine:
            report = pipeline.sweep(engine, api_key_of=api_key_of, pseudonym_key=pseudonym_key())
        return {"expired": report.expired, "loaded": list(report.loaded), "failed": report.failed}

    @task
    def exports_to_sync() -> list[dict]:
        from cloudagent_airflow.accounts import run_accounts
        from cloudagent_etl import pipeline, preflight, targets

        context = get_current_context()
        with terminal_errors_fail_fast():
            accounts = run_accounts(context["params"])
            if preflight.account_check_enabled():  # the preflight just asked: leave out what was refused
                with CloudAgentDbHook().engine() as engine:
                    accounts = targets.without_rejected(engine, accounts)
            timezones = {conn_id: CloudAgentHook(conn_id).get_settings().timezone for conn_id in accounts}
            return pipeline.plan_exports(
                accounts, timezones, context.get("data_interval_start"), context.get("data_interval_end"),
                context["params"]["lookback_minutes"],
            )  # fmt: skip

    @task(pool="cloudagent_api", map_index_template="{{ label }}")
    def request_export(conn_id: str, campaign: str, label: str, window_start: str, window_end: str) -> str:
        from cloudagent_etl import pipeline, settings
        from cloudagent_etl.exports import Export

        context = get_current_context()
        context["label"] = label  # type: ignore[typeddict-unknown-key]  # names the mapped instance
        params, dag_id, run_id = context["params"], context["dag"].dag_id, context["run_id"]
        with terminal_errors_fail_fast(f"connection {conn_id}"), CloudAgentDbHook().engine() as engine:
            api = CloudAgentHook(conn_id).get_settings()
            window = (datetime.fromisoformat(window_start), datetime.fromisoformat(window_end))
            filters = ExportFilters.from_params(params)
            export = Export.of(api, campaign, window, filters, settings.callback_base_url(), conn_id)
            timeout = timedelta(minutes=params["callback_timeout_minutes"])
            return pipeline.request_export(
                engine, api, export, callback_timeout=timeout, dag_id=dag_id, run_id=run_id
            )

    @task_group(group_id="campaign")
    def sync_campaign(conn_id: str, campaign: str, label: str, window_start: str, window_end: str) -> None:
        window_closed = WaitForWindowOperator(
            task_id="wait_for_window",
            window_end=window_end,
            export_label=label,
            map_index_template="{{ task.export_label }}",
        )
        requested = request_export(conn_id, campaign, label, window_start, window_end)
        waited = WaitForCallbackOperator(
            task_id="wait_for_callback",
            request_id=requested,
            cloudagent_conn_id=conn_id,
            campaign_name=label,
            timeout_minutes="{{ params.callback_timeout_minutes }}",
            re_requests="{{ params.re_requests }}",
            map_index_template="{{ task.campaign_name }}",
        )
        window_closed >> requested
        LoadExportOperator(
            task_id="load",
            request_id=waited.output,
            cloudagent_conn_id=conn_id,
            export_label=label,
            map_index_template="{{ task.export_label }}",
        )

    @task(trigger_rule="all_done", outlets=[DIAL_STATUS])
    def quality_checks(exports: list[dict] | None) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        if exports is None:  # not a second error: the run must fail (a skipped leaf would pass it)
            raise AirflowFailException(
                "nothing to check: the run stopped before it had a campaign list; the failed task before "
                "this one (preflight or exports_to_sync) names the setting to fix"
            )

        from cloudagent_etl import pipeline

        context = get_current_context()
        with CloudAgentDbHook().engine() as engine:
            problems = pipeline.quality_checks(
                engine, targets=pipeline.targets_of(exports), dag_id=context["dag"].dag_id,
                run_id=context["run_id"],
            )  # fmt: skip
        if problems:
            raise AirflowFailException("quality checks failed:\n- " + "\n- ".join(problems))

    @task(trigger_rule="all_done")
    def alert_unloaded(exports: list[dict] | None) -> bool:
        """Notify (connection cloudagent_alerts; logs only without it) when campaigns did not load."""
        from cloudagent_airflow.alerts import send_alert
        from cloudagent_etl import alerts, pipeline

        context = get_current_context()
        window = pipeline.export_window(
            context.get("data_interval_start"),
            context.get("data_interval_end"),
            context["params"]["lookback_minutes"],
        )
        with CloudAgentDbHook().engine() as engine:
            alert = alerts.unloaded_in_run(
                engine, dag_id=context["dag"].dag_id, run_id=context["run_id"],
                targets=None if exports is None else pipeline.targets_of(exports), window=window,
            )  # fmt: skip
        return send_alert(alert, context)

    exports = exports_to_sync()
    preflight() >> sweep() >> exports
    sync_campaign.expand_kwargs(exports) >> [quality_checks(exports), alert_unloaded(exports)]


cloudagent_dial_status()
