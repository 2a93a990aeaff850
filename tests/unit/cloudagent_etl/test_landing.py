"""Landing tables on SQLite and PostgreSQL: requests, tokens, the request lifecycle, payload storage."""

from __future__ import annotations

import hashlib
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select

from cloudagent_dev.landing import read_payload_body
from cloudagent_etl import landing
from cloudagent_etl.databases import database_for
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.errors import ConfigurationError, PayloadError, StateTransitionError
from cloudagent_etl.landing import (
    CallbackStatus,
    RequestState,
    callback_payload_chunks,
    callback_payloads,
    export_requests,
    storing,
)
from cloudagent_etl.landing.lifecycle import move
from tests.factories import FILTERS, WINDOW, land, new_request, state_of

REQUESTED, RECEIVED, LOADED, FAILED, EXPIRED = RequestState


def test_create_stores_only_the_token_hash_and_builds_the_callback_url(engine: Engine) -> None:
    new = new_request(engine, "A", timezone="Asia/Dubai", callback_base_url="https://cb.example")
    token = new.token.get()
    assert len(token) >= 43
    assert token not in repr(new)
    with engine.connect() as conn:
        row = conn.execute(
            select(export_requests).where(export_requests.c.request_id == new.request_id)
        ).one()
    assert token not in json.dumps(row._asdict(), default=str)
    assert row.callback_token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    request = landing.get_export_request(engine, new.request_id)
    assert request is not None
    assert (request.state, request.campaign_name, request.filters) == (REQUESTED, "A", FILTERS)
    assert (request.timezone, request.callback_base_url) == ("Asia/Dubai", "https://cb.example")
    assert landing.callback_status(engine, new.request_id) is CallbackStatus.WAITING
    assert request.window_start == WINDOW[0]
    assert request.created_at.tzinfo is not None
    assert landing.callback_url("https://cb.example/", new.request_id, new.token) == (
        f"https://cb.example/callbacks/dial-status/{new.request_id}/{token}"
    )
    assert new_request(engine).token != new.token


def test_record_unique_id_stamps_requested_at_and_refuses_unknown_requests(engine: Engine) -> None:
    new = new_request(engine)
    landing.record_unique_id(engine, new.request_id, "U-1")
    request = landing.get_export_request(engine, new.request_id)
    assert request is not None
    assert request.unique_id == "U-1"
    assert request.requested_at is not None
    assert landing.find_request_by_unique_id(engine, "U-1") == new.request_id
    assert landing.find_request_by_unique_id(engine, "U-2") is None
    with pytest.raises(StateTransitionError, match="does not exist"):
        landing.record_unique_id(engine, "00000000-0000-0000-0000-000000000000", "U-1")


def test_verify_callback_token(engine: Engine) -> None:
    new = new_request(engine)
    assert landing.verify_callback_token(engine, new.request_id, new.token.get()) is landing.TokenCheck.VALID
    assert (
        landing.verify_callback_token(engine, new.request_id, "x" + new.token.get())
        is landing.TokenCheck.WRONG_TOKEN
    )
    unknown = "00000000-0000-0000-0000-000000000000"
    assert (
        landing.verify_callback_token(engine, unknown, new.token.get()) is landing.TokenCheck.UNKNOWN_REQUEST
    )
    for odd in ("'; DROP TABLE export_requests; --", "a\x00b", new.request_id.upper(), "x" * 10_000):
        assert (
            landing.verify_callback_token(engine, odd, new.token.get()) is landing.TokenCheck.UNKNOWN_REQUEST
        )


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ([RECEIVED, LOADED, LOADED], None),
        ([RECEIVED, RECEIVED, FAILED, LOADED], None),
        ([EXPIRED, LOADED], None),
        ([EXPIRED, EXPIRED], None),
        ([LOADED], "from 'requested' to 'loaded'"),
        ([RECEIVED, REQUESTED], "from 'received' to 'requested'"),
        ([RECEIVED, LOADED, RECEIVED], "from 'loaded' to 'received'"),
        ([FAILED, RECEIVED], "from 'failed' to 'received'"),
        ([RECEIVED, LOADED, EXPIRED], "from 'loaded' to 'expired'"),
    ],
)
def test_only_the_documented_moves_are_allowed(
    engine: Engine, path: list[RequestState], refused: str | None
) -> None:
    """The transition table itself (``lifecycle.move``); the named transitions below are what callers use."""
    new = new_request(engine)
    *allowed, last = path
    if refused is None:
        allowed = path
    for state in allowed:
        with engine.begin() as conn:
            move(conn, new.request_id, state)
    if refused is None:
        assert state_of(engine, new.request_id) == last
    else:
        with pytest.raises(StateTransitionError, match=refused), engine.begin() as conn:
            move(conn, new.request_id, last)
        assert state_of(engine, new.request_id) == (allowed[-1] if allowed else REQUESTED)


