"""The one SQLAlchemy ``MetaData`` every table belongs to, and the column types the owners share.

Each owner defines its own tables on :data:`metadata`: ``landing`` (export requests and callback payloads),
``api.limiter`` (the call log), ``warehouse.tables`` (dial status and load runs). Alembic migrations in
``migrations/`` create them; :func:`cloudagent_etl.db.schema_metadata` imports every owner.

Times are stored in UTC through :class:`UtcDateTime` (``timestamptz`` on PostgreSQL, naive UTC text on
SQLite) and always come back timezone-aware, so the two databases behave the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, MetaData
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from cloudagent_etl.databases import DATABASES, database_for

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _with_variants(portable: TypeEngine[Any], name: str) -> TypeEngine[Any]:
    """``portable``, with the variant each database declares under ``name`` (``column_type_variants``)."""
    for database in DATABASES:
        if name in database.column_type_variants:
            portable = portable.with_variant(database.column_type_variants[name], database.name)
    return portable


#: An auto-incrementing 64-bit id (an INTEGER PRIMARY KEY where only that auto-increments).
BigIntId = _with_variants(BigInteger(), "big_int_id")

#: A JSON document, comparable where the database has such a type (JSONB), so that an unchanged row can
#: be recognised.
JsonDocument = _with_variants(JSON(), "json_document")


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both databases; naive datetimes are refused, never guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given where a UTC time is stored")
        return database_for(dialect).stored_time(value.astimezone(UTC))

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
