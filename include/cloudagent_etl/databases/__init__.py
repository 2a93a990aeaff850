"""The databases this project runs on, one module each behind one interface (:class:`Database`).

:func:`database_for` picks the module of an engine (or connection, or dialect) once; the rest of the code
calls its methods and never asks which database it is. To support another database, add a module with a
:class:`Database` subclass, list it in :data:`DATABASES`, and give the migrations what it needs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import Dialect

from cloudagent_etl.databases.base import (
    ConnectionParts,
    Database,
    MergeCounts,
    MergeSpec,
    WarehouseMerge,
)
from cloudagent_etl.databases.postgresql import PostgreSQL
from cloudagent_etl.databases.sqlite import SQLite
from cloudagent_etl.errors import ConfigurationError

#: Every supported database, the production one first.
DATABASES: tuple[Database, ...] = (PostgreSQL(), SQLite())
_BY_NAME = {database.name: database for database in DATABASES}

__all__ = [
    "DATABASES",
    "ConnectionParts",
    "Database",
    "MergeCounts",
    "MergeSpec",
    "WarehouseMerge",
    "database_for",
    "database_named",
    "partial_index_options",
    "sqlalchemy_url",
    "uri_from_connection",
]


def database_named(name: str) -> Database:
    """The database of SQLAlchemy dialect ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        supported = ", ".join(_BY_NAME)
        raise ConfigurationError(f"database {name!r} is not supported (supported: {supported})") from None


def database_for(bind: Engine | Connection | Dialect) -> Database:
    """The database behind an engine, a connection or a dialect."""
    dialect = bind if isinstance(bind, Dialect) else bind.dialect
    return database_named(dialect.name)


def sqlalchemy_url(uri: str) -> tuple[Database, str]:
    """The database a connection URI names, and the URI as a SQLAlchemy URL with this project's driver."""
    if not uri:
        raise ConfigurationError("database URL is empty")
    for database in DATABASES:
        url = database.sqlalchemy_url(uri)
        if url is not None:
            return database, url
    schemes = " or ".join(scheme for database in DATABASES for scheme in database.url_schemes)
    raise ConfigurationError(f"database URL must start with {schemes} (got another scheme)")


def partial_index_options(where: str) -> dict[str, Any]:
    """``Index`` options that make it cover only the rows matching ``where`` (SQL), on every database."""
    options: dict[str, Any] = {}
    for database in DATABASES:
        options.update(database.partial_index_options(where))
    return options


def uri_from_connection(parts: ConnectionParts) -> str:
    """The database URI of a connection's parts, by its connection type."""
    kind = (parts.conn_type or "").lower()
    for database in DATABASES:
        if kind in database.connection_types:
            return database.uri_from_connection(parts)
    kinds = ", ".join(kind for database in DATABASES for kind in database.connection_types)
    raise ConfigurationError(f"the database connection must be of type {kinds}, not {parts.conn_type!r}")
