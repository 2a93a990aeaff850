"""The Alembic migrations build exactly the SQLAlchemy metadata on SQLite and PostgreSQL, idempotently
and reversibly."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from cloudagent_etl.db import alembic_config, create_db_engine, migrate, schema_metadata


def test_the_migrated_schema_is_the_metadata_column_for_column(db_url: str) -> None:
    """A column, index, constraint, type or comment in one and not the other fails here."""
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, schema_metadata())
    engine.dispose()
    assert differences == []


def test_the_comparison_would_see_a_missing_column(db_url: str) -> None:
    engine = create_db_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE export_requests DROP COLUMN callback_base_url")
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), schema_metadata())
    engine.dispose()
    assert [(kind, column.name) for kind, *_, column in differences] == [("add_column", "callback_base_url")]


def test_migrate_twice_is_a_no_op_and_downgrade_upgrade_round_trips(db_url: str) -> None:
    migrate(db_url)  # already at head: nothing to do, no error
    command.downgrade(alembic_config(db_url), "base")
    engine = create_db_engine(db_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(db_url)
    assert set(schema_metadata().tables) <= set(inspect(engine).get_table_names())
    engine.dispose()
