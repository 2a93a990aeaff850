"""Alembic environment: the URL comes from the caller (``db.migrate``) or ``CLOUDAGENT_DB_URL``."""

from __future__ import annotations

from alembic import context

from cloudagent_etl import settings
from cloudagent_etl.db import create_db_engine, schema_metadata

config = context.config
url = config.attributes.get("database_url") or settings.database_url()
engine = create_db_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=schema_metadata(),
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
