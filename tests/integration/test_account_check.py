"""The account check against the simulator (which answers it as docs/cloudagent-contract.md says), through
the real CLI: ``doctor`` proves the apiKey, userName and campaigns without creating an export, a typo'd
campaign is shown by ``status`` as rejected (not missing, no backfill), days before syncing started are not
missing, and read-only commands never create a database."""

from __future__ import annotations

import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from cloudagent_etl import status, targets
from cloudagent_etl.accounts import SyncTarget
from cloudagent_etl.api import CloudAgentClient, RateLimiter
from cloudagent_etl.api.limiter import api_call_log
from cloudagent_etl.cli import main
from cloudagent_etl.errors import AuthenticationFailedError, InvalidCampaignNameError
from cloudagent_etl.settings import DEFAULT_CONNECTION, ApiSettings, Secret
from tests.factories import new_request
from tests.fixtures.receiver import ReceiverHandle
from tests.fixtures.simulator import SimulatorHandle

CALLBACK_MESSAGE = "callBackUrl cannot be empty (OR) it should contain 'http' or 'https'"


def api_of(simulator: SimulatorHandle, api_key: str | None = None) -> ApiSettings:
    return ApiSettings(
        user_name=simulator.user, api_key=Secret(api_key or simulator.api_key), base_url=simulator.base_url
    )


def test_the_simulator_answers_the_check_as_documented_and_no_export_is_made(
    simulator: SimulatorHandle, engine: Engine
) -> None:
    simulator.reset()  # its own per-account rate limit starts afresh (the session's simulator is shared)
    exports_before = len(simulator.exports(simulator.user))
    limiter = RateLimiter(engine, simulator.user)
    seconds = []
    with CloudAgentClient(api_of(simulator), limiter=limiter) as client:
        for _ in range(3):
            began = time.perf_counter()
            client.check_account("Alpha")
            seconds.append(time.perf_counter() - began)
        with pytest.raises(InvalidCampaignNameError):
            client.check_account("Alpah")
    with (
        CloudAgentClient(api_of(simulator, "wrong-key"), limiter=limiter) as wrong,
        pytest.raises(AuthenticationFailedError),
    ):
        wrong.check_account("Alpha")

    answers = [entry["message"] for entry in simulator.requests_log(simulator.user)[-5:]]
    assert answers == [CALLBACK_MESSAGE] * 3 + ["campaignName is invalid", "Authentication failed"]
    assert len(simulator.exports(simulator.user)) == exports_before  # nothing accepted, nothing delivered
    with engine.connect() as conn:
        purposes = conn.execute(select(api_call_log.c.purpose).order_by(api_call_log.c.called_at)).scalars()
        assert list(purposes) == ["account check Alpha"] * 3 + ["account check Alpah", "account check Alpha"]
    print(f"\naccount check: {', '.join(f'{s * 1000:.0f} ms' for s in seconds)}")