def test_moves_stamp_times_and_error_and_run_in_the_callers_transaction(engine: Engine) -> None:
    new = new_request(engine)
    land(engine, new.request_id, b"[1]")
    first = landing.get_export_request(engine, new.request_id)
    landing.mark_load_failed(engine, new.request_id, "load failed: bad data")
    failed = landing.get_export_request(engine, new.request_id)
    assert first is not None
    assert failed is not None
    assert first.received_at is not None
    assert failed.received_at == first.received_at, "received_at keeps the first receipt"
    assert (failed.state, failed.error) == (FAILED, "load failed: bad data")
    assert failed.failed_at is not None
    assert failed.updated_at >= first.updated_at
    with engine.connect() as conn:
        landing.mark_loaded(conn, new.request_id)
        conn.rollback()  # the caller's merge failed
    assert state_of(engine, new.request_id) == FAILED, "rolled back with the caller's transaction"
    with engine.begin() as conn:
        landing.mark_loaded(conn, new.request_id)
    loaded = landing.get_export_request(engine, new.request_id)
    assert loaded is not None
    assert loaded.error is None
    assert loaded.loaded_at is not None
    assert loaded.is_loaded
    with pytest.raises(StateTransitionError, match="does not exist"), engine.begin() as conn:
        landing.mark_loaded(conn, "00000000-0000-0000-0000-000000000000")


def test_callback_status_answers_waiting_landed_or_gave_up(engine: Engine) -> None:
    waiting, landed, failed = (new_request(engine).request_id for _ in range(3))
    land(engine, landed, b"[]")
    landing.mark_failed(engine, failed, "CloudAgent said no")

    assert landing.callback_status(engine, waiting) is CallbackStatus.WAITING
    assert landing.callback_status(engine, landed) is CallbackStatus.LANDED
    assert landing.callback_status(engine, failed) is CallbackStatus.GAVE_UP
    with engine.begin() as conn:
        landing.mark_loaded(conn, landed)
    assert landing.callback_status(engine, landed) is CallbackStatus.LANDED
    with pytest.raises(ConfigurationError, match="does not exist in this database"):
        landing.callback_status(engine, "00000000-0000-0000-0000-000000000000")


def test_mark_expired_expires_only_a_request_still_waiting(engine: Engine) -> None:
    waiting, landed = (new_request(engine).request_id for _ in range(2))
    land(engine, landed, b"[]")

    assert landing.mark_expired(engine, waiting, "no callback") is CallbackStatus.GAVE_UP
    assert landing.mark_expired(engine, landed, "no callback") is CallbackStatus.LANDED

    expired = landing.get_export_request(engine, waiting)
    assert expired is not None
    assert (expired.state, expired.error) == (EXPIRED, "no callback")
    assert expired.expired_at is not None
    assert state_of(engine, landed) == RECEIVED
    assert landing.mark_expired(engine, waiting, "again") is CallbackStatus.GAVE_UP
    assert landing.get_export_request(engine, waiting).error == "no callback"  # type: ignore[union-attr]


def test_mark_load_failed_leaves_a_loaded_or_expired_request_as_it_is(engine: Engine) -> None:
    loaded, expired = (new_request(engine).request_id for _ in range(2))
    land(engine, loaded, b"[]")
    with engine.begin() as conn:
        landing.mark_loaded(conn, loaded)
    landing.mark_expired(engine, expired, "no callback")

    landing.mark_load_failed(engine, loaded, "unparseable")
    landing.mark_load_failed(engine, expired, "unparseable")

    assert (state_of(engine, loaded), state_of(engine, expired)) == (LOADED, EXPIRED)


