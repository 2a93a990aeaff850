"""
### CloudAgent dial status: alert on data still missing

Hourly. Each run looks at the campaign × IST days whose nightly window (03:30 IST to 03:30 IST the next
day) closed `missing_after_hours` hours before a moment of the run's hour, and alerts on those not
loaded yet (never requested, requested, received but not loaded, expired or failed), naming campaign,
window, state and the last attempt's uniqueId and error. Each day is checked in the one hour its
threshold passes, so an alert is sent once per missing day. Days before a campaign's syncing started (the
Variable `cloudagent_sync_start`, else the day it was first configured or requested) are not missing, and
a campaign CloudAgent rejected is not either: the run that found the rejection alerted on it once.

The alert goes through the notifier of the connection `cloudagent_alerts` (`smtp` with extra `to`, or
`slackwebhook`); without that connection it is only logged. The campaigns are those of the configured
accounts (the Variable `cloudagent_accounts`, else `cloudagent_campaigns`). The coverage itself is on the
CloudAgent page and in `cloudagent-etl status`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

from cloudagent_airflow.hooks import CloudAgentDbHook


@dag(
    dag_id="cloudagent_missing_data",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["cloudagent", "alerts", "dial-status"],
    default_args={"owner": "data-engineering", "retries": 2, "retry_delay": timedelta(minutes=2)},
    params={
        "missing_after_hours": Param(6, type="number", minimum=0, maximum=24 * 30,
                                     description="Alert when a day is still missing this long after its "
                                     "window closed."),
    },
)  # fmt: skip
def cloudagent_missing_data() -> None:
    @task
    def alert_overdue() -> bool:
        from cloudagent_airflow.accounts import run_accounts, sync_start
        from cloudagent_airflow.alerts import send_alert
        from cloudagent_etl import alerts, targets
        from cloudagent_etl.accounts import sync_targets

        context = get_current_context()
        accounts = run_accounts({})
        with CloudAgentDbHook().engine() as engine:
            # A campaign configured now is synced from the window open now: coverage starts there.
            targets.record_seen(engine, sync_targets(accounts), targets.current_window_day())
            alert = alerts.overdue(
                engine,
                accounts=accounts,
                sync_start=sync_start(),
                hours=float(context["params"]["missing_after_hours"]),
                since=context["data_interval_start"],
                until=context["data_interval_end"],
            )
        return send_alert(alert, context)

    alert_overdue()


cloudagent_missing_data()
