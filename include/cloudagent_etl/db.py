"""Database handling shared by the DAG side, the receiver and the CLI.

One database holds landing, limiter and warehouse tables. SQLite (a file) is the embedded default,
PostgreSQL (psycopg 3) the production target; the same Alembic migrations create both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

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


def _sqlite_pragmas(synchronous: str) -> Callable[[Any, Any], None]:
    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets the receiver write while the DAG reads; busy_timeout makes writers queue, not fail.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return set_pragmas


def create_db_engine(uri: str, *, sqlite_synchronous: str = "NORMAL", **kwargs: Any) -> Engine:
    """An Engine for ``uri`` with the settings this project relies on (see module docstring).

    SQLite runs in WAL mode with ``synchronous=NORMAL`` by default: a killed process loses nothing, a
    power cut may lose the last commits. Writers that acknowledge a commit to someone else (the receiver)
    pass ``sqlite_synchronous="FULL"``, which syncs the WAL at every commit.
    """
    if sqlite_synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"sqlite_synchronous must be NORMAL or FULL, not {sqlite_synchronous!r}")
    url = make_url(to_sqlalchemy_url(uri))
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_synchronous))
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


#: PostgreSQL SQLSTATE classes that mean "not now": connection (08), authorization (28, a rotated
#: password), transaction rollback such as a
#: deadlock (40), insufficient resources such as a full disk (53), operator intervention such as a
#: shutdown (57), system errors (58).
_PG_UNAVAILABLE_CLASSES = frozenset({"08", "28", "40", "53", "57", "58"})
#: ... and single codes: insufficient privilege, read-only transaction (a standby), lock not available,
#: object in use, the database does not exist (dropped or not created yet).
_PG_UNAVAILABLE_CODES = frozenset({"42501", "25006", "55P03", "55006", "3D000"})
#: SQLite primary result codes that mean "not now": permission, busy, locked, out of memory, read-only,
#: I/O error, full, cannot open, protocol (lock) error.
_SQLITE_UNAVAILABLE_CODES = frozenset({3, 5, 6, 7, 8, 10, 13, 14, 15})


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database error means it cannot do the work *now* (unreachable, full, read-only, not
    permitted, busy) rather than that the work itself is wrong: the same statement may succeed later.
    """
    if isinstance(exc, (InterfaceError, PoolTimeoutError, DisconnectionError)):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _PG_UNAVAILABLE_CLASSES or sqlstate in _PG_UNAVAILABLE_CODES
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        return sqlite_code & 0xFF in _SQLITE_UNAVAILABLE_CODES
    # A driver error without a code (psycopg's connection failures): only an OperationalError is one.
    return isinstance(exc, OperationalError)


def schema_metadata() -> MetaData:
    """The MetaData holding every table of the project: each owner registers its tables when imported."""
    from cloudagent_etl import identity, landing  # noqa: F401  (the probe secret; requests, payloads)
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
