"""Scratch databases for tests and benchmarks: a SQLite file, or a PostgreSQL database dropped afterwards.

The PostgreSQL server is ``CLOUDAGENT_TEST_PG_URL`` (default: the local server's ``test`` database, where
we may create others).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from cloudagent_etl.db import migrate, to_sqlalchemy_url

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def pg_server_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("CLOUDAGENT_TEST_PG_URL") or DEFAULT_PG_URL


def connection_uri(db_url: str) -> str:
    """The ``cloudagent_db`` Airflow connection URI of a database URL (the hook picks the driver itself)."""
    return db_url.replace("postgresql+psycopg://", "postgresql://")


def admin_engine(server_url: str) -> Engine:
    """An AUTOCOMMIT engine on the server (CREATE/DROP DATABASE cannot run in a transaction)."""
    return create_engine(to_sqlalchemy_url(server_url), isolation_level="AUTOCOMMIT")


def database_url(server_url: str, name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the server of ``server_url``."""
    return make_url(to_sqlalchemy_url(server_url)).set(database=name).render_as_string(hide_password=False)


def create_pg_database(admin: Engine, prefix: str, template: str | None = None) -> str:
    """Create a database named ``prefix`` + a random suffix (a copy of ``template`` if given); its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    return name


def drop_pg_database(admin: Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def scratch_database(
    kind: str, folder: Path, prefix: str = "cloudagent_scratch", *, revision: str = "head"
) -> Iterator[str]:
    """A fresh database URL (``kind`` ``sqlite`` or ``postgres``) migrated to ``revision``, removed
    afterwards."""
    if kind == "sqlite":
        path = folder / f"{prefix}-{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite:///{path}"
        migrate(url, revision)
        try:
            yield url
        finally:
            for leftover in folder.glob(f"{path.name}*"):
                leftover.unlink()
        return
    server = pg_server_url()
    admin = admin_engine(server)
    name = create_pg_database(admin, prefix)
    try:
        url = database_url(server, name)
        migrate(url, revision)
        yield url
    finally:
        drop_pg_database(admin, name)
        admin.dispose()
