"""A callback that lands while its request is being loaded is loaded too, never left behind."""

from __future__ import annotations

from sqlalchemy import Engine, event, select

from cloudagent_etl.db import create_db_engine
from cloudagent_etl.landing import callback_payloads
from cloudagent_etl.pipeline import load_payloads
from cloudagent_etl.warehouse.tables import dial_status
from tests.factories import land, new_request, record


def test_a_payload_landing_after_the_payloads_were_listed_is_loaded(engine: Engine, db_url: str) -> None:
    request_id = new_request(engine).request_id
    land(engine, request_id, [record("lead-1", "2024-05-01 10:00:00")])
    sender = create_db_engine(db_url)
    connects: list[object] = []

    # The load connects once to list the payloads, then once per payload; the second callback lands in
    # between, after the listing and before the first payload's transaction commits `loaded`.
    @event.listens_for(engine, "engine_connect")
    def land_second_callback(_connection: object) -> None:
        connects.append(_connection)
        if len(connects) == 2:
            land(sender, request_id, [record("lead-2", "2024-05-01 11:00:00")])

    result = load_payloads(engine, request_id)
    event.remove(engine, "engine_connect", land_second_callback)
    sender.dispose()

    assert result.payloads == 2
    with engine.connect() as conn:
        keys = set(conn.scalars(select(dial_status.c.record_key)))
        states = set(conn.scalars(select(callback_payloads.c.parse_state)))
    assert keys == {"lead-1", "lead-2"}
    assert states == {"loaded"}
