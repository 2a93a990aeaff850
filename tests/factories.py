"""Builders of the rows and bodies tests need: export requests, landed payloads, CloudAgent-like records.

One place for them, so that a change to what a request or a record holds is made once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from cloudagent_dev.landing import create_export_request, read_payload_body
from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine

#: The default export window of a test request (a nightly window: 03:30 IST to 03:30 IST).
WINDOW = (datetime(2025, 6, 1, 22, 0, tzinfo=UTC), datetime(2025, 6, 2, 22, 0, tzinfo=UTC))
FILTERS = {"sortby": "2", "status": "All", "dialstatus": "ALL", "dispositions": "ALL"}


def new_request(
    engine: Engine,
    campaign: str = "Sales",
    *,
    unique_id: str | None = None,
    window: tuple[datetime, datetime] = WINDOW,
    **fields: Any,
) -> landing.NewExportRequest:
    """A ``requested`` export request (with CloudAgent's ``unique_id`` recorded, when given)."""
    values: dict[str, Any] = {
        "account": "test_user",
        "campaign_name": campaign,
        "window_start": window[0],
        "window_end": window[1],
        "filters": FILTERS,
        **fields,
    }
    new = create_export_request(engine, **values)
    if unique_id:
        landing.record_unique_id(engine, new.request_id, unique_id)
    return new


def new_request_in(db_url: str, campaign: str = "Sales", **options: Any) -> landing.NewExportRequest:
    """:func:`new_request` in the database ``db_url`` (for tests that hold a URL, not an engine)."""
    engine = create_db_engine(db_url)
    try:
        return new_request(engine, campaign, **options)
    finally:
        engine.dispose()


def land(
    engine: Engine,
    request_id: str,
    body: bytes | list[Any] | dict[str, Any],
    content_type: str | None = "application/json",
) -> int:
    """Store ``body`` (bytes, or a document sent as JSON) as a callback of the request; its payload id."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    stored = landing.store_callback(
        engine, request_id, landing.CallbackBody.from_bytes(data), content_type=content_type
    )
    return stored.payload_id


def record(key: str, updated: str, **fields: str) -> dict[str, str]:
    """A dial-status record as CloudAgent sends it (with the account's ``Apikey``, as CloudAgent does)."""
    base = {
        "CampaignName": "Sales",
        "DataUniqueId": key,
        "PhoneNumber": "9876543210",
        "DialStatus": "answered",
        "Attempts": "1",
        "UpdatedDate": updated,
        "Apikey": "secret-api-key",
    }
    return {**base, **fields}


def state_of(engine: Engine, request_id: str) -> landing.RequestState:
    request = landing.get_export_request(engine, request_id)
    assert request is not None, f"request {request_id} does not exist"
    return request.state


def stored_payloads(db_url: str) -> list[dict[str, Any]]:
    """Every stored payload row with its body, in arrival order."""
    engine = create_db_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = [
                row._asdict()
                for row in conn.execute(
                    select(landing.callback_payloads).order_by(landing.callback_payloads.c.payload_id)
                )
            ]
            for row in rows:
                row["body"] = read_payload_body(conn, row["payload_id"])
    finally:
        engine.dispose()
    return rows
