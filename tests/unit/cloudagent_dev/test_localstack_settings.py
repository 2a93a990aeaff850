"""``make airflow``'s settings: all of CLOUDAGENT_API_* or none, and campaigns read like the Variable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cloudagent_dev.localstack import DEMO_CAMPAIGNS, StackSettings, main
from cloudagent_etl.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[3]
API = {
    "CLOUDAGENT_API_BASE_URL": "https://in1-ccaas-api.ozonetel.com",
    "CLOUDAGENT_API_USER": "acme_user",
    "CLOUDAGENT_API_KEY": "s3cret-api-key",
}


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        (["CLOUDAGENT_API_USER", "CLOUDAGENT_API_KEY"], ["CLOUDAGENT_API_BASE_URL"]),
        (["CLOUDAGENT_API_BASE_URL"], ["CLOUDAGENT_API_USER", "CLOUDAGENT_API_KEY"]),
        (["CLOUDAGENT_API_KEY"], ["CLOUDAGENT_API_BASE_URL", "CLOUDAGENT_API_USER"]),
    ],
)
def test_a_partial_cloudagent_api_setting_is_refused_naming_what_is_missing(
    given: list[str], missing: list[str]
) -> None:
    env = {name: API[name] for name in given} | {name: "  " for name in missing}  # blank counts as unset

    with pytest.raises(ConfigurationError) as refused:
        StackSettings.from_env(env)

    message = str(refused.value)
    assert f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not" in message
    for name in given:
        assert name in message
        assert API[name] not in message, "a value (the apiKey, too) reached the message"


def test_all_three_talk_to_the_real_cloudagent_and_none_to_the_simulator() -> None:
    real = StackSettings.from_env({**API, "CLOUDAGENT_CAMPAIGNS": "Alpha"})
    assert real.real_api == {"host": API["CLOUDAGENT_API_BASE_URL"], "login": "acme_user",
                             "password": "s3cret-api-key"}  # fmt: skip
    assert real.cloudagent() == "a real CloudAgent at https://in1-ccaas-api.ozonetel.com"
    assert real.campaigns == ("Alpha",)
    assert StackSettings.from_env({**API}).campaigns == (), "a real account has no demo campaigns"

    simulated = StackSettings.from_env({"CLOUDAGENT_SIMULATOR_PORT": "9999"})
    assert simulated.real_api is None
    assert simulated.cloudagent().startswith("the simulator on http://127.0.0.1:9999")
    assert simulated.campaigns == DEMO_CAMPAIGNS


def test_credentials_in_the_base_url_are_not_printed() -> None:
    settings = StackSettings.from_env({**API, "CLOUDAGENT_API_BASE_URL": "https://u:pw@api.example.com/x"})
    assert settings.cloudagent() == "a real CloudAgent at https://api.example.com/x"


@pytest.mark.parametrize(
    "value", ['["Alpha","Beta"]', '[" Alpha", "Beta", "Alpha"]', "Alpha,Beta", " Alpha , Beta ,"]
)
def test_campaigns_are_a_json_list_or_comma_separated(value: str) -> None:
    assert StackSettings.from_env({"CLOUDAGENT_CAMPAIGNS": value}).campaigns == ("Alpha", "Beta")


def test_the_env_example_campaigns_are_read_as_names() -> None:
    example = (REPO / ".env.example").read_text()
    values = re.findall(r"^CLOUDAGENT_CAMPAIGNS=(.*)$", example, re.MULTILINE)
    assert values
    for value in values:
        names = StackSettings.from_env({"CLOUDAGENT_CAMPAIGNS": value}).campaigns
        assert names, value
        assert all(re.fullmatch(r"\w+", name) for name in names), names


@pytest.mark.parametrize("value", ['["Alpha", "Beta"', "[]", '["Alpha", 3]'])
def test_malformed_campaigns_are_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^CLOUDAGENT_CAMPAIGNS: "):
        StackSettings.from_env({"CLOUDAGENT_CAMPAIGNS": value})


def test_start_with_a_partial_setting_exits_2_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, registry = tmp_path / "stack", tmp_path / "registry"
    monkeypatch.setenv("CLOUDAGENT_LOCALSTACK_DIR", str(folder))
    monkeypatch.setenv("CLOUDAGENT_LOCALSTACK_REGISTRY", str(registry))
    monkeypatch.delenv("CLOUDAGENT_API_BASE_URL", raising=False)
    monkeypatch.setenv("CLOUDAGENT_API_USER", API["CLOUDAGENT_API_USER"])
    monkeypatch.setenv("CLOUDAGENT_API_KEY", API["CLOUDAGENT_API_KEY"])

    assert main(["start"]) == 2

    out, err = capsys.readouterr()
    assert "refused, nothing started: " in err
    assert "CLOUDAGENT_API_BASE_URL is not" in err
    assert API["CLOUDAGENT_API_KEY"] not in out + err
    assert not folder.exists()
    assert not registry.exists()


PG_METADATA = {"CLOUDAGENT_AIRFLOW_DB_URL": "postgresql://airflow@127.0.0.1:5432/airflow"}


def test_celery_defaults_to_two_workers_on_the_machines_redis_and_local_to_none() -> None:
    celery = StackSettings.from_env({**PG_METADATA, "CLOUDAGENT_EXECUTOR": "celery"})
    assert (celery.executor, celery.workers, celery.celery_broker) == (
        "celery",
        2,
        "redis://127.0.0.1:6379/5",
    )
    assert celery.receiver_2_port == 8082
    local = StackSettings.from_env({})
    assert (local.executor, local.workers, local.celery_broker) == ("local", 0, None)


def test_celery_on_sqlite_metadata_is_refused_naming_the_setting() -> None:
    with pytest.raises(
        ConfigurationError, match="needs PostgreSQL as Airflow's metadata database"
    ) as refused:
        StackSettings.from_env({"CLOUDAGENT_EXECUTOR": "celery", "CLOUDAGENT_WORKERS": "3"})
    assert "CLOUDAGENT_AIRFLOW_DB_URL=postgresql://" in str(refused.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLOUDAGENT_EXECUTOR": "kubernetes"}, "CLOUDAGENT_EXECUTOR must be one of local, celery"),
        ({"CLOUDAGENT_WORKERS": "3"}, "CLOUDAGENT_WORKERS applies only to CeleryExecutor"),
        (
            {"CLOUDAGENT_CELERY_BROKER": "redis://x/1"},
            "CLOUDAGENT_CELERY_BROKER applies only to CeleryExecutor",
        ),
        ({"CLOUDAGENT_EXECUTOR": "celery", "CLOUDAGENT_WORKERS": "0"}, "from 1 to 16, not '0'"),
        ({"CLOUDAGENT_EXECUTOR": "celery", "CLOUDAGENT_WORKERS": "two"}, "from 1 to 16, not 'two'"),
        (
            {"CLOUDAGENT_EXECUTOR": "celery", "CLOUDAGENT_CELERY_BROKER": "sqs://q"},
            "a redis:// or amqp:// URL",
        ),
    ],
)
def test_malformed_executor_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        StackSettings.from_env({**PG_METADATA, **env})


def test_the_broker_is_printed_without_its_password() -> None:
    broker = {"CLOUDAGENT_CELERY_BROKER": "amqp://guest:guest@127.0.0.1:5672//"}
    settings = StackSettings.from_env({**PG_METADATA, "CLOUDAGENT_EXECUTOR": "celery", **broker})
    assert settings.celery_broker == broker["CLOUDAGENT_CELERY_BROKER"]
    assert settings.broker() == "amqp://127.0.0.1:5672//"


def test_make_airflow_passes_executor_and_workers_only_when_given(tmp_path: Path) -> None:
    """``make airflow EXECUTOR=celery WORKERS=3`` sets both; plain ``make airflow`` sets neither (so the
    environment's own CLOUDAGENT_EXECUTOR, if any, is not overwritten)."""
    import subprocess

    def dry_run(*args: str) -> str:
        command = ["make", "-s", "-n", "-C", str(REPO), "airflow", *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    assert "CLOUDAGENT_EXECUTOR=celery CLOUDAGENT_WORKERS=3 " in dry_run("EXECUTOR=celery", "WORKERS=3")
    assert "CLOUDAGENT_LOCALSTACK_ACCOUNTS=2 " in dry_run("ACCOUNTS=2")
    plain = dry_run()
    assert "CLOUDAGENT_EXECUTOR" not in plain
    assert "CLOUDAGENT_LOCALSTACK_ACCOUNTS" not in plain


def test_two_accounts_are_two_simulated_accounts_two_connections_and_a_pool_slot_each(tmp_path: Path) -> None:
    from cloudagent_dev.localstack import SECOND_CONNECTION, simulator_args, stack_airflow_env

    env = {"CLOUDAGENT_LOCALSTACK_DIR": str(tmp_path), "CLOUDAGENT_LOCALSTACK_ACCOUNTS": "2"}
    settings = StackSettings.from_env(env)
    assert settings.accounts == 2
    args = simulator_args(settings)
    assert args.count("--account") == 2
    assert all(arg.endswith(":Sales,Support,Renewals") for arg in args if ":" in arg)
    airflow = stack_airflow_env(settings, "http://127.0.0.1:8081", "http://127.0.0.1:8765")
    assert json.loads(airflow["AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS"]) == {
        "cloudagent_default": list(DEMO_CAMPAIGNS),
        SECOND_CONNECTION: list(DEMO_CAMPAIGNS),
    }
    second = json.loads(airflow[f"AIRFLOW_CONN_{SECOND_CONNECTION.upper()}"])
    assert (second["conn_type"], second["login"]) == ("cloudagent", "demo_user_2")
    assert "AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS" not in stack_airflow_env(
        StackSettings.from_env({"CLOUDAGENT_LOCALSTACK_DIR": str(tmp_path)}), "http://r", "http://s"
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CLOUDAGENT_LOCALSTACK_ACCOUNTS": "3"}, "must be 1 or 2, not '3'"),
        (
            {"CLOUDAGENT_LOCALSTACK_ACCOUNTS": "2", "CLOUDAGENT_API_BASE_URL": "https://x",
             "CLOUDAGENT_API_USER": "u", "CLOUDAGENT_API_KEY": "k"},
            "cannot be used with a real CloudAgent",
        ),
    ],
)  # fmt: skip
def test_a_second_account_is_refused_beyond_two_and_with_a_real_cloudagent(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        StackSettings.from_env({"CLOUDAGENT_LOCALSTACK_DIR": str(tmp_path), **env})


def test_a_real_cloudagent_with_a_loopback_callback_url_is_warned_about() -> None:
    from cloudagent_dev.localstack import callback_warning

    real = {"CLOUDAGENT_API_BASE_URL": "https://in1-ccaas-api.ozonetel.com", "CLOUDAGENT_API_USER": "u",
            "CLOUDAGENT_API_KEY": "k", "CLOUDAGENT_CAMPAIGNS": "Sales"}  # fmt: skip
    without_url = StackSettings.from_env(real)
    warning = callback_warning(without_url, "http://127.0.0.1:8081")
    assert warning is not None
    assert "http://127.0.0.1:8081 is not reachable by CloudAgent (127.0.0.1 is a loopback address)" in warning
    assert "CLOUDAGENT_CALLBACK_BASE_URL" in warning
    private = StackSettings.from_env({**real, "CLOUDAGENT_CALLBACK_BASE_URL": "http://10.0.0.5:8081"})
    assert "10.0.0.5 is a private address" in str(callback_warning(private, "http://127.0.0.1:8081"))
    public = StackSettings.from_env({**real, "CLOUDAGENT_CALLBACK_BASE_URL": "https://cb.example.com"})
    assert callback_warning(public, "http://127.0.0.1:8081") is None
    assert callback_warning(StackSettings.from_env({}), "http://127.0.0.1:8081") is None  # the simulator


def test_the_backfill_command_of_the_stack_is_its_wrapper_with_its_settings(tmp_path: Path) -> None:
    import shlex
    import sys

    from cloudagent_dev.localstack import wrapper_command

    env = {"CLOUDAGENT_LOCALSTACK_DIR": str(tmp_path), "CLOUDAGENT_AIRFLOW_PORT": "9090",
           "CLOUDAGENT_AIRFLOW_DB_URL": "postgresql://airflow@127.0.0.1:5432/meta"}  # fmt: skip
    words = shlex.split(wrapper_command(StackSettings.from_env(env)))
    assert words == ["env", f"CLOUDAGENT_LOCALSTACK_DIR={tmp_path}", "CLOUDAGENT_AIRFLOW_PORT=9090",
                     "CLOUDAGENT_AIRFLOW_DB_URL=postgresql://airflow@127.0.0.1:5432/meta", sys.executable,
                     "-m", "cloudagent_dev.localstack", "airflow"]  # fmt: skip
    secret = {**env, "CLOUDAGENT_AIRFLOW_DB_URL": "postgresql://airflow:pw@127.0.0.1:5432/meta"}
    assert "pw" not in wrapper_command(StackSettings.from_env(secret))  # a password is never shown


def test_a_stack_makes_its_pseudonym_key_once_in_its_folder_readable_by_its_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudagent_dev.localstack import PSEUDONYM_KEY_FILE, local_pseudonym_key
    from cloudagent_etl.personal_data.phones import PseudonymKey

    monkeypatch.delenv("CLOUDAGENT_PSEUDONYM_KEY")
    key = local_pseudonym_key(tmp_path / "stack")
    path = tmp_path / "stack" / PSEUDONYM_KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert local_pseudonym_key(tmp_path / "stack") == key  # the next start keeps it: pseudonyms stay stable
    assert local_pseudonym_key(tmp_path / "other") != key
    PseudonymKey(key)  # long enough to be accepted
    monkeypatch.setenv("CLOUDAGENT_PSEUDONYM_KEY", "an-operator-chosen-key-0123")
    assert local_pseudonym_key(tmp_path / "stack") == "an-operator-chosen-key-0123"
