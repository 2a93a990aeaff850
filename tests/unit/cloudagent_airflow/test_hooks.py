"""The hooks read the project's connections from AIRFLOW_CONN_* (as deployments set them)."""

from __future__ import annotations

import json

import pytest

from cloudagent_dev.databases import connection_uri

API_CONN = json.dumps(
    {
        "conn_type": "cloudagent",
        "host": "http://127.0.0.1:8765/",
        "login": "acme",
        "password": "s3cret-api-key",
        "extra": {"timezone": "Asia/Kolkata", "rate_limit_per_minute": 5, "not_allowed": "ignored"},
    }
)


def test_cloudagent_hook_reads_the_connection_and_only_allowed_extras(monkeypatch) -> None:
    from cloudagent_airflow.hooks import CloudAgentHook

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DEFAULT", API_CONN)
    settings = CloudAgentHook().get_settings()
    assert (settings.base_url, settings.user_name, settings.api_key.get()) == (
        "http://127.0.0.1:8765",
        "acme",
        "s3cret-api-key",
    )
    assert settings.rate_limit_per_minute == 5
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("conn_uri", "expected", "password"),
    [
        ("sqlite:////abs/dir/cloudagent.db", "sqlite:////abs/dir/cloudagent.db", None),
        ("sqlite:///relative.db", "sqlite:///relative.db", None),
        (
            "postgresql://etl:p%40ss%2Fword@db.internal:5433/warehouse?sslmode=require&other=x",
            "postgresql+psycopg://etl:p%40ss%2Fword@db.internal:5433/warehouse?sslmode=require",
            "p@ss/word",
        ),
        ("postgres://etl@db/warehouse", "postgresql+psycopg://etl@db/warehouse", None),
    ],
)
def test_db_hook_turns_the_connection_uri_back_into_a_sqlalchemy_url(
    monkeypatch, conn_uri, expected, password
) -> None:
    from sqlalchemy.engine import make_url

    from cloudagent_airflow.hooks import CloudAgentDbHook

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", conn_uri)
    url = CloudAgentDbHook().get_uri()
    assert url == expected
    assert make_url(url).password == password


def test_db_hook_opens_the_database_it_names(monkeypatch, db_url) -> None:
    from cloudagent_airflow.hooks import CloudAgentDbHook

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", connection_uri(db_url))
    with CloudAgentDbHook().engine() as engine, engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM export_requests").scalar_one() == 0


def test_the_provider_declares_a_form_field_for_every_extra_the_settings_read() -> None:
    from cloudagent_airflow import get_provider_info
    from cloudagent_etl.settings import ALLOWED_CONNECTION_EXTRAS

    (connection_type,) = get_provider_info()["connection-types"]
    assert connection_type["connection-type"] == "cloudagent"
    assert set(connection_type["conn-fields"]) == ALLOWED_CONNECTION_EXTRAS
