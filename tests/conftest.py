"""Shared fixtures: databases (SQLite file and a fresh PostgreSQL database per test) and free ports.

PostgreSQL comes from ``CLOUDAGENT_TEST_PG_URL``, else the local server if one answers. Without one,
PostgreSQL tests are skipped with the reason shown, except under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from cloudagent_etl.db import create_db_engine, migrate, to_sqlalchemy_url

pytest_plugins = ["tests.plugins.simulator", "tests.plugins.receiver"]

DEFAULT_TEST_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_admin_engine(url: str) -> Engine:
    return create_engine(to_sqlalchemy_url(url), isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of a reachable PostgreSQL database where we may create scratch databases."""
    url = os.environ.get("CLOUDAGENT_TEST_PG_URL") or DEFAULT_TEST_PG_URL
    try:
        engine = _pg_admin_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        reason = f"PostgreSQL not reachable at {make_url(to_sqlalchemy_url(url)).render_as_string()}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def pg_template(pg_server_url: str) -> Iterator[str]:
    """A migrated template database; each test gets a fast copy of it."""
    name = f"cloudagent_tmpl_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin_engine(pg_server_url)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(to_sqlalchemy_url(pg_server_url)).set(database=name).render_as_string(hide_password=False)
    migrate(url)
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_server_url: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test (dropped afterwards)."""
    name = f"cloudagent_test_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin_engine(pg_server_url)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield make_url(to_sqlalchemy_url(pg_server_url)).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A fresh, migrated SQLite file database for one test."""
    url = f"sqlite:///{tmp_path / 'cloudagent.db'}"
    migrate(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    """A fresh migrated database URL, once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()
