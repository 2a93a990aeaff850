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


def test_an_upgrade_keeps_every_row_and_value_and_gives_each_row_the_account_of_its_request(
    db_kind: str, tmp_path, request
) -> None:
    """A database at the revision before accounts, with loaded data, migrated forward."""
    from datetime import UTC, datetime

    from sqlalchemy import MetaData, insert, select, text, update

    from cloudagent_dev.databases import scratch_database

    with scratch_database(
        db_kind, tmp_path, "cloudagent_upgrade", revision="0006_installation_probe_secret"
    ) as url:
        engine = create_db_engine(url)
        old = MetaData()
        old.reflect(engine)
        at = datetime(2025, 6, 1, 10, tzinfo=UTC)
        requests = {"r-acme": "acme_user", "r-globex": "globex_user"}
        version = {
            "campaign_name": "Sales", "updated_at": at, "disposition": "Interested",
            "extra": {"City": "Pune"}, "payload_id": 1, "load_run_id": 1, "loaded_at": at,
        }  # fmt: skip
        with engine.begin() as conn:
            for request_id, account in requests.items():
                conn.execute(insert(old.tables["export_requests"]).values(
                    request_id=request_id, account=account, campaign_name="Sales", window_start=at,
                    window_end=at, filters={}, callback_token_sha256="0" * 64, state="loaded", created_at=at,
                    updated_at=at,
                ))  # fmt: skip
            conn.execute(insert(old.tables["dial_status"]), [
                {**version, "record_key": "L1", "request_id": "r-acme"},
                {**version, "record_key": "L2", "request_id": "r-globex"},
            ])  # fmt: skip
            conn.execute(insert(old.tables["dial_status_superseded"]).values(
                {**version, "record_key": "L1", "request_id": "r-acme", "updated_at": at.replace(hour=9)}
            ))  # fmt: skip
            conn.execute(insert(old.tables["dial_status_rejects"]).values(
                payload_id=1, position=3, request_id="r-globex", load_run_id=1, reason="updated_at: missing",
                raw_record={"a": "b"}, rejected_at=at,
            ))  # fmt: skip
            conn.execute(insert(old.tables["load_runs"]).values(
                request_id="r-acme", payload_id=1, status="loaded", started_at=at, finished_at=at, rows_in=1,
                inserted=1, updated=0, unchanged=0, duplicates=0, rejected=0, seconds=0.5,
            ))  # fmt: skip
        before = {name: _rows(engine, name) for name in _WAREHOUSE}

        migrate(url)

        after = {name: _rows(engine, name) for name in _WAREHOUSE}
        for name in _WAREHOUSE:
            gained = [row.pop("account") for row in after[name]]
            # Columns of later revisions start empty: pseudonyms wait for `pseudonyms rebuild` (the key is
            # not the migration's), nothing was erased or purged yet.
            later = [{column: row.pop(column) for column in _LATER[name]} for row in after[name]]
            assert later == [dict.fromkeys(_LATER[name], _EMPTY[name]) for _ in after[name]], name
            assert after[name] == before[name], name
            assert gained == [requests[row["request_id"]] for row in before[name]], name
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), schema_metadata())
            summary = conn.execute(text("SELECT account, leads FROM dial_status_daily_summary")).all()
        assert differences == []
        assert sorted(summary) == [("acme_user", 1), ("globex_user", 1)]
        from cloudagent_etl.warehouse.tables import dial_status, dial_status_superseded

        with engine.begin() as conn:  # the trigger moves a replaced row, now keyed by account too
            conn.execute(update(dial_status).where(dial_status.c.record_key == "L2").values(
                updated_at=at.replace(hour=11), disposition="Converted"
            ))  # fmt: skip
            moved = conn.execute(
                select(dial_status_superseded.c.account, dial_status_superseded.c.record_key)
                .where(dial_status_superseded.c.record_key == "L2")
            ).all()  # fmt: skip
        assert moved == [("globex_user", "L2")]
        engine.dispose()


_WAREHOUSE = ("dial_status", "dial_status_superseded", "dial_status_rejects", "load_runs")
_LATER = {
    "dial_status": ("phone_e164", "phone_pseudonym"),
    "dial_status_superseded": ("phone_e164", "phone_pseudonym"),
    "dial_status_rejects": ("raw_purged_at",),
    "load_runs": ("erased",),
}
_EMPTY = {"dial_status": None, "dial_status_superseded": None, "dial_status_rejects": None, "load_runs": 0}


def _rows(engine, table: str) -> list[dict]:
    """Every row of ``table`` with the values a test can compare (JSON as text on both databases)."""
    from sqlalchemy import MetaData, select

    reflected = MetaData()
    reflected.reflect(engine, only=[table])
    columns = reflected.tables[table].c
    order = [column for column in columns if column.primary_key]
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(select(columns).order_by(*order))]
