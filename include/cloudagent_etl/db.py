"""Database handling shared by the DAG side, the receiver and the CLI.

One database holds landing, limiter and warehouse tables. SQLite (a file) is the embedded default,
PostgreSQL (psycopg 3) the production target; the same Alembic migrations create both. What differs
between them is in :mod:`cloudagent_etl.databases`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from cloudagent_etl import databases

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def to_sqlalchemy_url(uri: str) -> str:
    """A SQLAlchemy URL from a connection URI (``postgresql://``, ``postgres://``, ``sqlite:////abs.db``),
    with this project's driver for its database (psycopg 3 for PostgreSQL)."""
    return databases.sqlalchemy_url(uri)[1]


def create_db_engine(uri: str, *, durable: bool = False, serving: bool = False, **kwargs: Any) -> Engine:
    """An Engine for ``uri`` with the settings this project relies on (each database's module says which).

    ``durable``: a commit survives a power cut once it returns; writers that acknowledge a commit to
    someone else (the receiver) ask for it. Without it SQLite may lose its last commits in a power cut
    (a killed process loses nothing). ``serving``: the engine answers requests a client waits for, so
    connecting gives up quickly and connections are not pinged before each use (a dead one fails once
    and leaves the pool).
    """
    database, url = databases.sqlalchemy_url(uri)
    return database.create_engine(url, durable=durable, serving=serving, **kwargs)


def database_missing(uri: str) -> str | None:
    """Why there is no database at ``uri`` to read (a SQLite file that does not exist), or None.

    Read-only commands ask first: opening a SQLite URL would create an empty file, and then report an
    unmigrated database nobody uses.
    """
    database, url = databases.sqlalchemy_url(uri)
    return database.missing(url)


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database error means it cannot do the work *now* (unreachable, full, read-only, not
    permitted, busy) rather than that the work itself is wrong: the same statement may succeed later.
    """
    if isinstance(exc, (InterfaceError, PoolTimeoutError, DisconnectionError)):
        return True
    if not isinstance(exc, DBAPIError) or exc.orig is None:
        return False
    for database in databases.DATABASES:
        verdict = database.means_unavailable(exc.orig)
        if verdict is not None:
            return verdict
    # A driver error without a code (psycopg's connection failures): only an OperationalError is one.
    return isinstance(exc, OperationalError)


def schema_metadata() -> MetaData:
    """The MetaData holding every table of the project: each owner registers its tables when imported."""
    from cloudagent_etl import identity, landing, targets  # noqa: F401  (probe secret; requests; targets)
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


def head_revision() -> str:
    """The newest migration of this code: what ``migrate`` brings a database to."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(alembic_config("")).get_current_head())


def migrate(uri: str, revision: str = "head") -> None:
    """Apply the Alembic migrations to ``uri`` (idempotent: an up-to-date database is left as is)."""
    from alembic import command

    command.upgrade(alembic_config(uri), revision)