def doctor_env(monkeypatch: pytest.MonkeyPatch, simulator: SimulatorHandle, receiver: ReceiverHandle) -> None:
    for name, value in {
        "CLOUDAGENT_API_BASE_URL": simulator.base_url,
        "CLOUDAGENT_API_USER": simulator.user,
        "CLOUDAGENT_API_KEY": simulator.api_key,
        "CLOUDAGENT_DB_URL": receiver.db_url,
        "CLOUDAGENT_CALLBACK_BASE_URL": receiver.base_url,
        "CLOUDAGENT_CAMPAIGNS": "Alpha,Beta",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CLOUDAGENT_ACCOUNT_CHECK", raising=False)
    simulator.reset()  # its own per-account rate limit starts afresh (the session's simulator is shared)


def test_doctor_asks_cloudagent_once_per_new_or_failed_campaign_and_names_the_setting_to_fix(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    simulator: SimulatorHandle,
    receiver: ReceiverHandle,
) -> None:
    doctor_env(monkeypatch, simulator, receiver)
    asked = len(simulator.requests_log(simulator.user))

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert (
        "ok    CloudAgent accepts CLOUDAGENT_API_*: apiKey, userName and Alpha, Beta accepted "
        "(no export made)" in out
    )
    assert out.splitlines()[-1] == "every check passed"
    assert len(simulator.requests_log(simulator.user)) == asked + 2

    assert main(["doctor"]) == 0  # nothing new: no call
    assert "Alpha, Beta accepted before, settings unchanged" in capsys.readouterr().out
    assert len(simulator.requests_log(simulator.user)) == asked + 2

    monkeypatch.setenv("CLOUDAGENT_CAMPAIGNS", "Alpha,Salse")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert (
        "FAIL  CloudAgent accepts CLOUDAGENT_API_*: CloudAgent does not know this campaign: 'Salse' is not a "
        "campaign of the account of connection cloudagent_default; correct the name in CLOUDAGENT_CAMPAIGNS"
    ) in out
    assert len(simulator.requests_log(simulator.user)) == asked + 3  # only the new campaign was asked about

    monkeypatch.setenv("CLOUDAGENT_API_KEY", "not-the-key")  # the settings changed: both are asked again
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert (
        "CloudAgent rejected the apiKey (or userName) of connection cloudagent_default: fix its password"
        in out
    )
    assert "not-the-key" not in out
    assert len(simulator.requests_log(simulator.user)) == asked + 4  # one call: the apiKey is the account's

    monkeypatch.setenv("CLOUDAGENT_ACCOUNT_CHECK", "off")
    assert main(["doctor"]) == 0
    assert "ok    CLOUDAGENT_ACCOUNT_CHECK: off" in capsys.readouterr().out
    assert len(simulator.requests_log(simulator.user)) == asked + 4


def test_a_rejected_campaign_is_shown_as_rejected_with_no_backfill_until_it_passes_again(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    simulator: SimulatorHandle,
    receiver: ReceiverHandle,
) -> None:
    doctor_env(monkeypatch, simulator, receiver)
    monkeypatch.setenv("CLOUDAGENT_CAMPAIGNS", "Alpha,Salse")
    assert main(["doctor"]) == 1
    day = targets.current_window_day()  # both were first configured for the window open now
    capsys.readouterr()

    assert main(["status", "--days", "2", "--until", str(day)]) == 0
    out = capsys.readouterr().out
    assert "Alpha     .      -" in out  # the day before: syncing had not started
    assert "Salse     .      !" in out
    assert "rejected by CloudAgent (no backfill is offered until the configuration changes):" in out
    assert "  Salse: CloudAgent does not know this campaign: 'Salse'" in out
    backfills = out.split("to backfill what is missing", 1)[1] if "to backfill what" in out else ""
    assert "Salse" not in backfills
    assert f"{day}  Alpha  never requested" in out  # configured and accepted: missing, backfill offered
    assert "Alpha" in backfills


def test_days_before_a_campaign_was_first_configured_or_requested_are_not_missing(engine: Engine) -> None:
    days = [date(2025, 6, 1) + timedelta(days=n) for n in range(5)]
    alpha, beta = SyncTarget(DEFAULT_CONNECTION, "Alpha"), SyncTarget(DEFAULT_CONNECTION, "Beta")
    targets.record_seen(engine, [alpha], days[2])
    new_request(engine, "Beta", unique_id="U-1", window=status.nightly_window(days[3]))
    accounts = {DEFAULT_CONNECTION: ["Alpha", "Beta", "Gamma"]}

    grid = status.coverage(engine, days, accounts)
    states = {(t.campaign, d): grid.cell(t, d).state.value for t in grid.targets for d in days}

    assert [states[("Alpha", d)] for d in days] == ["before_start"] * 2 + ["never_requested"] * 3
    assert [states[("Beta", d)] for d in days] == ["before_start"] * 3 + ["requested", "never_requested"]
    assert [states[("Gamma", d)] for d in days] == ["before_start"] * 5  # never configured in a run yet
    assert [(b.first_day, [t.campaign for t in b.targets]) for b in grid.backfills()] == [
        (days[2], ["Alpha"]),
        (days[4], ["Alpha", "Beta"]),
    ]
    # The setting moves the start of every campaign, earlier or later.
    override = status.coverage(engine, days, accounts, sync_start=days[0])
    assert override.cell(alpha, days[0]).state.value == "never_requested"
    assert override.cell(beta, days[0]).state.value == "never_requested"


def test_read_only_commands_name_the_setting_and_never_create_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CLOUDAGENT_DB_URL", raising=False)
    monkeypatch.setenv("CLOUDAGENT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLOUDAGENT_ACCOUNT_CHECK", "off")

    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"no warehouse at sqlite:///{tmp_path}/data/cloudagent.db" in err
    assert "set CLOUDAGENT_DB_URL to the warehouse" in err
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  database (CLOUDAGENT_DB_URL): no database file at {tmp_path}/data/cloudagent.db" in out
    assert not (tmp_path / "data").exists()

    empty = tmp_path / "empty.db"
    empty.touch()
    assert main(["status", "--database-url", f"sqlite:///{empty}"]) == 1
    assert "is not migrated: set --database-url to the warehouse" in capsys.readouterr().err


def test_doctor_reports_a_loopback_callback_url_with_a_real_cloudagent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cloudagent_etl import preflight

    env = {
        "CLOUDAGENT_API_BASE_URL": "https://in1-ccaas-api.ozonetel.com",
        "CLOUDAGENT_API_USER": "acme",
        "CLOUDAGENT_API_KEY": "k",
        "CLOUDAGENT_DB_URL": "sqlite:////nonexistent/never-created.db",
    }
    for url, verdict in [
        ("http://127.0.0.1:8081", "127.0.0.1 is a loopback address"),
        ("http://localhost:8081", "localhost is this machine"),
        ("http://192.168.1.20", "192.168.1.20 is a private address"),
        ("https://callbacks.example.com", None),
    ]:
        checks = preflight.checks_from_env({**env, "CLOUDAGENT_CALLBACK_BASE_URL": url})
        (public,) = [c for c in checks if c.name == "CLOUDAGENT_CALLBACK_BASE_URL reachable by CloudAgent"]
        if verdict is None:
            assert public.ok
        else:
            assert public.problem is not None
            assert verdict in public.problem
            assert "CloudAgent (https://in1-ccaas-api.ozonetel.com) can never reach" in public.problem
    # The simulator (any other API) is not the internet: a loopback URL is right there.
    simulated = {
        **env,
        "CLOUDAGENT_API_BASE_URL": "http://127.0.0.1:8765",
        "CLOUDAGENT_CALLBACK_BASE_URL": "http://127.0.0.1:8081",
    }
    assert not [c for c in preflight.checks_from_env(simulated) if "reachable by CloudAgent" in c.name]
    assert not Path("/nonexistent/never-created.db").exists()
