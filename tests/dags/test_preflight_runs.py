"""A wrong setting fails the run in its first task, in seconds, naming the setting; nothing is requested.

Each case runs the real DAG under ``dag.test()`` against the session's receiver and simulator, with one
setting broken. The ``preflight`` task fails (no retry), nothing downstream runs, and ``quality_checks``
fails the run pointing back at it (a skipped last task would let the run pass) instead of a TypeError.
"""

from __future__ import annotations

import json
import time

import pytest

from cloudagent_dev.processes import free_port
from tests.checks import Sync
from tests.timing import DEADLINE_S

pytestmark = pytest.mark.usefixtures("airflow_home")


def _broken(monkeypatch: pytest.MonkeyPatch, sync: Sync, case: str, tmp_path) -> str:
    """Break one setting; return the text the failure must name."""
    if case == "dead callback URL":
        monkeypatch.setenv("CLOUDAGENT_CALLBACK_BASE_URL", f"http://127.0.0.1:{free_port()}")
        return "CLOUDAGENT_CALLBACK_BASE_URL: http://127.0.0.1"
    if case == "callback URL of another server":
        monkeypatch.setenv("CLOUDAGENT_CALLBACK_BASE_URL", sync.simulator.base_url)
        return "but not as a cloudagent-etl receiver"
    if case == "unmigrated database":
        monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", f"sqlite:///{tmp_path / 'empty.db'}")
        return "connection cloudagent_db: the database is not migrated"
    if case == "incomplete connection":
        connection = {"conn_type": "cloudagent", "host": sync.simulator.base_url, "login": "u"}
        monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DEFAULT", json.dumps(connection))
        return "connection cloudagent_default: its password (the apiKey) not set"
    if case == "campaigns not a list":
        monkeypatch.setenv("AIRFLOW_VAR_CLOUDAGENT_CAMPAIGNS", '["Alpha", "Beta"')
        return "Variable cloudagent_campaigns: campaigns is not a valid JSON list"
    if case == "no pseudonym key":  # neither the connection nor the environment variable
        monkeypatch.delenv("CLOUDAGENT_PSEUDONYM_KEY")
        return "connection cloudagent_pseudonym (its password; or CLOUDAGENT_PSEUDONYM_KEY): not set"
    if case == "empty Variable":
        monkeypatch.setenv("AIRFLOW_VAR_CLOUDAGENT_CAMPAIGNS", "")
        return "Variable cloudagent_campaigns: no campaigns to sync"
    account = {"conn_type": "cloudagent", "host": sync.simulator.base_url, "login": sync.simulator.user,
               "password": sync.simulator.api_key}  # fmt: skip
    if case == "accounts not an object":
        monkeypatch.setenv("AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS", '["Alpha"]')
        return "Variable cloudagent_accounts must be a JSON object mapping connection ids to campaign lists"
    accounts = {"cloudagent_default": ["Alpha"], "cloudagent_second": ["Beta"]}
    monkeypatch.setenv("AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS", json.dumps(accounts))
    if case == "unknown connection":
        return "connection cloudagent_second: not defined (add it, or set AIRFLOW_CONN_CLOUDAGENT_SECOND)"
    if case == "connection of another type":
        monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_SECOND", json.dumps({**account, "conn_type": "http"}))
        return "connection cloudagent_second: is of type 'http': a CloudAgent account is a connection of type"
    assert case == "one account under two connections"
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_SECOND", json.dumps(account))
    monkeypatch.setenv(
        "AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS", json.dumps({**accounts, "cloudagent_second": ["Alpha"]})
    )
    return (
        "campaign 'Alpha' is listed under connections cloudagent_default and cloudagent_second, which are "
        f"both the account {sync.simulator.user!r}"
    )


@pytest.mark.parametrize("db_kind", ["sqlite"])
@pytest.mark.parametrize(
    "case",
    [
        "dead callback URL",
        "callback URL of another server",
        "unmigrated database",
        "incomplete connection",
        "campaigns not a list",
        "empty Variable",
        "no pseudonym key",
        "accounts not an object",
        "unknown connection",
        "connection of another type",
        "one account under two connections",
    ],
)
def test_a_wrong_setting_fails_the_run_at_preflight_naming_it(
    sync: Sync,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path,
    case: str,
) -> None:
    named = _broken(monkeypatch, sync, case, tmp_path)
    began = time.monotonic()

    state, tis = sync.run()

    seconds = time.monotonic() - began
    assert state == "failed"
    assert tis[("preflight", -1)].state == "failed"
    assert tis[("preflight", -1)].try_number == 1
    assert tis[("quality_checks", -1)].state == "failed"
    assert tis[("alert_unloaded", -1)].state == "success"  # it sent the alert
    ends = ("preflight", "quality_checks", "alert_unloaded")
    others = {key: ti.state for key, ti in tis.items() if key[0] not in ends}
    assert set(others.values()) <= {"upstream_failed", None}, others
    assert sync.simulator.requests_log() == []  # no export was requested
    assert sync.requests() == []
    out = capfd.readouterr().out
    assert named in out
    assert "the run stopped before it had a campaign list" in out
    (alert,) = [r.getMessage() for r in caplog.records if r.name == "cloudagent_airflow.alerts"]
    assert "(every campaign)" in alert
    assert "the run stopped before it had a campaign list (see its preflight" in alert
    assert "TypeError" not in out
    # No retry of the preflight and no export (both asserted above); within the one deadline, no other wait.
    assert seconds < DEADLINE_S


@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_the_account_check_leaves_a_rejected_campaign_out_alerts_once_and_spends_no_export(
    sync: Sync, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CLOUDAGENT_ACCOUNT_CHECK", "on")
    check_answer = "callBackUrl cannot be empty (OR) it should contain 'http' or 'https'"

    state, tis = sync.run(campaigns=["Alpha", "Salse"])

    assert tis[("preflight", -1)].state == "success"
    assert state == "success"  # Alpha synced; Salse left out, shown as rejected, not missing
    log = sync.simulator.requests_log()
    assert [(e["campaign_name"], e["message"]) for e in log if e["outcome"] != "accepted"] == [
        ("Alpha", check_answer),
        ("Salse", "campaignName is invalid"),
    ]
    assert [e["campaign_name"] for e in log if e["outcome"] == "accepted"] == ["Alpha"]
    assert [r.campaign_name for r in sync.requests()] == ["Alpha"]
    (alert,) = [r.getMessage() for r in caplog.records if r.name == "cloudagent_airflow.alerts"]
    assert "CloudAgent rejected configured accounts or campaigns" in alert
    assert "CloudAgent does not know this campaign: 'Salse'" in alert
    caplog.clear()

    sync.run(campaigns=["Alpha", "Salse"])  # Alpha was accepted: not asked again; Salse, which failed, is

    asked = [
        e["campaign_name"] for e in sync.simulator.requests_log()[len(log) :] if e["outcome"] != "accepted"
    ]
    assert asked == ["Salse"]
    assert [r for r in caplog.records if r.name == "cloudagent_airflow.alerts"] == []  # said once

    state, tis = sync.run(campaigns=["Salse"])  # nothing left: the run stops, naming the campaign

    assert state == "failed"
    assert tis[("exports_to_sync", -1)].state == "failed"
