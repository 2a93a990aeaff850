"""Hooks that turn the project's Airflow connections into the settings the product code takes.

``cloudagent_default`` (CloudAgent API: host = base URL, login = userName, password = apiKey, allow-listed
extras), ``cloudagent_db`` (the project database, given as a URI) and ``cloudagent_pseudonym`` (its
password is the pseudonym key). Each can come from ``AIRFLOW_CONN_*`` environment variables.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from airflow.sdk import BaseHook

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from airflow.sdk import Connection
    from sqlalchemy import Engine

    from cloudagent_etl.personal_data.phones import PseudonymKey
    from cloudagent_etl.settings import ApiSettings, Secret


class CloudAgentHook(BaseHook):
    """The CloudAgent API account of connection ``cloudagent_default`` as :class:`ApiSettings`."""

    conn_name_attr = "cloudagent_conn_id"
    default_conn_name = "cloudagent_default"
    conn_type = "cloudagent"
    hook_name = "Ozonetel CloudAgent"

    def __init__(self, cloudagent_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.cloudagent_conn_id = cloudagent_conn_id

    def get_settings(self) -> ApiSettings:
        """Settings from the connection; extras are read through ``ALLOWED_CONNECTION_EXTRAS`` only."""
        from cloudagent_etl.settings import ApiSettings

        conn = self.get_connection(self.cloudagent_conn_id)
        return ApiSettings.from_connection(conn.host, conn.login, conn.password, conn.extra_dejson)


def api_key_of(conn_id: str) -> Secret | None:
    """The apiKey of connection ``conn_id`` (to redact wherever a payload carries it), or None when the
    connection cannot be read: the load still redacts every value found under an API-key field."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from cloudagent_etl.errors import ConfigurationError

    try:
        return CloudAgentHook(conn_id).get_settings().api_key
    except (AirflowNotFoundException, ConfigurationError) as exc:
        log.warning(
            "the apiKey of connection %s cannot be read (%s): redacting learned keys only", conn_id, exc
        )
        return None


def pseudonym_key() -> PseudonymKey:
    """The pseudonym key: the password of connection ``cloudagent_pseudonym``, else
    ``CLOUDAGENT_PSEUDONYM_KEY``; a ConfigurationError naming both when neither is set."""
    from cloudagent_etl.personal_data.phones import PseudonymKey

    _setting, value = pseudonym_key_setting()
    return PseudonymKey(value) if value else PseudonymKey.from_env()


def pseudonym_key_setting() -> tuple[str, str | None]:
    """Where the DAGs' pseudonym key comes from (its name for messages) and its value, or None."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from cloudagent_etl.personal_data.phones import PSEUDONYM_CONNECTION, PSEUDONYM_KEY_SETTING

    try:
        password = BaseHook.get_connection(PSEUDONYM_CONNECTION).password
    except AirflowNotFoundException:
        password = None
    if password:
        return f"connection {PSEUDONYM_CONNECTION} (its password)", password
    return (
        f"connection {PSEUDONYM_CONNECTION} (its password; or {PSEUDONYM_KEY_SETTING})",
        os.environ.get(PSEUDONYM_KEY_SETTING),
    )


def _sqlalchemy_url(conn: Connection) -> str:
    """The database URL of a connection, built from its parts by the database module of its type.

    Built from the parts rather than ``Connection.get_uri()``, which percent-encodes a SQLite path
    (``sqlite:////abs.db`` comes back as ``sqlite:///%2Fabs.db``, which SQLAlchemy cannot open).
    """
    from cloudagent_etl.databases import ConnectionParts, uri_from_connection
    from cloudagent_etl.db import to_sqlalchemy_url

    parts = ConnectionParts(
        conn.conn_type, conn.host, conn.schema, conn.login, conn.password, conn.port, conn.extra_dejson
    )
    return to_sqlalchemy_url(uri_from_connection(parts))


class CloudAgentDbHook(BaseHook):
    """The project database of connection ``cloudagent_db`` (landing, limiter and warehouse tables)."""

    conn_name_attr = "cloudagent_db_conn_id"
    default_conn_name = "cloudagent_db"
    conn_type = "cloudagent_db"
    hook_name = "cloudagent-etl database"

    def __init__(self, cloudagent_db_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.cloudagent_db_conn_id = cloudagent_db_conn_id

    def get_uri(self) -> str:
        """The SQLAlchemy URL of the database (psycopg 3 for PostgreSQL)."""
        return _sqlalchemy_url(self.get_connection(self.cloudagent_db_conn_id))

    async def aget_uri(self) -> str:
        """:meth:`get_uri` for triggers (reads the connection without blocking the event loop)."""
        return _sqlalchemy_url(await self.aget_connection(self.cloudagent_db_conn_id))

    @contextmanager
    def engine(self) -> Iterator[Engine]:
        """An Engine for one task, disposed afterwards (tasks are short-lived processes)."""
        from cloudagent_etl.db import create_db_engine

        engine = create_db_engine(self.get_uri())
        try:
            yield engine
        finally:
            engine.dispose()
