"""One live export per window, deadlines that sweeps can act on, re-requests and multi-part callbacks.

- ``export_requests.export_key``: SHA-256 of account, campaign, window and filters. A partial unique index
  allows one *live* (``requested`` or ``received``) request per key, so a retry, a cleared task or a
  concurrent run of the same window reuses the live export instead of spending another API call.
- ``callback_deadline``: when the wait for the callback gives up; a sweep expires requests past it.
- ``attempt`` / ``retry_of`` / ``reason``: a re-request after an expired or failed export is a new row that
  says which one it replaces and why.
- ``callback_payloads.part_no`` / ``part_count``: part i of n, when the body says so; a request has landed
  once every part has.
- ``export_request_runs``: which DAG runs waited for which request (a run may reuse another run's live
  export, and re-request an expired one), so a run's quality checks find the requests it relied on.
- ``export_coverage`` shows the attempts: expired and failed requests per campaign × window.

Revision ID: 0004_one_live_export
Revises: 0003_request_load_context
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from cloudagent_etl.sqltypes import UtcDateTime

revision = "0004_one_live_export"
down_revision = "0003_request_load_context"
branch_labels = None
depends_on = None

LIVE = "state IN ('received', 'requested')"

COVERAGE_BEFORE = """
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
"""
COVERAGE = """
    CREATE VIEW export_coverage AS
    SELECT campaign_name,
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
    GROUP BY campaign_name, window_start, window_end
"""


def upgrade() -> None:
    op.execute("DROP VIEW export_coverage")
    with op.batch_alter_table("export_requests", recreate="never") as batch:  # plain ALTER TABLE
        batch.add_column(
            sa.Column(
                "export_key",
                sa.String(64),
                nullable=True,
                comment="SHA-256 of account, campaign, window and filters: one live export per key",
            )
        )
        batch.add_column(
            sa.Column(
                "callback_deadline",
                UtcDateTime(),
                nullable=True,
                comment="when the wait for the callback gives up; a sweep expires the request after it",
            )
        )
        batch.add_column(
            sa.Column(
                "attempt",
                sa.Integer(),
                nullable=False,
                server_default="1",
                comment="1 for the first export of a window, 2 for its first re-request, ...",
            )
        )
        batch.add_column(
            sa.Column(
                "retry_of",
                sa.String(36),
                nullable=True,
                comment="the expired or failed request this one re-requests",
            )
        )
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True, comment="why this export was made"))
    op.create_index(
        "uq_export_requests_export_key_live",
        "export_requests",
        ["export_key"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )
    with op.batch_alter_table("callback_payloads", recreate="never") as batch:
        batch.add_column(
            sa.Column(
                "part_no", sa.Integer(), nullable=True, comment="i of a body that says it is part i of n"
            )
        )
        batch.add_column(
            sa.Column(
                "part_count", sa.Integer(), nullable=True, comment="n of a body that says it is part i of n"
            )
        )
    op.create_table(
        "export_request_runs",
        sa.Column("dag_id", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("campaign_name", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("claimed_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["export_requests.request_id"],
            name="fk_export_request_runs_request_id_export_requests",
        ),
        sa.PrimaryKeyConstraint(
            "dag_id", "run_id", "campaign_name", "request_id", name="pk_export_request_runs"
        ),
        comment="which DAG run waited for which export request (its own, a reused live one, a re-request)",
    )
    op.execute(COVERAGE)


def downgrade() -> None:
    op.execute("DROP VIEW export_coverage")
    op.drop_table("export_request_runs")
    with op.batch_alter_table("callback_payloads", recreate="never") as batch:
        batch.drop_column("part_count")
        batch.drop_column("part_no")
    op.drop_index("uq_export_requests_export_key_live", "export_requests")
    with op.batch_alter_table("export_requests", recreate="never") as batch:
        for column in ("reason", "retry_of", "attempt", "callback_deadline", "export_key"):
            batch.drop_column(column)
    op.execute(COVERAGE_BEFORE)
