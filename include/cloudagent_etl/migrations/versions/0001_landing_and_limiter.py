"""Landing tables (export_requests, callback_payloads) and the shared rate limiter's call log.

Revision ID: 0001_landing
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from cloudagent_etl.sqltypes import BigIntId, UtcDateTime

revision = "0001_landing"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "export_requests",
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("campaign_name", sa.Text(), nullable=False),
        sa.Column("window_start", UtcDateTime(), nullable=False),
        sa.Column("window_end", UtcDateTime(), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("unique_id", sa.Text(), nullable=True),
        sa.Column("callback_token_sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), server_default="requested", nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("requested_at", UtcDateTime(), nullable=True),
        sa.Column("received_at", UtcDateTime(), nullable=True),
        sa.Column("loaded_at", UtcDateTime(), nullable=True),
        sa.Column("failed_at", UtcDateTime(), nullable=True),
        sa.Column("expired_at", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("dag_id", sa.Text(), nullable=True),
        sa.Column("run_id", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "state IN ('requested', 'received', 'loaded', 'failed', 'expired')",
            name="ck_export_requests_state",
        ),
        sa.PrimaryKeyConstraint("request_id", name="pk_export_requests"),
    )
    op.create_index(
        "ix_export_requests_campaign_name_window_start", "export_requests", ["campaign_name", "window_start"]
    )
    op.create_index("ix_export_requests_unique_id", "export_requests", ["unique_id"])

    op.create_table(
        "callback_payloads",
        sa.Column("payload_id", BigIntId, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("unique_id", sa.Text(), nullable=True),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("client_addr", sa.Text(), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=True),
        sa.Column("parse_state", sa.String(16), server_default="pending", nullable=False),
        sa.Column("late", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["export_requests.request_id"],
            name="fk_callback_payloads_request_id_export_requests",
        ),
        sa.PrimaryKeyConstraint("payload_id", name="pk_callback_payloads"),
        sa.UniqueConstraint("request_id", "sha256", name="uq_callback_payloads_request_id_sha256"),
    )
    op.create_table(
        "callback_payload_chunks",
        sa.Column("payload_id", BigIntId, nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["payload_id"],
            ["callback_payloads.payload_id"],
            name="fk_callback_payload_chunks_payload_id_callback_payloads",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("payload_id", "seq", name="pk_callback_payload_chunks"),
    )

    op.create_table(
        "rate_limit_accounts",
        sa.Column("account", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("account", name="pk_rate_limit_accounts"),
    )
    op.create_table(
        "api_call_log",
        sa.Column("call_id", BigIntId, autoincrement=True, nullable=False),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("called_at", sa.Double(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("call_id", name="pk_api_call_log"),
    )
    op.create_index("ix_api_call_log_account_called_at", "api_call_log", ["account", "called_at"])


def downgrade() -> None:
    op.drop_table("api_call_log")
    op.drop_table("rate_limit_accounts")
    op.drop_table("callback_payload_chunks")
    op.drop_table("callback_payloads")
    op.drop_table("export_requests")
