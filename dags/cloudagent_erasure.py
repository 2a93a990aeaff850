"""
### CloudAgent personal data: erase one person on request

Manual DAG, the UI's form for `cloudagent-etl erase`. Removes the person of `phone` (any common writing:
`+91 98765 43210`, `098765-43210`, `9876543210`) from every raw callback body kept (rewritten without their
records), `dial_status`, every superseded version and the rejects, in one transaction that waits for
running loads; writes a receipt (pseudonym, counts per table, when, `requested_by`, `reason`; never the
number) to `erasure_receipts`; and adds the pseudonym to `suppressed_pseudonyms`, so later loads keep the
person out. Erasing again finds nothing and changes nothing. `dry_run` only reports the counts.

The number given here stays in the run's configuration in Airflow's metadata database (as any DAG run
param does): delete the run afterwards (Browse > DAG Runs) or use the command line instead.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from cloudagent_airflow.errors import terminal_errors_fail_fast
from cloudagent_airflow.hooks import CloudAgentDbHook, pseudonym_key


@dag(
    dag_id="cloudagent_erasure",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="Asia/Kolkata"),
    catchup=False,
    doc_md=__doc__,
    tags=["cloudagent", "personal-data"],
    default_args={"owner": "data-engineering", "retries": 1, "retry_delay": timedelta(minutes=1)},
    params={
        "phone": Param("", type="string", minLength=1, description="The person's phone number, any writing."),
        "reason": Param(None, type=["null", "string"], description="Why (kept in the receipt)."),
        "requested_by": Param(None, type=["null", "string"], description="Who asked (kept in the receipt)."),
        "dry_run": Param(False, type="boolean", description="Only count what would be removed."),
    },
)
def cloudagent_erasure() -> None:
    @task
    def erase() -> dict:
        from cloudagent_etl.personal_data.erasure import erase
        from cloudagent_etl.personal_data.phones import phone_region

        params = get_current_context()["params"]
        with terminal_errors_fail_fast(), CloudAgentDbHook().engine() as engine:
            report = erase(
                engine,
                params["phone"],
                key=pseudonym_key(),
                region=phone_region(),
                requested_by=params["requested_by"],
                reason=params["reason"],
                dry_run=params["dry_run"],
            )
        return {"phone_pseudonym": report.phone_pseudonym, "counts": dict(report.counts),
                "receipt_id": report.receipt_id, "summary": report.summary()}  # fmt: skip

    erase()


cloudagent_erasure()
