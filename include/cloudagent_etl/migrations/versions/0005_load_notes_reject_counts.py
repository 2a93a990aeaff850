"""Poisoned records: each version row says what the load changed to store it; identical rejects count once.

- ``dial_status`` and ``dial_status_superseded`` get ``load_notes`` (NUL characters removed, a value cut, an
  API key value replaced), and the ``dial_status_history`` view and the trigger that moves replaced rows
  carry it too.
- ``dial_status_rejects`` gets ``occurrences``: identical rejects of one payload are stored once.
- Changed meanings get their new comments (PostgreSQL): ``extra``, ``raw_record``, ``load_runs.status``.

Comments are written out here rather than imported from the data dictionary: a migration must not change
when the code does.

Revision ID: 0005_load_notes_reject_counts
Revises: 0004_one_live_export
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_load_notes_reject_counts"
down_revision = "0004_one_live_export"
branch_labels = None
depends_on = None

LOAD_NOTES = (
    "what the load changed to store the record (NUL characters removed, a value cut, an API key value "
    "replaced by ***), '; '-separated; NULL when nothing"
)
OCCURRENCES = (
    "records of the payload identical to this one (same reason and raw record), this one included; only "
    "the first one's position is kept"
)
COMMENTS = {
    "extra": (
        "JSON object of the record's fields that have no column (custom upload columns), and the whole "
        "value of a field cut to fit its column; API keys are never kept",
        "JSON object of the record's fields that have no column (custom upload columns); "
        "API keys are never kept",
    ),
    "raw_record": (
        "the record as received (values as text), API keys removed, NUL characters removed, values cut at "
        "1 MiB characters",
        "the record as received (values as text), API key fields removed",
    ),
    "status": (
        "loaded, or failed (the payload could not be parsed, or the load hit an error; see error)",
        "loaded, or failed (the payload could not be parsed; see error)",
    ),
}
VERSION_TABLES = ("dial_status", "dial_status_superseded")
#: The columns of a version as migration 0002 listed them (the view and the trigger name them all).
VERSION_COLUMNS_0002 = (
    "campaign_name, record_key, phone_number, phone_number_raw, customer_name, lead_status, dial_status, "
    "dial_status_first, dial_status_last, disposition, attempts, agent_id, agent_name, ucid, monitor_ucid, "
    "call_started_at, call_ended_at, call_duration_s, skill, priority, created_at, updated_at, extra, "
    "request_id, payload_id, load_run_id, loaded_at"
)


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comment(table: str, column: str, text: str) -> None:
    if _postgres():
        op.execute(f"COMMENT ON COLUMN {table}.{column} IS {_quoted(text)}")


def _history_and_trigger(columns: str) -> None:
    """(Re)create the history view and the trigger that moves replaced rows, over ``columns``."""
    select = f"SELECT {columns} FROM dial_status_superseded UNION ALL SELECT {columns} FROM dial_status"
    if _postgres():
        # OR REPLACE may only add columns at the end; the existing columns keep their comments.
        op.execute(f"CREATE OR REPLACE VIEW dial_status_history AS {select}")
        old_columns = ", ".join(f"replaced.{name.strip()}" for name in columns.split(","))
        op.execute(f"""
            CREATE OR REPLACE FUNCTION dial_status_keep_replaced() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO dial_status_superseded ({columns})
                SELECT {old_columns}
                FROM replaced JOIN replacing USING (campaign_name, record_key)
                WHERE replacing.updated_at > replaced.updated_at;
                RETURN NULL;
            END $$
        """)
        return
    op.execute("DROP VIEW dial_status_history")
    op.execute(f"CREATE VIEW dial_status_history AS {select}")
    op.execute("DROP TRIGGER dial_status_keep_replaced")
    old_values = ", ".join(f"OLD.{name.strip()}" for name in columns.split(","))
    op.execute(f"""
        CREATE TRIGGER dial_status_keep_replaced AFTER UPDATE ON dial_status
        FOR EACH ROW WHEN NEW.updated_at > OLD.updated_at
        BEGIN
            INSERT INTO dial_status_superseded ({columns}) VALUES ({old_values});
        END
    """)


def upgrade() -> None:
    for table in VERSION_TABLES:
        with op.batch_alter_table(table, recreate="never") as batch:  # plain ALTER TABLE
            batch.add_column(sa.Column("load_notes", sa.Text(), nullable=True, comment=LOAD_NOTES))
    with op.batch_alter_table("dial_status_rejects", recreate="never") as batch:
        batch.add_column(
            sa.Column("occurrences", sa.BigInteger(), nullable=False, server_default="1", comment=OCCURRENCES)
        )
    _history_and_trigger(VERSION_COLUMNS_0002 + ", load_notes")
    for table in (*VERSION_TABLES, "dial_status_history"):
        _comment(table, "extra", COMMENTS["extra"][0])
    _comment("dial_status_history", "load_notes", LOAD_NOTES)
    _comment("dial_status_rejects", "raw_record", COMMENTS["raw_record"][0])
    _comment("load_runs", "status", COMMENTS["status"][0])


def downgrade() -> None:
    if _postgres():
        # A view cannot lose a column in place: recreate it and copy the comments back from the table.
        op.execute("DROP VIEW dial_status_history")
        op.execute(
            f"CREATE VIEW dial_status_history AS SELECT {VERSION_COLUMNS_0002} FROM dial_status_superseded "
            f"UNION ALL SELECT {VERSION_COLUMNS_0002} FROM dial_status"
        )
        op.execute("""
            DO $$
            DECLARE c record;
            BEGIN
                EXECUTE 'COMMENT ON VIEW dial_status_history IS '
                    || quote_literal('view: every distinct version seen, keyed by campaign_name + record_key'
                    || ' + updated_at (dial_status_superseded UNION ALL dial_status)');
                FOR c IN SELECT a.attname, col_description(a.attrelid, a.attnum) AS comment
                         FROM pg_attribute a
                         WHERE a.attrelid = 'dial_status_superseded'::regclass AND a.attnum > 0
                           AND NOT a.attisdropped AND a.attname <> 'load_notes'
                LOOP
                    EXECUTE format('COMMENT ON COLUMN dial_status_history.%I IS %L', c.attname, c.comment);
                END LOOP;
            END $$
        """)
    _history_and_trigger(VERSION_COLUMNS_0002)
    for table in VERSION_TABLES:
        _comment(table, "extra", COMMENTS["extra"][1])
    _comment("dial_status_history", "extra", COMMENTS["extra"][1])
    _comment("dial_status_rejects", "raw_record", COMMENTS["raw_record"][1])
    _comment("load_runs", "status", COMMENTS["status"][1])
    with op.batch_alter_table("dial_status_rejects", recreate="never") as batch:
        batch.drop_column("occurrences")
    for table in VERSION_TABLES:
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.drop_column("load_notes")
