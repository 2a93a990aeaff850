"""What is synced since when, and whether CloudAgent accepts it; per-day views say which days are complete.

- ``sync_targets``: one row per connection × campaign: the first IST day it was configured or requested
  (coverage starts there), the last account check or export refusal (``ok``, ``campaign_unknown``,
  ``apikey_rejected``), when, CloudAgent's answer with the setting to fix, and a keyed fingerprint of the
  configuration it was made with.
- ``dial_status_daily_summary`` and ``dial_status_daily_dispositions`` get ``complete``: 1 once the nightly
  window that ends the IST day has closed (03:30 IST the next day), 0 for today's partial day.

On PostgreSQL the views are granted again to the role ``cloudagent_analyst`` when it exists (a view made
again loses its grants). Comments and view texts are written out here: a migration must not change when
the code does.

Revision ID: 0009_sync_targets
Revises: 0008_personal_data
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from cloudagent_etl.sqltypes import UtcDateTime

revision = "0009_sync_targets"
down_revision = "0008_personal_data"
branch_labels = None
depends_on = None

GROUP = "account, campaign_name"
DAILY_VIEWS = ("dial_status_daily_summary", "dial_status_daily_dispositions")
ANALYST_ROLE = "cloudagent_analyst"


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _ist_day(column: str) -> str:
    if _postgres():
        return f"CAST(({column} AT TIME ZONE 'Asia/Kolkata') AS date)"
    return f"date({column}, '+330 minutes')"


def _complete(day: str) -> str:
    """1 once the nightly window ending after IST day ``day`` has closed: 03:30 IST the next day."""
    if _postgres():
        closes = f"({day} + 1) + TIME '03:30'"
        return f"CASE WHEN {closes} <= (now() AT TIME ZONE 'Asia/Kolkata') THEN 1 ELSE 0 END"
    closes = f"datetime({day}, '+1 day', '+210 minutes')"
    return f"CASE WHEN {closes} <= datetime('now', '+330 minutes') THEN 1 ELSE 0 END"


def _daily_views(with_complete: bool) -> None:
    day = _ist_day("updated_at")
    complete = f",\n               {_complete(day)} AS complete" if with_complete else ""
    op.execute(f"""
        CREATE VIEW dial_status_daily_summary AS
        SELECT {GROUP},
               {day} AS day_ist,
               COUNT(*) AS leads,
               COALESCE(SUM(attempts), 0) AS attempts,
               SUM(CASE WHEN dial_status_last = 'answered' THEN 1 ELSE 0 END) AS answered,
               ROUND(1.0 * SUM(CASE WHEN dial_status_last = 'answered' THEN 1 ELSE 0 END) / COUNT(*), 4)
                   AS answer_rate,
               SUM(CASE WHEN disposition IS NOT NULL THEN 1 ELSE 0 END) AS with_disposition{complete}
        FROM dial_status
        GROUP BY {GROUP}, {day}
    """)
    op.execute(f"""
        CREATE VIEW dial_status_daily_dispositions AS
        SELECT {GROUP},
               {day} AS day_ist,
               COALESCE(disposition, '(none)') AS disposition,
               COUNT(*) AS leads{complete}
        FROM dial_status
        GROUP BY {GROUP}, {day}, COALESCE(disposition, '(none)')
    """)
    if _postgres():
        views = ", ".join(DAILY_VIEWS)
        op.execute(f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ANALYST_ROLE}') THEN
                    EXECUTE 'GRANT SELECT ON {views} TO {ANALYST_ROLE}';
                END IF;
            END $$
        """)
        if with_complete:
            for view in DAILY_VIEWS:
                op.execute(
                    f"COMMENT ON COLUMN {view}.complete IS '1 once the IST day''s nightly window has closed "
                    "(03:30 IST the next day); 0 for a day still being synced'"
                )


def _drop_daily_views() -> None:
    for view in DAILY_VIEWS:
        op.execute(f"DROP VIEW {view}")


def upgrade() -> None:
    op.create_table(
        "sync_targets",
        sa.Column("cloudagent_conn_id", sa.Text(), nullable=False,
                  comment="Airflow connection of the account"),
        sa.Column("campaign_name", sa.Text(), nullable=False, comment="CloudAgent campaign"),
        sa.Column(
            "first_day",
            sa.Date(),
            nullable=False,
            comment="first IST day the campaign was configured or requested: coverage starts here",
        ),
        sa.Column(
            "check_result",
            sa.String(32),
            nullable=True,
            comment="last account check or export refusal: ok, campaign_unknown, apikey_rejected; "
            "NULL: never",
        ),
        sa.Column("checked_at", UtcDateTime(), nullable=True,
                  comment="when check_result was recorded (UTC)"),
        sa.Column("check_message", sa.Text(), nullable=True,
                  comment="CloudAgent's answer and the setting to fix (no secret)"),
        sa.Column("fingerprint", sa.String(64), nullable=True,
                  comment="HMAC of the account settings and campaign at the check (keyed, never the apiKey)"),
        sa.PrimaryKeyConstraint("cloudagent_conn_id", "campaign_name", name="pk_sync_targets"),
        comment="per account x campaign: since when it is synced and whether CloudAgent accepts it",
    )  # fmt: skip
    _drop_daily_views()
    _daily_views(with_complete=True)


def downgrade() -> None:
    _drop_daily_views()
    _daily_views(with_complete=False)
    op.drop_table("sync_targets")
