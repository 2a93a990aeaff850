"""How a backfill of missing days is started in Airflow: the ``airflow backfill create`` command and the
body of ``POST /api/v2/backfills``, for the page's buttons and ``cloudagent-etl status``.

No Airflow import: ``cloudagent-etl status`` finds :func:`backfill_command` through the entry point group
``cloudagent_etl.backfill_commands`` without loading Airflow.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudagent_etl.status import Backfill

#: The DAG whose runs sync dial status (``dags/cloudagent_dial_status.py``): backfills create its runs.
DIAL_STATUS_DAG_ID = "cloudagent_dial_status"
#: A backfill re-runs the days whose run failed and creates the days without a run; days that
#: succeeded stay as they are.
REPROCESS_BEHAVIOR = "failed"


#: How this installation runs the Airflow CLI (default ``airflow``): the local stack sets its wrapper, which
#: runs ``airflow`` with the stack's home and metadata database (a bare ``airflow`` would use ``~/airflow``).
AIRFLOW_COMMAND_SETTING = "CLOUDAGENT_AIRFLOW_COMMAND"


def airflow_command() -> list[str]:
    """The words that run the Airflow CLI here (``CLOUDAGENT_AIRFLOW_COMMAND``, a shell-quoted command)."""
    return shlex.split(os.environ.get(AIRFLOW_COMMAND_SETTING, "").strip() or "airflow")


def backfill_command(backfill: Backfill) -> str:
    """The ``airflow backfill create`` command of ``backfill`` (its days, only the missing campaigns of its
    accounts), through :func:`airflow_command`."""
    conf = json.dumps({"accounts": backfill.accounts})
    return shlex.join(
        [
            *airflow_command(), "backfill", "create", "--dag-id", DIAL_STATUS_DAG_ID,
            "--from-date", backfill.from_date.isoformat(), "--to-date", backfill.to_date.isoformat(),
            "--reprocess-behavior", REPROCESS_BEHAVIOR, "--dag-run-conf", conf,
        ]
    )  # fmt: skip


def backfill_api_body(backfill: Backfill) -> dict[str, Any]:
    """The body of Airflow's ``POST /api/v2/backfills`` for the same backfill."""
    return {
        "dag_id": DIAL_STATUS_DAG_ID,
        "from_date": backfill.from_date.isoformat(),
        "to_date": backfill.to_date.isoformat(),
        "reprocess_behavior": REPROCESS_BEHAVIOR,
        "dag_run_conf": {"accounts": backfill.accounts},
        "max_active_runs": 2,
    }