def test_requests_of_a_run_and_requests_with_payloads(engine: Engine) -> None:
    first = new_request(engine, "Sales", dag_id="d", run_id="r").request_id
    latest = new_request(engine, "Sales", dag_id="d", run_id="r").request_id
    other_run = new_request(engine, "Support", dag_id="d", run_id="other").request_id
    land(engine, first, b"[]")
    land(engine, other_run, b"[]")
    late = new_request(engine, "Sales").request_id
    landing.mark_expired(engine, late, "no callback")
    assert landing.store_callback(engine, late, landing.CallbackBody.from_bytes(b"[1]")).late

    other_account = new_request(engine, "Sales", dag_id="d", run_id="r", cloudagent_conn_id="acme").request_id
    land(engine, other_account, b"[]")

    assert {k: r.request_id for k, r in landing.latest_requests_of_run(engine, "d", "r").items()} == {
        ("cloudagent_default", "Sales"): latest,
        ("acme", "Sales"): other_account,
    }
    assert landing.latest_request_per_campaign(engine)["Support"].request_id == other_run
    default_sales = [("cloudagent_default", "Sales")]
    assert landing.requests_with_payloads(engine, default_sales, *WINDOW) == [first, late]
    assert landing.requests_with_payloads(engine, [("acme", "Sales")], *WINDOW) == [other_account]
    day_after = (WINDOW[1], WINDOW[1] + timedelta(days=1))
    both = [("cloudagent_default", "Sales"), ("cloudagent_default", "Support")]
    assert landing.requests_with_payloads(engine, both, *day_after) == []
    around_start = (WINDOW[0] - timedelta(hours=1), WINDOW[0] + timedelta(hours=1))
    assert set(landing.requests_with_payloads(engine, both, *around_start)) == {first, other_run, late}
    assert landing.requests_with_payloads(engine, [], *WINDOW) == []


def test_landed_payload_knows_the_request_and_the_time_zone_account_and_campaign_of_its_export(
    engine: Engine,
) -> None:
    new = new_request(engine, "Support", timezone="Asia/Dubai")
    payload_id = land(engine, new.request_id, b"[]", content_type="application/json; charset=utf-8")
    payload = landing.landed_payload(engine, payload_id)
    with pytest.raises(PayloadError, match="does not exist"):
        landing.landed_payload(engine, 999_999)
    assert payload == landing.LandedPayload(
        payload_id, new.request_id, "application/json; charset=utf-8", "Asia/Dubai", "test_user", "Support"
    )


def test_store_callback_stores_the_body_once_and_moves_the_request_to_received(engine: Engine) -> None:
    new = new_request(engine)
    body = b'[{"CampaignName": "A", "note": "\'; DROP TABLE callback_payloads; --"}]'
    first = landing.store_callback(
        engine,
        new.request_id,
        landing.CallbackBody.from_bytes(body),
        content_type="application/json",
        unique_id="U-1",
        client_addr="127.0.0.1",
        headers={"content-type": "application/json"},
    )
    again = landing.store_callback(engine, new.request_id, landing.CallbackBody.from_bytes(body))
    assert (first.duplicate, again.duplicate, again.payload_id, first.late) == (
        False,
        True,
        first.payload_id,
        False,
    )
    assert state_of(engine, new.request_id) == RECEIVED
    assert landing.received_payload_ids(engine, new.request_id) == [first.payload_id]
    with engine.connect() as conn:
        assert read_payload_body(conn, first.payload_id) == body
        row = conn.execute(select(callback_payloads)).one()
    assert (row.sha256, row.size_bytes, row.unique_id, row.parse_state, row.late) == (
        hashlib.sha256(body).hexdigest(),
        len(body),
        "U-1",
        "pending",
        0,
    )
    assert row.headers == {"content-type": "application/json"}
    other = new_request(engine, "B")
    elsewhere = landing.store_callback(engine, other.request_id, landing.CallbackBody.from_bytes(body))
    assert not elsewhere.duplicate, "the same body for another request is another payload"


