"""Settings: connection parts to typed settings, an allow-list of extras, secrets that never show."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cloudagent_etl.errors import ConfigurationError
from cloudagent_etl.settings import (
    DEFAULT_BASE_URL,
    DEFAULT_ENDPOINT,
    RECEIVER_LIMITS,
    ApiSettings,
    LoadSettings,
    ReceiverSettings,
    Secret,
    callback_base_url,
    database_url,
)

KEY = "k3y-SECRET-value"


def test_connection_parts_and_allow_listed_extras() -> None:
    settings = ApiSettings.from_connection(
        "https://api.ccaas.ozonetel.com/",
        "acme",
        KEY,
        {"api_key_in": "body", "timezone": "UTC", "rate_limit_per_minute": "5", "timeout_s": 3, "proxy": "x"},
    )
    assert settings.base_url == "https://api.ccaas.ozonetel.com"
    assert settings.endpoint == DEFAULT_ENDPOINT
    assert (settings.api_key_in, settings.timezone, settings.rate_limit_per_minute, settings.timeout_s) == (
        "body",
        "UTC",
        5,
        3.0,
    )
    assert not hasattr(settings, "proxy")


def test_defaults_follow_the_design() -> None:
    settings = ApiSettings.from_connection(None, "acme", KEY, None)
    assert settings.base_url == DEFAULT_BASE_URL
    assert (settings.api_key_in, settings.timezone, settings.rate_limit_per_minute) == (
        "header",
        "Asia/Kolkata",
        10,
    )


@pytest.mark.parametrize(
    ("login", "password", "extra", "message"),
    [
        ("", KEY, {}, "userName"),
        ("acme", "   ", {}, "apiKey"),
        ("acme", KEY, {"api_key_in": "query"}, "api_key_in"),
        ("acme", KEY, {"timezone": "Mars/Olympus"}, "Mars/Olympus"),
        ("acme", KEY, {"rate_limit_per_minute": "ten"}, "invalid cloudagent connection extra"),
        ("acme", KEY, {"rate_limit_per_minute": 0}, "rate_limit_per_minute"),
    ],
)
def test_invalid_connections_name_what_is_wrong_without_the_key(login, password, extra, message) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        ApiSettings.from_connection("https://x.test", login, password, extra)
    assert KEY not in str(caught.value)


def test_the_api_key_never_shows() -> None:
    settings = ApiSettings.from_connection(None, "acme", KEY, None)
    assert KEY not in repr(settings)
    assert KEY not in str(settings.api_key)
    assert settings.api_key.get() == KEY


def test_database_url_defaults_to_a_sqlite_file_in_the_data_folder(tmp_path) -> None:
    assert database_url({"CLOUDAGENT_DATA_DIR": str(tmp_path)}) == f"sqlite:///{tmp_path / 'cloudagent.db'}"
    assert database_url({"CLOUDAGENT_DB_URL": "postgresql://u@h/db"}) == "postgresql://u@h/db"


def test_callback_base_url_must_be_an_http_url() -> None:
    assert (
        callback_base_url({"CLOUDAGENT_CALLBACK_BASE_URL": "https://cb.example.com/"})
        == "https://cb.example.com"
    )
    with pytest.raises(ConfigurationError, match="CLOUDAGENT_CALLBACK_BASE_URL"):
        callback_base_url({})


def test_receiver_settings_keep_the_shared_token_secret() -> None:
    settings = ReceiverSettings.from_env(
        {"CLOUDAGENT_CALLBACK_TOKEN": "tok-SECRET", "CLOUDAGENT_DB_URL": "sqlite://"}
    )
    assert settings.shared_token == Secret("tok-SECRET")
    assert "tok-SECRET" not in repr(settings)


def test_receiver_limits_come_from_their_variables_and_must_be_positive_numbers() -> None:
    env = {"CLOUDAGENT_DB_URL": "sqlite://"}
    defaults = ReceiverSettings.from_env(env)
    names = {name for name, *_ in RECEIVER_LIMITS}
    assert {"max_body_bytes", "idle_timeout_s", "max_connections", "spool_min_free_bytes"} <= names, names
    for name, variable, default, _meaning in RECEIVER_LIMITS:
        assert getattr(defaults, name) == default
        assert getattr(ReceiverSettings.from_env({**env, variable: "7"}), name) == 7
        for bad in ("0", "-1", "many"):
            with pytest.raises(ConfigurationError, match=variable):
                ReceiverSettings.from_env({**env, variable: bad})
    with pytest.raises(ConfigurationError, match="whole number"):
        ReceiverSettings.from_env({**env, "CLOUDAGENT_RECEIVER_MAX_HEADERS": "1.5"})


def test_load_settings_bound_record_times_from_the_environment() -> None:
    started = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert LoadSettings.from_env({}).time_bounds(started) == (
        datetime(2000, 1, 1, tzinfo=UTC),
        started + timedelta(days=1),
    )
    custom = LoadSettings.from_env(
        {"CLOUDAGENT_LOAD_EARLIEST_TIME": "2020-01-01", "CLOUDAGENT_LOAD_FUTURE_TOLERANCE_HOURS": "2.5"}
    )
    assert custom.time_bounds(started) == (datetime(2020, 1, 1, tzinfo=UTC), started + timedelta(hours=2.5))
    offset = LoadSettings.from_env({"CLOUDAGENT_LOAD_EARLIEST_TIME": "2020-01-01T00:00:00+05:30"})
    assert offset.earliest_time == datetime(2019, 12, 31, 18, 30, tzinfo=UTC)
    for bad in (
        {"CLOUDAGENT_LOAD_EARLIEST_TIME": "yesterday"},
        {"CLOUDAGENT_LOAD_FUTURE_TOLERANCE_HOURS": "-1"},
    ):
        with pytest.raises(ConfigurationError, match=r"load setting|must not be negative"):
            LoadSettings.from_env(bad)
