"""A backfill of missing days as Airflow takes it: the command to paste and the REST body of the button."""

from __future__ import annotations

import json
import shlex
from datetime import date

from cloudagent_airflow.backfills import backfill_api_body, backfill_command
from cloudagent_etl.accounts import SyncTarget
from cloudagent_etl.cli import _backfill_command
from cloudagent_etl.status import Backfill

TARGETS = (SyncTarget("cloudagent_default", "Support"), SyncTarget("acme", "Renew'als"))
BACKFILL = Backfill(date(2025, 6, 2), date(2025, 6, 3), TARGETS)
ACCOUNTS = {"cloudagent_default": ["Support"], "acme": ["Renew'als"]}


def test_the_command_backfills_the_days_of_the_missing_campaigns_of_each_account_and_reruns_failed_days() -> (
    None
):
    words = shlex.split(backfill_command(BACKFILL))
    assert words[:5] == ["airflow", "backfill", "create", "--dag-id", "cloudagent_dial_status"]
    options = dict(zip(words[5::2], words[6::2], strict=True))
    assert options["--from-date"] == "2025-06-02T03:30:00+05:30"  # the logical date of 06-02's nightly run
    assert options["--to-date"] == "2025-06-03T03:30:00+05:30"
    assert options["--reprocess-behavior"] == "failed"
    assert json.loads(options["--dag-run-conf"]) == {"accounts": ACCOUNTS}


def test_the_rest_body_is_the_same_backfill() -> None:
    assert backfill_api_body(BACKFILL) == {
        "dag_id": "cloudagent_dial_status",
        "from_date": "2025-06-02T03:30:00+05:30",
        "to_date": "2025-06-03T03:30:00+05:30",
        "reprocess_behavior": "failed",
        "dag_run_conf": {"accounts": ACCOUNTS},
        "max_active_runs": 2,
    }


def test_cloudagent_etl_status_finds_the_command_through_the_installed_entry_point() -> None:
    assert _backfill_command() is backfill_command
