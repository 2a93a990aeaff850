"""The preflight checks and ``cloudagent-etl doctor``: each wrong setting is named, in seconds.

The callback URL is probed against real servers on loopback: the session's receiver (on its database and
on another one), the simulator (answers /healthz, but is not a receiver) and a port nobody listens on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from cloudagent_dev.processes import free_port
from cloudagent_etl import preflight
from cloudagent_etl.cli import main
from cloudagent_etl.db import create_db_engine, head_revision, migrate
from tests.fixtures.receiver import ReceiverHandle
from tests.fixtures.simulator import SimulatorHandle

PARTS = {"host": "HOST_SETTING", "login": "LOGIN_SETTING", "password": "PASSWORD_SETTING"}


@pytest.fixture
def receiver_engine(receiver: ReceiverHandle) -> Iterator[Engine]:
    engine = create_db_engine(receiver.db_url)
    yield engine
    engine.dispose()


def api_check(host="http://ca.example", login="user", password="key", extra=None) -> preflight.Check:  # noqa: S107
    return preflight.check_api_connection(host, login, password, extra, setting="connection X", parts=PARTS)


def test_a_complete_account_passes_and_says_what_it_found() -> None:
    check = api_check(extra={"timezone": "Asia/Dubai"})
    assert check.ok, check.problem
    assert check.found == "http://ca.example as user, time zone Asia/Dubai"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"host": None}, "HOST_SETTING not set"),
        ({"login": " ", "password": ""}, "LOGIN_SETTING, PASSWORD_SETTING not set"),
        ({"extra": {"timzone": "Asia/Kolkata"}}, "unknown extra timzone"),
        ({"extra": {"timezone": "Mars/Base"}}, "unknown time zone 'Mars/Base'"),
        ({"extra": {"rate_limit_per_minute": "ten"}}, "invalid cloudagent connection extra"),
        ({"extra": {"api_key_in": "query"}}, "api_key_in must be 'header' or 'body'"),
    ],
)
def test_an_incomplete_or_invalid_account_is_named(kwargs: dict, named: str) -> None:
    check = api_check(**kwargs)
    assert not check.ok
    assert named in str(check.problem)
    assert check.line().startswith("FAIL  connection X: ")


def test_a_migrated_database_passes(engine: Engine) -> None:
    check = preflight.check_database(engine, setting="connection D")
    assert check.ok, check.problem
    assert head_revision() in check.found


def test_an_unmigrated_or_outdated_database_says_to_migrate(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = create_db_engine(url)
    try:
        check = preflight.check_database(engine, setting="connection D")
        assert check.problem == f"the database is not migrated, this code needs {head_revision()}: " + (
            "run `cloudagent-etl migrate`"
        )
        migrate(url, "0005_load_notes_reject_counts")
        check = preflight.check_database(engine, setting="connection D")
        assert str(check.problem).startswith("the database is at revision 0005_load_notes_reject_counts")
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_database_that_does_not_answer_is_named_without_its_password() -> None:
    engine = create_db_engine(f"postgresql://cloudagent:s3cret-pw@127.0.0.1:{free_port()}/x")
    try:
        began = time.monotonic()
        check = preflight.check_database(engine, setting="connection D")
    finally:
        engine.dispose()
    assert str(check.problem).startswith("the database does not answer (OperationalError")
    assert "s3cret-pw" not in check.line()
    assert time.monotonic() - began < 10


def test_the_callback_url_of_this_databases_receiver_passes(
    receiver: ReceiverHandle, receiver_engine: Engine
) -> None:
    check = preflight.check_callback_url(receiver_engine, receiver.base_url + "/")
    assert check.ok, check.problem
    assert check.found == f"{receiver.base_url} reaches the receiver of this database"


def test_a_receiver_writing_to_another_database_fails(receiver: ReceiverHandle, engine: Engine) -> None:
    check = preflight.check_callback_url(engine, receiver.base_url)
    assert "reaches a cloudagent-etl receiver that writes to another database" in str(check.problem)


def test_a_server_that_answers_but_is_not_our_receiver_fails(
    fresh_simulator: SimulatorHandle, engine: Engine
) -> None:
    check = preflight.check_callback_url(engine, fresh_simulator.base_url)  # its /healthz says "ok"
    assert check.problem == (
        f"{fresh_simulator.base_url} answers (HTTP 200) but not as a cloudagent-etl receiver: check the URL "
        "and that the proxy forwards /healthz and /callbacks/ to the receiver"
    )


def test_a_dead_callback_url_fails_in_seconds(engine: Engine) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    check = preflight.check_callback_url(engine, url)
    assert str(check.problem).startswith(f"{url} cannot be reached (ConnectError")
    assert check.name == "CLOUDAGENT_CALLBACK_BASE_URL"
    assert time.monotonic() - began < preflight.PROBE_TIMEOUT_S + 1


@pytest.mark.parametrize("url", [None, "", "callbacks.example.com"])
def test_a_missing_or_schemeless_callback_url_fails_without_a_request(engine: Engine, url) -> None:
    check = preflight.check_callback_url(engine, url)
    assert "must be the receiver's public http(s) URL" in str(check.problem)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('["Alpha", "Beta"', "campaigns is not a valid JSON list"),
        (None, "campaigns must be a list of campaign names, not NoneType"),
        (" , ", "no campaigns to sync"),
    ],
)
def test_campaigns_that_are_not_a_list_are_named(value, problem: str) -> None:
    check = preflight.check_campaigns(value, setting="Variable cloudagent_campaigns")
    assert problem in str(check.problem)
    assert preflight.check_campaigns("Alpha, Beta", setting="v").found == "Alpha, Beta"


def test_doctor_prints_every_check_and_exits_non_zero_on_a_problem(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], receiver: ReceiverHandle
) -> None:
    for name, value in {
        "CLOUDAGENT_API_BASE_URL": "http://ca.example",
        "CLOUDAGENT_API_USER": "user",
        "CLOUDAGENT_API_KEY": "the-api-key",
        "CLOUDAGENT_DB_URL": receiver.db_url,
        "CLOUDAGENT_CALLBACK_BASE_URL": receiver.base_url,
        "CLOUDAGENT_CAMPAIGNS": '["Alpha","Beta"]',
        "CLOUDAGENT_ACCOUNT_CHECK": "off",  # no CloudAgent at ca.example (the check: test_account_check.py)
    }.items():
        monkeypatch.setenv(name, value)

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "ok    CloudAgent account (CLOUDAGENT_API_*): http://ca.example as user, time zone Asia/Kolkata",
        "ok    CLOUDAGENT_PSEUDONYM_KEY: set (not shown)",
        "ok    CLOUDAGENT_CAMPAIGNS: Alpha, Beta",
        f"ok    database (CLOUDAGENT_DB_URL): {create_db_engine(receiver.db_url).dialect.name}, revision "
        f"{head_revision()}",
        f"ok    CLOUDAGENT_CALLBACK_BASE_URL: {receiver.base_url} reaches the receiver of this database",
        "ok    CLOUDAGENT_ACCOUNT_CHECK: off: CloudAgent is not asked about the accounts",
        "every check passed",
    ]
    assert "the-api-key" not in out
    assert os.environ["CLOUDAGENT_PSEUDONYM_KEY"] not in out

    monkeypatch.delenv("CLOUDAGENT_PSEUDONYM_KEY")  # no key: no record could be stored pseudonymised
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert (
        "FAIL  CLOUDAGENT_PSEUDONYM_KEY: not set: every record is stored with its phone number's pseudonym"
        in out
    )
    monkeypatch.setenv("CLOUDAGENT_PSEUDONYM_KEY", "short")
    assert main(["doctor"]) == 1
    assert "FAIL  CLOUDAGENT_PSEUDONYM_KEY: the pseudonym key" in capsys.readouterr().out
    monkeypatch.setenv("CLOUDAGENT_PSEUDONYM_KEY", "a-long-enough-pseudonym-key")

    monkeypatch.delenv("CLOUDAGENT_API_BASE_URL")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  CloudAgent account (CLOUDAGENT_API_*): CLOUDAGENT_API_BASE_URL not set" in out
    assert out.splitlines()[-1] == "1 problem(s) found"


def test_doctor_checks_each_account_the_airflow_environment_lists(engine: Engine) -> None:
    """What Airflow processes of this environment read: the Variable and each connection it names."""
    acme = {"conn_type": "cloudagent", "host": "http://ca.example", "login": "acme", "password": "acme-key"}
    env = {
        "AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS": json.dumps(
            {"cloudagent_acme": ["Sales"], "cloudagent_copy": ["Sales"], "cloudagent_http": ["X"],
             "cloudagent_gone": ["Y"], "cloudagent_uri": ["Z"]}
        ),
        "AIRFLOW_CONN_CLOUDAGENT_ACME": json.dumps(acme),
        "AIRFLOW_CONN_CLOUDAGENT_COPY": json.dumps(acme),  # the same account: Sales listed twice
        "AIRFLOW_CONN_CLOUDAGENT_HTTP": json.dumps({**acme, "conn_type": "http"}),
        "AIRFLOW_CONN_CLOUDAGENT_URI": "cloudagent://globex:globex-key@https%3A%2F%2Fca.example?timezone=UTC",
        "CLOUDAGENT_DB_URL": str(engine.url.render_as_string(hide_password=False)),
        "CLOUDAGENT_ACCOUNT_CHECK": "off",
    }  # fmt: skip

    lines = [check.line() for check in preflight.checks_from_env(env)[:6]]

    assert lines[0].startswith("ok    AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS: cloudagent_acme: Sales; ")
    assert lines[1] == "ok    AIRFLOW_CONN_CLOUDAGENT_ACME: http://ca.example as acme, time zone Asia/Kolkata"
    assert lines[2] == "ok    AIRFLOW_CONN_CLOUDAGENT_COPY: http://ca.example as acme, time zone Asia/Kolkata"
    assert lines[3] == (
        "FAIL  AIRFLOW_CONN_CLOUDAGENT_HTTP: is of type 'http': a CloudAgent account is of type 'cloudagent'"
    )
    assert lines[4] == (
        "FAIL  AIRFLOW_CONN_CLOUDAGENT_GONE: not set: connection cloudagent_gone is listed in "
        "AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS"
    )
    assert lines[5] == "ok    AIRFLOW_CONN_CLOUDAGENT_URI: https://ca.example as globex, time zone UTC"
    everything = "\n".join(check.line() for check in preflight.checks_from_env(env))
    assert "campaign 'Sales' is listed under connections cloudagent_acme and cloudagent_copy" in everything
    assert "acme-key" not in everything
    assert "globex-key" not in everything
    malformed = preflight.checks_from_env({**env, "AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS": "[1]"})
    assert malformed[0].problem is not None
    assert "must be a JSON object" in malformed[0].problem
