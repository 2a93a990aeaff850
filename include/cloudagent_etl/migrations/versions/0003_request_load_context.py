"""export_requests records what a load needs: the export's time zone and the callback base URL given.

The load and the reprocess DAG read the time zone from the request instead of the API connection, and
messages about a missing callback can name the URL CloudAgent was given (its base; the token is never
stored). Requests made before this revision get the default time zone, the only one used until now.

On PostgreSQL the landing and limiter columns also get the comments their tables describe (0001 left
them out; the warehouse's came with 0002).

Revision ID: 0003_request_load_context
Revises: 0002_warehouse
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_request_load_context"
down_revision = "0002_warehouse"
branch_labels = None
depends_on = None


#: Column comments of revision 0001's tables, as the metadata states them (written on PostgreSQL only).
COMMENTS = {
    ("export_requests", "request_id"): "UUID made by us; part of the callback URL",
    ("export_requests", "account"): "CloudAgent userName the request was made for",
    ("export_requests", "filters"): "sortby, status, dialstatus, dispositions as sent",
    ("export_requests", "unique_id"): "uniqueId CloudAgent answered with",
    ("export_requests", "callback_token_sha256"): "SHA-256 of the per-request token",
    ("export_requests", "requested_at"): "when CloudAgent accepted it",
    ("export_requests", "received_at"): "first callback stored",
    ("callback_payloads", "unique_id"): "uniqueId carried by the body, when it has one",
    ("callback_payloads", "headers"): "allow-listed request headers",
    ("callback_payloads", "late"): "1 when it arrived after the load",
    ("callback_payload_chunks", "seq"): "0, 1, 2, ... in body order",
    ("rate_limit_accounts", "account"): "row locked while a call is admitted",
    ("api_call_log", "called_at"): "UNIX time (s) the call was admitted",
    ("api_call_log", "purpose"): "e.g. the campaign or request id",
}


def _comment_columns(comments: dict[tuple[str, str], str | None]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for (table, column), comment in comments.items():
        text = "NULL" if comment is None else "'" + comment.replace("'", "''") + "'"
        op.execute(f"COMMENT ON COLUMN {table}.{column} IS {text}")


def upgrade() -> None:
    with op.batch_alter_table("export_requests", recreate="never") as batch:  # plain ALTER TABLE
        batch.add_column(
            sa.Column(
                "timezone",
                sa.Text(),
                nullable=False,
                server_default="Asia/Kolkata",
                comment="time zone of the account: the export's window and the records' times are wall "
                "clock in it",
            )
        )
        batch.add_column(
            sa.Column(
                "callback_base_url",
                sa.Text(),
                nullable=True,
                comment="base of the callBackUrl given (no token)",
            )
        )
    _comment_columns(COMMENTS)


def downgrade() -> None:
    _comment_columns(dict.fromkeys(COMMENTS))
    with op.batch_alter_table("export_requests", recreate="never") as batch:  # plain ALTER TABLE
        batch.drop_column("callback_base_url")
        batch.drop_column("timezone")
