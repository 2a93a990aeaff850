"""
### CloudAgent dial status: reprocess landed payloads

Manual DAG. Re-normalizes and re-merges the callback payloads **already landed** for the given
campaigns and window, with no CloudAgent API call: use it after a normalization rule is fixed or a
warehouse column is added. Idempotent (the merge keeps the newest version of every record), so it
can be run as often as needed.

Params: `window_start` / `window_end` (ISO date-times; requests whose window overlaps are picked),
`campaigns` (empty = the Variable `cloudagent_campaigns`). Example:
`airflow dags trigger cloudagent_reprocess -c '{"window_start": "2025-06-01T00:00:00+05:30",
"window_end": "2025-06-08T00:00:00+05:30", "campaigns": ["Sales"]}'`
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from cloudagent_airflow.assets import DIAL_STATUS
from cloudagent_airflow.errors import terminal_errors_fail_fast
from cloudagent_airflow.hooks import CloudAgentDbHook, api_key_of, pseudonym_key
from cloudagent_airflow.preflight import preflight_or_fail


@dag(
    dag_id="cloudagent_reprocess",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="Asia/Kolkata"),
    catchup=False,
    doc_md=__doc__,
    tags=["cloudagent", "reprocess", "dial-status"],
    default_args={"owner": "data-engineering", "retries": 1, "retry_delay": timedelta(minutes=1)},
    params={
        "window_start": Param(
            None, type=["null", "string"], format="date-time", description="ISO, with offset."
        ),
        "window_end": Param(
            None, type=["null", "string"], format="date-time", description="ISO, with offset."
        ),
        "accounts": Param(
            None,
            type=["null", "object"],
            additionalProperties={"type": "array"},
            description="Accounts to reprocess: connection id -> campaigns; empty = the configured ones.",
        ),
        "campaigns": Param(
            None,
            type=["null", "array"],
            items={"type": "string"},
            description="Campaigns to reprocess when one account is configured; empty = all configured.",
        ),
    },
)
def cloudagent_reprocess() -> None:
    @task(retries=0)
    def preflight() -> None:
        """The dial-status DAG's checks but the callback URL: this DAG requests nothing."""
        preflight_or_fail(get_current_context()["params"], callback=False)

    @task
    def landed_requests() -> list[str]:
        from cloudagent_airflow.accounts import run_accounts
        from cloudagent_etl import landing, pipeline
        from cloudagent_etl.accounts import sync_targets

        params = get_current_context()["params"]
        with terminal_errors_fail_fast(), CloudAgentDbHook().engine() as engine:
            window = pipeline.parse_window(params["window_start"], params["window_end"])
            targets = [(target.conn_id, target.campaign) for target in sync_targets(run_accounts(params))]
            return landing.requests_with_payloads(engine, targets, *window)

    @task(outlets=[DIAL_STATUS], map_index_template="{{ request_label }}")
    def reload(request_id: str) -> dict:
        from cloudagent_etl import landing, pipeline

        with terminal_errors_fail_fast(), CloudAgentDbHook().engine() as engine:
            label = landing.describe_request(engine, request_id)
            get_current_context()["request_label"] = label  # type: ignore[typeddict-unknown-key]
            # The apiKey of the request's account, redacted wherever a payload carries it.
            api_key = api_key_of(landing.require_export_request(engine, request_id).conn_id)
            return pipeline.load_request(engine, request_id, api_key=api_key, pseudonym_key=pseudonym_key())

    requests = landed_requests()
    preflight() >> requests
    reload.expand(request_id=requests)


cloudagent_reprocess()