def test_callbacks_after_the_request_settled_are_stored_and_flagged_late(engine: Engine) -> None:
    new = new_request(engine)
    landing.store_callback(engine, new.request_id, landing.CallbackBody.from_bytes(b"[1]"))
    with engine.begin() as conn:
        landing.mark_loaded(conn, new.request_id)
    late = landing.store_callback(engine, new.request_id, landing.CallbackBody.from_bytes(b"[2]"))
    assert late.late
    assert not late.duplicate
    assert state_of(engine, new.request_id) == LOADED
    expired = new_request(engine, "B")
    landing.mark_expired(engine, expired.request_id, "no callback")
    assert landing.store_callback(engine, expired.request_id, landing.CallbackBody.from_bytes(b"[3]")).late
    assert state_of(engine, expired.request_id) == EXPIRED
    with engine.connect() as conn:
        flags = dict(conn.execute(select(callback_payloads.c.payload_id, callback_payloads.c.late)).all())
    assert sorted(flags.values()) == [0, 1, 1]


def test_big_bodies_are_chunked_and_read_back_by_every_reader(engine: Engine) -> None:
    new = new_request(engine)
    body = bytes(range(256)) * ((2 * landing.CHUNK_BYTES + 12345) // 256 + 1)
    stored = landing.store_callback(engine, new.request_id, landing.CallbackBody.from_bytes(body))
    with engine.connect() as conn:
        chunks = list(landing.iter_payload_body(conn, stored.payload_id))
        assert [len(chunk) for chunk in chunks[:-1]] == [landing.CHUNK_BYTES] * (len(chunks) - 1)
        assert b"".join(chunks) == body
        with landing.open_payload_body(conn, stored.payload_id) as file:
            assert file.read(10) == body[:10]
            assert file.read() == body[10:]
        assert read_payload_body(conn, stored.payload_id) == body
    with engine.begin() as conn:
        conn.execute(
            delete(callback_payload_chunks).where(
                callback_payload_chunks.c.payload_id == stored.payload_id, callback_payload_chunks.c.seq == 1
            )
        )
    with engine.connect() as conn, pytest.raises(PayloadError, match="incomplete"):
        read_payload_body(conn, stored.payload_id)
    with engine.connect() as conn, pytest.raises(PayloadError, match="does not exist"):
        read_payload_body(conn, 999_999)


def test_an_empty_body_is_a_payload_without_chunks(engine: Engine) -> None:
    new = new_request(engine)
    stored = landing.store_callback(engine, new.request_id, landing.CallbackBody.from_bytes(b""))
    with engine.connect() as conn:
        assert read_payload_body(conn, stored.payload_id) == b""
        assert conn.execute(select(func.count()).select_from(callback_payload_chunks)).scalar_one() == 0


@pytest.mark.postgres
def test_one_statement_and_step_by_step_storage_leave_identical_rows(pg_url: str) -> None:
    """The PostgreSQL single-statement path (small bodies) and the generic one must be interchangeable."""
    engine = create_db_engine(pg_url)
    details: dict[str, Any] = {
        "content_type": "application/json",
        "unique_id": "U-1",
        "client_addr": "127.0.0.1",
        "headers": {"content-type": "application/json", "user-agent": "CA/1 'x\""},
        "part_no": 1,
        "part_count": 2,
    }

    def deliveries(store: Any) -> tuple[list[Any], list[Any]]:
        """Stored, duplicate, empty, then late after the load: outcomes and the resulting rows."""
        new = new_request(engine)
        outcomes = [
            store(engine, new.request_id, landing.CallbackBody.from_bytes(b'[{"a": 1}]'), **details),
            store(engine, new.request_id, landing.CallbackBody.from_bytes(b'[{"a": 1}]'), **details),
            store(
                engine, new.request_id, landing.CallbackBody.from_bytes(b""), **{**details, "headers": None}
            ),
        ]
        with engine.begin() as conn:
            landing.mark_loaded(conn, new.request_id)
        outcomes.append(store(engine, new.request_id, landing.CallbackBody.from_bytes(b"[2]"), **details))
        first_id = outcomes[0].payload_id
        with engine.connect() as conn:
            payload_rows = conn.execute(
                select(callback_payloads)
                .where(callback_payloads.c.request_id == new.request_id)
                .order_by(callback_payloads.c.payload_id)
            ).all()
            rows = [
                {
                    **row._asdict(),
                    "payload_id": row.payload_id - first_id,
                    "request_id": None,
                    "received_at": None,
                    "body": read_payload_body(conn, row.payload_id),
                    "chunks": conn.execute(
                        select(func.count()).where(callback_payload_chunks.c.payload_id == row.payload_id)
                    ).scalar_one(),
                }
                for row in payload_rows
            ]
            request = conn.execute(
                select(export_requests).where(export_requests.c.request_id == new.request_id)
            ).one()
        summary = [(o.payload_id - first_id, o.duplicate, o.late) for o in outcomes]
        return summary, [*rows, (request.state, request.error, request.received_at is not None)]

    one_statement = deliveries(partial(storing._store_in_one_statement, database_for(engine)))
    steps = deliveries(storing._store_in_steps)
    engine.dispose()
    assert one_statement == steps
    # ids relative to the first; the refused duplicate used up a sequence value on both paths
    assert one_statement[0] == [(0, False, False), (0, True, False), (2, False, False), (3, False, True)]


@pytest.mark.postgres
def test_one_statement_storage_refuses_an_unknown_request(pg_url: str) -> None:
    engine = create_db_engine(pg_url)
    with pytest.raises(StateTransitionError, match="does not exist"):
        landing.store_callback(engine, str(uuid.uuid4()), landing.CallbackBody.from_bytes(b"[1]"))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(callback_payloads)).scalar_one() == 0
    engine.dispose()


