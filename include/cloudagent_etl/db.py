"""Database handling shared by the DAG side, the receiver and the CLI.

One database holds landing, limiter and warehouse tables. SQLite (a file) is the embedded default,
PostgreSQL (psycopg 3) the production target; the same Alembic migrations create both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url

from cloudagent_etl.errors import ConfigurationError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def to_sqlalchemy_url(uri: str) -> str:
    """A SQLAlchemy URL from a connection URI (``postgresql://``, ``postgres://``, ``sqlite:////abs.db``).

    PostgreSQL always goes through the psycopg 3 driver.
    """
    if not uri:
        raise ConfigurationError("database URL is empty")
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg://" + uri[len(prefix) :]
    if uri.startswith(("postgresql+psycopg://", "sqlite://")):
        return uri
    raise ConfigurationError("database URL must be postgresql:// or sqlite:// (got another scheme)")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the receiver write while the DAG reads; busy_timeout makes writers queue instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_db_engine(uri: str, **kwargs: Any) -> Engine:
    """An Engine for ``uri`` with the settings this project relies on (see module docstring)."""
    url = make_url(to_sqlalchemy_url(uri))
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def schema_metadata() -> MetaData:
    """The MetaData holding every table of the project: each owner registers its tables when imported."""
    from cloudagent_etl import landing  # noqa: F401  (export requests, callback payloads)
    from cloudagent_etl.api import limiter  # noqa: F401  (the call log)
    from cloudagent_etl.sqltypes import metadata
    from cloudagent_etl.warehouse import tables  # noqa: F401  (dial status, rejects, load runs)

    return metadata


def alembic_config(uri: str) -> Any:
    """The Alembic configuration of our migrations, bound to the database ``uri``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = uri
    return config


def migrate(uri: str, revision: str = "head") -> None:
    """Apply the Alembic migrations to ``uri`` (idempotent: an up-to-date database is left as is)."""
    from alembic import command

    command.upgrade(alembic_config(uri), revision)
