"""Several CloudAgent accounts side by side: the account is part of every warehouse key.

- ``dial_status`` and ``dial_status_superseded`` get ``account`` (the CloudAgent userName), first in their
  primary keys; ``dial_status_rejects`` and ``load_runs`` get it too. Existing rows take the account of the
  export request that wrote them; nothing else is rewritten. A row whose request is gone stops the
  migration (naming the table and the count) rather than guess.
- The trigger that moves replaced rows, the history view and the per-day views carry and group by it;
  ``export_coverage`` groups by it.
- ``export_requests`` gets ``cloudagent_conn_id``: the Airflow connection of the account (how messages,
  alerts, the sweep and reprocess find its settings). Earlier requests keep NULL: they were made with the
  one connection there was.

Comments and view texts are written out here: a migration must not change when the code does.

Revision ID: 0007_accounts
Revises: 0006_installation_probe_secret
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_accounts"
down_revision = "0006_installation_probe_secret"
branch_labels = None
depends_on = None

VERSION_TABLES = ("dial_status", "dial_status_superseded")
OTHER_TABLES = ("dial_status_rejects", "load_runs")
#: The columns of a version as 0005 left them (the view and the trigger name them all).
VERSION_COLUMNS_0005 = (
    "campaign_name, record_key, phone_number, phone_number_raw, customer_name, lead_status, dial_status, "
    "dial_status_first, dial_status_last, disposition, attempts, agent_id, agent_name, ucid, monitor_ucid, "
    "call_started_at, call_ended_at, call_duration_s, skill, priority, created_at, updated_at, extra, "
    "request_id, payload_id, load_run_id, loaded_at, load_notes"
)
VERSION_COLUMNS = "account, " + VERSION_COLUMNS_0005
KEY_0005 = ("campaign_name", "record_key")
KEY = ("account", *KEY_0005)
ACCOUNT = {
    "dial_status": "CloudAgent account (its userName) the export was made with; part of the key",
    "dial_status_superseded": "CloudAgent account (its userName) the export was made with; part of the key",
    "dial_status_history": "CloudAgent account (its userName) the export was made with; part of the key",
    "dial_status_rejects": "CloudAgent account (its userName) of the export",
    "load_runs": "CloudAgent account (its userName) of the export",
}
CONN_ID = "Airflow connection of the account (NULL: made before accounts had connections of their own)"
TABLE_COMMENTS = {
    "dial_status": (
        "current state: one row per account + campaign_name + record_key, the newest updated_at wins",
        "current state: one row per campaign_name + record_key, the newest updated_at wins",
    ),
    "dial_status_history": (
        "view: every distinct version seen, keyed by account + campaign_name + record_key + updated_at "
        "(dial_status_superseded UNION ALL dial_status)",
        "view: every distinct version seen, keyed by campaign_name + record_key + updated_at "
        "(dial_status_superseded UNION ALL dial_status)",
    ),
}


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ist_day(column: str) -> str:
    if _postgres():
        return f"CAST(({column} AT TIME ZONE 'Asia/Kolkata') AS date)"
    return f"date({column}, '+330 minutes')"


def _drop_dependents() -> None:
    """Views and the trigger name the columns and keys this revision changes: they are made again after."""
    for view in ("export_coverage", "dial_status_daily_dispositions", "dial_status_daily_summary"):
        op.execute(f"DROP VIEW {view}")
    op.execute("DROP VIEW dial_status_history")
    if _postgres():
        op.execute("DROP TRIGGER dial_status_keep_replaced ON dial_status")
        op.execute("DROP FUNCTION dial_status_keep_replaced()")
    else:
        op.execute("DROP TRIGGER dial_status_keep_replaced")


def _create_dependents(columns: str, key: tuple[str, ...]) -> None:
    """The history view, the trigger that moves replaced rows, and the per-day and coverage views."""
    group = ", ".join(key[:-1])  # the key without record_key: account (when there is one) and campaign
    op.execute(
        f"CREATE VIEW dial_status_history AS SELECT {columns} FROM dial_status_superseded "
        f"UNION ALL SELECT {columns} FROM dial_status"
    )
    if _postgres():
        old_columns = ", ".join(f"replaced.{name.strip()}" for name in columns.split(","))
        op.execute(f"""
            CREATE FUNCTION dial_status_keep_replaced() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO dial_status_superseded ({columns})
                SELECT {old_columns}
                FROM replaced JOIN replacing USING ({", ".join(key)})
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
        old_values = ", ".join(f"OLD.{name.strip()}" for name in columns.split(","))
        op.execute(f"""
            CREATE TRIGGER dial_status_keep_replaced AFTER UPDATE ON dial_status
            FOR EACH ROW WHEN NEW.updated_at > OLD.updated_at
            BEGIN
                INSERT INTO dial_status_superseded ({columns}) VALUES ({old_values});
            END
        """)
    op.execute(f"""
        CREATE VIEW dial_status_daily_summary AS
        SELECT {group},
               {_ist_day("updated_at")} AS day_ist,
               COUNT(*) AS leads,
               COALESCE(SUM(attempts), 0) AS attempts,
               SUM(CASE WHEN dial_status_last = 'answered' THEN 1 ELSE 0 END) AS answered,
               ROUND(1.0 * SUM(CASE WHEN dial_status_last = 'answered' THEN 1 ELSE 0 END) / COUNT(*), 4)
                   AS answer_rate,
               SUM(CASE WHEN disposition IS NOT NULL THEN 1 ELSE 0 END) AS with_disposition
        FROM dial_status
        GROUP BY {group}, {_ist_day("updated_at")}
    """)
    op.execute(f"""
        CREATE VIEW dial_status_daily_dispositions AS
        SELECT {group},
               {_ist_day("updated_at")} AS day_ist,
               COALESCE(disposition, '(none)') AS disposition,
               COUNT(*) AS leads
        FROM dial_status
        GROUP BY {group}, {_ist_day("updated_at")}, COALESCE(disposition, '(none)')
    """)
    op.execute(f"""
        CREATE VIEW export_coverage AS
        SELECT {group},
               window_start,
               window_end,
               COUNT(*) AS requests,
               MAX(CASE WHEN received_at IS NOT NULL THEN 1 ELSE 0 END) AS received,
               MAX(CASE WHEN state = 'loaded' THEN 1 ELSE 0 END) AS loaded,
               1 - MAX(CASE WHEN state = 'loaded' THEN 1 ELSE 0 END) AS missing,
               SUM(CASE WHEN state = 'expired' THEN 1 ELSE 0 END) AS expired,
               SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS failed,
               MAX(attempt) AS attempts,
               MAX(updated_at) AS last_change_at
        FROM export_requests
        GROUP BY {group}, window_start, window_end
    """)


