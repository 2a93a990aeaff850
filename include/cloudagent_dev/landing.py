"""Landing rows for tests and benchmarks, made without the pipeline's rules.

:func:`create_export_request` inserts a bare ``requested`` row: outside the one-live-export rule (tests
and benchmarks make many requests of one window on purpose), with no API call. The product always goes
through ``landing.claim_export``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert

from cloudagent_etl import landing
from cloudagent_etl.api.request import ExportFilters
from cloudagent_etl.exports import Export
from cloudagent_etl.landing.requests import new_request_row
from cloudagent_etl.settings import DEFAULT_TIMEZONE


def create_export_request(
    engine: Engine,
    *,
    account: str,
    campaign_name: str,
    window_start: datetime,
    window_end: datetime,
    filters: Mapping[str, Any] | None = None,
    timezone: str = DEFAULT_TIMEZONE,
    callback_base_url: str | None = None,
    dag_id: str | None = None,
    run_id: str | None = None,
    cloudagent_conn_id: str | None = None,
) -> landing.NewExportRequest:
    """Insert a ``requested`` row with a fresh callback token; return the id and the token."""
    export = Export(
        account,
        campaign_name,
        window_start,
        window_end,
        ExportFilters.from_params(filters or {}),
        timezone,
        callback_base_url,
        cloudagent_conn_id,
    )
    new, row = new_request_row(export, dag_id=dag_id, run_id=run_id)
    with engine.begin() as conn:
        conn.execute(insert(landing.export_requests).values(row))
    return new


def read_payload_body(conn: Connection, payload_id: int) -> bytes:
    """A payload's whole raw body in memory (small bodies only: the product streams them)."""
    return b"".join(landing.iter_payload_body(conn, payload_id))
