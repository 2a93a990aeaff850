"""The installation row: the secret a receiver proves with that it writes to this database.

A preflight probes ``CLOUDAGENT_CALLBACK_BASE_URL`` and checks the answer against this secret, so a URL
that reaches a proxy, another service or another installation's receiver fails in seconds instead of
after the callback timeout. The row itself is created on first use (``identity.probe_secret``).

Revision ID: 0006_installation_probe_secret
Revises: 0005_load_notes_reject_counts
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from cloudagent_etl.sqltypes import UtcDateTime

revision = "0006_installation_probe_secret"
down_revision = "0005_load_notes_reject_counts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "installation",
        sa.Column("installation_id", sa.Integer, primary_key=True, autoincrement=False, comment="always 1"),
        sa.Column(
            "probe_secret", sa.Text, nullable=False, comment="HMAC key of the callback-URL probe; never shown"
        ),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("installation")