def _fill_account(table: str) -> None:
    """The account of each row, from the export request that wrote it; none may be left without one."""
    op.execute(
        f"UPDATE {table} SET account = (SELECT r.account FROM export_requests r "
        f"WHERE r.request_id = {table}.request_id)"
    )
    orphans = (
        op.get_bind().execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE account IS NULL")).scalar_one()
    )
    if orphans:
        raise RuntimeError(
            f"{orphans} rows of {table} have no export request to take their account from: restore the "
            "requests (or delete the rows) before migrating"
        )


def _comments(pairs: dict[tuple[str, str], str]) -> None:
    if _postgres():
        for (table, column), text in pairs.items():
            op.execute(f"COMMENT ON COLUMN {table}.{column} IS {_quoted(text)}")


def _copy_view_comments() -> None:
    """PostgreSQL: the history view's column comments from the superseded table (a new view has none)."""
    if not _postgres():
        return
    op.execute("""
        DO $$
        DECLARE c record;
        BEGIN
            FOR c IN SELECT a.attname, col_description(a.attrelid, a.attnum) AS comment
                     FROM pg_attribute a
                     WHERE a.attrelid = 'dial_status_superseded'::regclass AND a.attnum > 0
                       AND NOT a.attisdropped AND col_description(a.attrelid, a.attnum) IS NOT NULL
            LOOP
                EXECUTE format('COMMENT ON COLUMN dial_status_history.%I IS %L', c.attname, c.comment);
            END LOOP;
        END $$
    """)


def _table_comments(which: int) -> None:
    if _postgres():
        op.execute(f"COMMENT ON TABLE dial_status IS {_quoted(TABLE_COMMENTS['dial_status'][which])}")
        op.execute(
            f"COMMENT ON VIEW dial_status_history IS {_quoted(TABLE_COMMENTS['dial_status_history'][which])}"
        )


def _primary_keys(key: tuple[str, ...]) -> None:
    for table in VERSION_TABLES:
        columns = [*key, *(("updated_at",) if table != "dial_status" else ())]
        with op.batch_alter_table(table) as batch:  # SQLite: the table is made again, rows copied
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", columns)


def upgrade() -> None:
    with op.batch_alter_table("export_requests", recreate="never") as batch:  # plain ALTER TABLE
        batch.add_column(sa.Column("cloudagent_conn_id", sa.Text(), nullable=True, comment=CONN_ID))
    _drop_dependents()
    for table in (*VERSION_TABLES, *OTHER_TABLES):
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.add_column(sa.Column("account", sa.Text(), nullable=True, comment=ACCOUNT[table]))
        _fill_account(table)
        with op.batch_alter_table(table) as batch:
            batch.alter_column("account", existing_type=sa.Text(), nullable=False)
    _primary_keys(KEY)
    op.drop_index("ix_dial_status_campaign_name_updated_at", table_name="dial_status")
    op.create_index(
        "ix_dial_status_account_campaign_name_updated_at",
        "dial_status",
        ["account", "campaign_name", "updated_at"],
    )
    _create_dependents(VERSION_COLUMNS, KEY)
    _comments({(table, "account"): ACCOUNT[table] for table in (*VERSION_TABLES, *OTHER_TABLES)})
    _copy_view_comments()
    _table_comments(0)


def downgrade() -> None:
    accounts = op.get_bind().execute(sa.text("SELECT COUNT(DISTINCT account) FROM dial_status")).scalar_one()
    if accounts > 1:
        raise RuntimeError(
            f"dial_status holds {accounts} accounts: without the account in the key their rows would collide"
        )
    _drop_dependents()
    op.drop_index("ix_dial_status_account_campaign_name_updated_at", table_name="dial_status")
    op.create_index("ix_dial_status_campaign_name_updated_at", "dial_status", ["campaign_name", "updated_at"])
    _primary_keys(KEY_0005)
    for table in (*VERSION_TABLES, *OTHER_TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("account")
    _create_dependents(VERSION_COLUMNS_0005, KEY_0005)
    _copy_view_comments()
    _table_comments(1)
    with op.batch_alter_table("export_requests", recreate="never") as batch:
        batch.drop_column("cloudagent_conn_id")
