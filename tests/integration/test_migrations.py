"""The Alembic migrations build the same schema on SQLite and PostgreSQL, idempotently and reversibly."""

from __future__ import annotations

from sqlalchemy import inspect

from cloudagent_etl.db import create_db_engine, migrate
from cloudagent_etl.schema import metadata


def test_migrations_create_every_table_in_the_metadata(db_url: str) -> None:
    engine = create_db_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert set(metadata.tables) <= tables


def test_migrate_twice_is_a_no_op_and_downgrade_upgrade_round_trips(db_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from cloudagent_etl.db import MIGRATIONS_DIR

    migrate(db_url)  # already at head: nothing to do, no error
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = db_url
    command.downgrade(config, "base")
    engine = create_db_engine(db_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(db_url)
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()