@pytest.mark.postgres
def test_concurrent_deliveries_to_one_request_are_stored_once_each(pg_url: str) -> None:
    """Racing deliveries (same body and different bodies) through the single-statement path."""
    engine = create_db_engine(pg_url, pool_size=8)
    new = new_request(engine)
    bodies = [b"[0]"] * 8 + [b"[%d]" % n for n in range(1, 9)]

    def deliver(body: bytes) -> landing.StoredCallback:
        return landing.store_callback(engine, new.request_id, landing.CallbackBody.from_bytes(body))

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(deliver, bodies))
    same_body = outcomes[:8]
    assert len({outcome.payload_id for outcome in same_body}) == 1
    assert sorted(outcome.duplicate for outcome in same_body) == [False] + [True] * 7
    assert not any(outcome.duplicate for outcome in outcomes[8:])
    with engine.connect() as conn:
        stored = {
            read_payload_body(conn, pid) for pid in landing.received_payload_ids(engine, new.request_id)
        }
    assert stored == set(bodies)
    assert state_of(engine, new.request_id) == RECEIVED
    engine.dispose()


def test_a_multi_part_export_has_landed_only_once_every_part_has(engine: Engine) -> None:
    new = new_request(engine)
    for number in (2, 1):
        body = landing.CallbackBody.from_bytes(b'{"part": %d, "parts": 3, "data": []}' % number)
        landing.store_callback(engine, new.request_id, body, part=(number, 3))
        assert landing.callback_status(engine, new.request_id) is CallbackStatus.WAITING
    assert landing.mark_expired(engine, new.request_id, "2 of 3 parts") is CallbackStatus.GAVE_UP

    whole = new_request(engine, "B")
    for number in (3, 1, 2):
        body = landing.CallbackBody.from_bytes(b'{"part": %d, "parts": 3, "data": []}' % number)
        landing.store_callback(engine, whole.request_id, body, part=(number, 3))
    assert landing.callback_status(engine, whole.request_id) is CallbackStatus.LANDED
    assert landing.mark_expired(engine, whole.request_id, "too late") is CallbackStatus.LANDED
    with engine.connect() as conn:
        parts = conn.execute(
            select(callback_payloads.c.part_no, callback_payloads.c.part_count).where(
                callback_payloads.c.request_id == whole.request_id
            )
        ).all()
    assert sorted(parts) == [(1, 3), (2, 3), (3, 3)]
