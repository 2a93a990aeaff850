"""Personal data: pseudonyms beside the phone number, erasure receipts, suppression, retention marks, and
the analyst views with their role.

- ``dial_status`` and ``dial_status_superseded`` get ``phone_e164`` and ``phone_pseudonym`` (not indexed:
  an index of random 64-character keys costs every load, and an erasure scans anyway);
  rows loaded before stay NULL until ``cloudagent-etl pseudonyms rebuild`` (the key is not the migration's
  to know). The history view and the trigger that moves replaced rows carry them.
- ``load_runs`` gets ``erased``; ``dial_status_rejects`` gets ``raw_purged_at``; ``callback_payloads``
  gets ``body_purged_at``, ``purge_setting``, ``body_rewritten_at``, ``body_rewrite_note``.
- New tables ``erasure_receipts`` and ``suppressed_pseudonyms``.
- The analyst views (``analyst_dial_status``, ``analyst_dial_status_history``) with the allow-list of
  ``CLOUDAGENT_ANALYST_FIELDS`` at migration time, and on PostgreSQL the role ``cloudagent_analyst``
  (NOLOGIN) that reads them and the aggregate views only. The views are made by the product's
  ``personal_data.analyst`` (``cloudagent-etl analyst-fields`` makes them again with another allow-list).

Revision ID: 0008_personal_data
Revises: 0007_accounts
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from cloudagent_etl.personal_data.analyst import ANALYST_VIEWS, analyst_fields, create_analyst_views
from cloudagent_etl.sqltypes import BigIntId, JsonDocument, UtcDateTime
from cloudagent_etl.warehouse.tables import DATA_DICTIONARY

revision = "0008_personal_data"
down_revision = "0007_accounts"
branch_labels = None
depends_on = None

VERSION_TABLES = ("dial_status", "dial_status_superseded")
#: The columns of a version as 0007 left them (the view and the trigger name them all).
VERSION_COLUMNS_0007 = (
    "account, campaign_name, record_key, phone_number, phone_number_raw, customer_name, lead_status, "
    "dial_status, dial_status_first, dial_status_last, disposition, attempts, agent_id, agent_name, ucid, "
    "monitor_ucid, call_started_at, call_ended_at, call_duration_s, skill, priority, created_at, updated_at, "
    "extra, request_id, payload_id, load_run_id, loaded_at, load_notes"
)
VERSION_COLUMNS = VERSION_COLUMNS_0007 + ", phone_e164, phone_pseudonym"
KEY = ("account", "campaign_name", "record_key")
PHONE_COLUMNS = ("phone_e164", "phone_pseudonym")
PAYLOAD_COLUMNS = {
    "body_purged_at": "when retention deleted the raw body (size, sha256 and the counts stay); NULL: kept",
    "purge_setting": "the retention setting the body was purged under",
    "body_rewritten_at": "when the body was last rewritten without the records of people erased on request",
    "body_rewrite_note": "what the rewrites removed and how",
}


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _doc(table: str, column: str) -> str:
    return DATA_DICTIONARY[table][column]


def _drop_dependents() -> None:
    """The views over the version tables and the trigger name their columns: made again after."""
    for view in ANALYST_VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute("DROP VIEW dial_status_history")
    if not _postgres():  # PostgreSQL replaces the trigger's function in place
        op.execute("DROP TRIGGER dial_status_keep_replaced")


def _history_and_trigger(columns: str) -> None:
    """The history view and the trigger moving replaced rows, over ``columns``."""
    op.execute(
        f"CREATE VIEW dial_status_history AS SELECT {columns} FROM dial_status_superseded "
        f"UNION ALL SELECT {columns} FROM dial_status"
    )
    if _postgres():
        old_columns = ", ".join(f"replaced.{name.strip()}" for name in columns.split(","))
        op.execute(f"""
            CREATE OR REPLACE FUNCTION dial_status_keep_replaced() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO dial_status_superseded ({columns})
                SELECT {old_columns}
                FROM replaced JOIN replacing USING ({", ".join(KEY)})
                WHERE replacing.updated_at > replaced.updated_at;
                RETURN NULL;
            END $$
        """)
        op.execute(
            "COMMENT ON VIEW dial_status_history IS 'view: every distinct version seen, keyed by account + "
            "campaign_name + record_key + updated_at (dial_status_superseded UNION ALL dial_status)'"
        )
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
    else:
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
            for column in PHONE_COLUMNS:
                batch.add_column(sa.Column(column, sa.Text(), nullable=True, comment=_doc(table, column)))
    with op.batch_alter_table("load_runs", recreate="never") as batch:
        batch.add_column(
            sa.Column(
                "erased",
                sa.BigInteger(),
                nullable=False,
                server_default="0",
                comment=_doc("load_runs", "erased"),
            )
        )
    with op.batch_alter_table("dial_status_rejects", recreate="never") as batch:
        batch.add_column(
            sa.Column(
                "raw_purged_at",
                UtcDateTime(),
                nullable=True,
                comment=_doc("dial_status_rejects", "raw_purged_at"),
            )
        )
    with op.batch_alter_table("callback_payloads", recreate="never") as batch:
        for column, comment in PAYLOAD_COLUMNS.items():
            kind = UtcDateTime() if column.endswith("_at") else sa.Text()
            batch.add_column(sa.Column(column, kind, nullable=True, comment=comment))
    op.create_table(
        "erasure_receipts",
        sa.Column("receipt_id", BigIntId, primary_key=True, autoincrement=True,
                  comment=_doc("erasure_receipts", "receipt_id")),
        sa.Column("phone_pseudonym", sa.String(64), nullable=False,
                  comment=_doc("erasure_receipts", "phone_pseudonym")),
        sa.Column("counts", JsonDocument, nullable=False, comment=_doc("erasure_receipts", "counts")),
        sa.Column("erased_at", UtcDateTime(), nullable=False, comment=_doc("erasure_receipts", "erased_at")),
        sa.Column("requested_by", sa.Text(), nullable=True, comment=_doc("erasure_receipts", "requested_by")),
        sa.Column("reason", sa.Text(), nullable=True, comment=_doc("erasure_receipts", "reason")),
        sa.PrimaryKeyConstraint("receipt_id", name="pk_erasure_receipts"),
        comment="one row per erasure on request: what was removed, when, for whom; never the number",
    )  # fmt: skip
    op.create_index("ix_erasure_receipts_phone_pseudonym", "erasure_receipts", ["phone_pseudonym"])
    op.create_table(
        "suppressed_pseudonyms",
        sa.Column("phone_pseudonym", sa.String(64), nullable=False,
                  comment=_doc("suppressed_pseudonyms", "phone_pseudonym")),
        sa.Column("suppressed_at", UtcDateTime(), nullable=False,
                  comment=_doc("suppressed_pseudonyms", "suppressed_at")),
        sa.Column("receipt_id", sa.BigInteger(), nullable=False,
                  comment=_doc("suppressed_pseudonyms", "receipt_id")),
        sa.PrimaryKeyConstraint("phone_pseudonym", name="pk_suppressed_pseudonyms"),
        comment="people erased on request: later loads keep their records out",
    )  # fmt: skip
    _drop_dependents()
    _history_and_trigger(VERSION_COLUMNS)
    create_analyst_views(op.get_bind(), analyst_fields())


def downgrade() -> None:
    _drop_dependents()
    if _postgres():
        # The role stays (it may be granted to people); it reads nothing once the views are gone.
        op.execute(
            "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'cloudagent_analyst') THEN "
            "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM cloudagent_analyst; END IF; END $$"
        )
    op.drop_table("suppressed_pseudonyms")
    op.drop_index("ix_erasure_receipts_phone_pseudonym", table_name="erasure_receipts")
    op.drop_table("erasure_receipts")
    with op.batch_alter_table("callback_payloads", recreate="never") as batch:
        for column in PAYLOAD_COLUMNS:
            batch.drop_column(column)
    with op.batch_alter_table("dial_status_rejects", recreate="never") as batch:
        batch.drop_column("raw_purged_at")
    with op.batch_alter_table("load_runs", recreate="never") as batch:
        batch.drop_column("erased")
    for table in VERSION_TABLES:
        with op.batch_alter_table(table, recreate="never") as batch:  # plain ALTER TABLE ... DROP COLUMN
            for column in PHONE_COLUMNS:
                batch.drop_column(column)
    _history_and_trigger(VERSION_COLUMNS_0007)
