"""Warehouse: dial_status, dial_status_superseded, dial_status_rejects, load_runs, and the views.

``dial_status_history`` is a view: every version is stored once, the current one in ``dial_status``
and every other one in ``dial_status_superseded`` (see ``warehouse``).

Column comments (PostgreSQL) come from ``warehouse.tables.DATA_DICTIONARY``, the data dictionary the
README shows.
Views are plain SQL with one dialect-specific expression: the IST calendar day (Asia/Kolkata is UTC+05:30
all year, without daylight saving).

Revision ID: 0002_warehouse
Revises: 0001_landing
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from cloudagent_etl.sqltypes import BigIntId, UtcDateTime
from cloudagent_etl.warehouse.tables import DATA_DICTIONARY, HISTORY_VIEW_COMMENT

revision = "0002_warehouse"
down_revision = "0001_landing"
branch_labels = None
depends_on = None

JsonDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _column(table: str, name: str, type_: sa.types.TypeEngine, nullable: bool = True, **kw) -> sa.Column:
    return sa.Column(name, type_, nullable=nullable, comment=DATA_DICTIONARY[table][name], **kw)


def _version_columns(table: str) -> list[sa.Column]:
    text = sa.Text()
    return [
        _column(table, "campaign_name", text, False),
        _column(table, "record_key", text, False),
        *(
            _column(table, name, text)
            for name in (
                "phone_number",
                "phone_number_raw",
                "customer_name",
                "lead_status",
                "dial_status",
                "dial_status_first",
                "dial_status_last",
                "disposition",
            )
        ),
        _column(table, "attempts", sa.Integer()),
        _column(table, "agent_id", text),
        _column(table, "agent_name", text),
        _column(table, "ucid", text),
        _column(table, "monitor_ucid", text),
        _column(table, "call_started_at", UtcDateTime()),
        _column(table, "call_ended_at", UtcDateTime()),
        _column(table, "call_duration_s", sa.Integer()),
        _column(table, "skill", text),
        _column(table, "priority", text),
        _column(table, "created_at", UtcDateTime()),
        _column(table, "updated_at", UtcDateTime(), False),
        _column(table, "extra", JsonDocument),
        _column(table, "request_id", sa.String(36), False),
        _column(table, "payload_id", sa.BigInteger(), False),
        _column(table, "load_run_id", sa.BigInteger(), False),
        _column(table, "loaded_at", UtcDateTime(), False),
    ]


def _keep_replaced_versions(version_columns: str) -> None:
    """A trigger on dial_status: a current row replaced by a newer version moves to dial_status_superseded.

    It sees the row actually replaced (also under concurrent loads), and costs nothing on inserts:
    PostgreSQL runs it once per statement over the updated rows (transition tables), SQLite per row.
    A version replaced in place (same ``updated_at``, other values) is the same version: nothing moves.
    """
    if op.get_bind().dialect.name == "postgresql":
        old_columns = ", ".join(f"replaced.{name.strip()}" for name in version_columns.split(","))
        op.execute(f"""
            CREATE FUNCTION dial_status_keep_replaced() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO dial_status_superseded ({version_columns})
                SELECT {old_columns}
                FROM replaced JOIN replacing USING (campaign_name, record_key)
                WHERE replacing.updated_at > replaced.updated_at;
                RETURN NULL;
            END $$
        """)
        op.execute("""
            CREATE TRIGGER dial_status_keep_replaced AFTER UPDATE ON dial_status
            REFERENCING OLD TABLE AS replaced NEW TABLE AS replacing
            FOR EACH STATEMENT EXECUTE FUNCTION dial_status_keep_replaced()
        """)
    else:
        old_values = ", ".join(f"OLD.{name.strip()}" for name in version_columns.split(","))
        op.execute(f"""
            CREATE TRIGGER dial_status_keep_replaced AFTER UPDATE ON dial_status
            FOR EACH ROW WHEN NEW.updated_at > OLD.updated_at
            BEGIN
                INSERT INTO dial_status_superseded ({version_columns}) VALUES ({old_values});
            END
        """)


def _quoted(comment: str) -> str:
    return "'" + comment.replace("'", "''") + "'"


def _ist_day(column: str) -> str:
    if op.get_bind().dialect.name == "postgresql":
        return f"CAST(({column} AT TIME ZONE 'Asia/Kolkata') AS date)"
    return f"date({column}, '+330 minutes')"


def upgrade() -> None:
    op.create_table(
        "dial_status",
        *_version_columns("dial_status"),
        _column("dial_status", "previous_load_run_id", sa.BigInteger()),
        sa.PrimaryKeyConstraint("campaign_name", "record_key", name="pk_dial_status"),
        comment="current state: one row per campaign_name + record_key, the newest updated_at wins",
    )
    op.create_index("ix_dial_status_campaign_name_updated_at", "dial_status", ["campaign_name", "updated_at"])
    op.create_index("ix_dial_status_dial_status_last", "dial_status", ["dial_status_last"])
    op.create_index("ix_dial_status_disposition", "dial_status", ["disposition"])

    op.create_table(
        "dial_status_superseded",
        *_version_columns("dial_status_superseded"),
        sa.PrimaryKeyConstraint(
            "campaign_name", "record_key", "updated_at", name="pk_dial_status_superseded"
        ),
        comment="versions that are not current: replaced by a newer one, or older than the current row",
    )
    # Every superseded version is older than its key's current one, so the union holds each version once.
    version_columns = ", ".join(column.name for column in _version_columns("dial_status_history"))
    op.execute(f"""
        CREATE VIEW dial_status_history AS
        SELECT {version_columns} FROM dial_status_superseded
        UNION ALL
        SELECT {version_columns} FROM dial_status
    """)
    _keep_replaced_versions(version_columns)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"COMMENT ON VIEW dial_status_history IS {_quoted(HISTORY_VIEW_COMMENT)}")
        for column in _version_columns("dial_status_history"):  # the columns this revision created
            op.execute(f"COMMENT ON COLUMN dial_status_history.{column.name} IS {_quoted(column.comment)}")

    table = "dial_status_rejects"
    op.create_table(
        table,
        _column(table, "payload_id", sa.BigInteger(), False),
        _column(table, "position", sa.Integer(), False, autoincrement=False),
        _column(table, "request_id", sa.String(36), False),
        _column(table, "load_run_id", sa.BigInteger(), False),
        _column(table, "reason", sa.Text(), False),
        _column(table, "raw_record", JsonDocument, False),
        _column(table, "rejected_at", UtcDateTime(), False),
        sa.PrimaryKeyConstraint("payload_id", "position", name="pk_dial_status_rejects"),
        comment="records that broke the contract, with the reason; never silently dropped",
    )

    table = "load_runs"
    op.create_table(
        table,
        _column(table, "load_run_id", BigIntId, False, autoincrement=True),
        _column(table, "request_id", sa.String(36), False),
        _column(table, "payload_id", sa.BigInteger(), False),
        _column(table, "status", sa.String(16), False),
        _column(table, "started_at", UtcDateTime(), False),
        _column(table, "finished_at", UtcDateTime(), False),
        *(
            _column(table, name, sa.BigInteger(), False)
            for name in ("rows_in", "inserted", "updated", "unchanged", "duplicates", "rejected")
        ),
        _column(table, "seconds", sa.Double(), False),
        _column(table, "error", sa.Text()),
        sa.CheckConstraint("status IN ('loaded', 'failed')", name="ck_load_runs_status"),
        sa.PrimaryKeyConstraint("load_run_id", name="pk_load_runs"),
        comment="one row per load of one payload: counts and timings",
    )
    op.create_index("ix_load_runs_request_id", "load_runs", ["request_id"])
    op.create_index("ix_load_runs_payload_id", "load_runs", ["payload_id"])

    # Per campaign and IST day of the last update: leads, dial attempts, answered leads, answer rate.
    op.execute(f"""
        CREATE VIEW dial_status_daily_summary AS
        SELECT campaign_name,
               {_ist_day("updated_at")} AS day_ist,
               COUNT(*) AS leads,
               COALESCE(SUM(attempts), 0) AS attempts,
               SUM(CASE WHEN dial_status_last = 'answered' THEN 1 ELSE 0 END) AS answered,
               ROUND(1.0 * SUM(CASE WHEN dial_status_last = 'answered' THEN 1 ELSE 0 END) / COUNT(*), 4)
                   AS answer_rate,
               SUM(CASE WHEN disposition IS NOT NULL THEN 1 ELSE 0 END) AS with_disposition
        FROM dial_status
        GROUP BY campaign_name, {_ist_day("updated_at")}
    """)
    op.execute(f"""
        CREATE VIEW dial_status_daily_dispositions AS
        SELECT campaign_name,
               {_ist_day("updated_at")} AS day_ist,
               COALESCE(disposition, '(none)') AS disposition,
               COUNT(*) AS leads
        FROM dial_status
        GROUP BY campaign_name, {_ist_day("updated_at")}, COALESCE(disposition, '(none)')
    """)
    # Per campaign x window: how many requests, whether one was received / loaded, and what is missing.
    op.execute("""
        CREATE VIEW export_coverage AS
        SELECT campaign_name,
               window_start,
               window_end,
               COUNT(*) AS requests,
               MAX(CASE WHEN received_at IS NOT NULL THEN 1 ELSE 0 END) AS received,
               MAX(CASE WHEN state = 'loaded' THEN 1 ELSE 0 END) AS loaded,
               1 - MAX(CASE WHEN state = 'loaded' THEN 1 ELSE 0 END) AS missing,
               MAX(updated_at) AS last_change_at
        FROM export_requests
        GROUP BY campaign_name, window_start, window_end
    """)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.execute("DROP VIEW IF EXISTS export_coverage")
    op.execute("DROP VIEW IF EXISTS dial_status_daily_dispositions")
    op.execute("DROP VIEW IF EXISTS dial_status_daily_summary")
    op.drop_table("load_runs")
    op.drop_table("dial_status_rejects")
    op.execute("DROP VIEW IF EXISTS dial_status_history")
    op.execute("DROP TRIGGER IF EXISTS dial_status_keep_replaced" + (" ON dial_status" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS dial_status_keep_replaced()")
    op.drop_table("dial_status_superseded")
    op.drop_table("dial_status")
