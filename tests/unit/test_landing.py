"""Landing tables on SQLite and PostgreSQL: requests, tokens, states, payload storage and reading."""

from __future__ import annotations

import hashlib
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select

from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.errors import PayloadError, StateTransitionError
from cloudagent_etl.schema import callback_payload_chunks, callback_payloads, export_requests

WINDOW = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))


def new_request(engine: Engine, campaign: str = "A") -> landing.NewExportRequest:
    return landing.create_export_request(
        engine,
        account="demo_user",
        campaign_name=campaign,
        window_start=WINDOW[0],
        window_end=WINDOW[1],
        filters={"sortby": "2", "status": "All"},
        dag_id="cloudagent_dial_status",
        run_id="manual__1",
    )


def state_of(engine: Engine, request_id: str) -> str:
    request = landing.get_export_request(engine, request_id)
    assert request is not None
    return request.state


def test_create_stores_only_the_token_hash_and_builds_the_callback_url(engine: Engine) -> None:
    new = new_request(engine)
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
    assert (request.state, request.campaign_name, request.filters) == (
        "requested",
        "A",
        {"sortby": "2", "status": "All"},
    )
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
        (["received", "loaded", "loaded"], None),
        (["received", "received", "failed", "loaded"], None),
        (["expired", "loaded"], None),
        (["loaded"], "from 'requested' to 'loaded'"),
        (["received", "requested"], "from 'received' to 'requested'"),
        (["received", "loaded", "received"], "from 'loaded' to 'received'"),
        (["failed", "received"], "from 'failed' to 'received'"),
        (["received", "bogus"], "unknown state"),
    ],
)
def test_set_state_allows_only_the_documented_moves(
    engine: Engine, path: list[str], refused: str | None
) -> None:
    new = new_request(engine)
    *allowed, last = path
    for state in allowed:
        with engine.begin() as conn:
            landing.set_state(conn, new.request_id, state)
    if refused is None:
        with engine.begin() as conn:
            landing.set_state(conn, new.request_id, last)
        assert state_of(engine, new.request_id) == last
    else:
        with pytest.raises(StateTransitionError, match=refused), engine.begin() as conn:
            landing.set_state(conn, new.request_id, last)
        assert state_of(engine, new.request_id) == (allowed[-1] if allowed else "requested")


def test_set_state_stamps_times_and_error_and_runs_in_the_callers_transaction(engine: Engine) -> None:
    new = new_request(engine)
    with engine.begin() as conn:
        landing.set_state(conn, new.request_id, "received")
    first = landing.get_export_request(engine, new.request_id)
    with engine.begin() as conn:
        landing.set_state(conn, new.request_id, "received")
        landing.set_state(conn, new.request_id, "failed", error="load failed: bad data")
    failed = landing.get_export_request(engine, new.request_id)
    assert first is not None
    assert failed is not None
    assert failed.received_at == first.received_at, "received_at keeps the first receipt"
    assert (failed.state, failed.error) == ("failed", "load failed: bad data")
    assert failed.failed_at is not None
    assert failed.updated_at >= first.updated_at
    with engine.connect() as conn:
        landing.set_state(conn, new.request_id, "loaded")
        conn.rollback()  # the caller's merge failed
    assert state_of(engine, new.request_id) == "failed", "rolled back with the caller's transaction"
    with engine.begin() as conn:
        landing.set_state(conn, new.request_id, "loaded")
    loaded = landing.get_export_request(engine, new.request_id)
    assert loaded is not None
    assert loaded.error is None
    assert loaded.loaded_at is not None
    with pytest.raises(StateTransitionError, match="does not exist"), engine.begin() as conn:
        landing.set_state(conn, "00000000-0000-0000-0000-000000000000", "received")


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
    assert state_of(engine, new.request_id) == "received"
    with engine.connect() as conn:
        assert landing.received_payload_ids(conn, new.request_id) == [first.payload_id]
        assert landing.read_payload_body(conn, first.payload_id) == body
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
        landing.set_state(conn, new.request_id, "loaded")
    late = landing.store_callback(engine, new.request_id, landing.CallbackBody.from_bytes(b"[2]"))
    assert late.late
    assert not late.duplicate
    assert state_of(engine, new.request_id) == "loaded"
    expired = new_request(engine, "B")
    with engine.begin() as conn:
        landing.set_state(conn, expired.request_id, "expired", error="no callback")
    assert landing.store_callback(engine, expired.request_id, landing.CallbackBody.from_bytes(b"[3]")).late
    assert state_of(engine, expired.request_id) == "expired"
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
        assert landing.read_payload_body(conn, stored.payload_id) == body
    with engine.begin() as conn:
        conn.execute(
            delete(callback_payload_chunks).where(
                callback_payload_chunks.c.payload_id == stored.payload_id, callback_payload_chunks.c.seq == 1
            )
        )
    with engine.connect() as conn, pytest.raises(PayloadError, match="incomplete"):
        landing.read_payload_body(conn, stored.payload_id)
    with engine.connect() as conn, pytest.raises(PayloadError, match="does not exist"):
        landing.read_payload_body(conn, 999_999)


def test_an_empty_body_is_a_payload_without_chunks(engine: Engine) -> None:
    new = new_request(engine)
    stored = landing.store_callback(engine, new.request_id, landing.CallbackBody.from_bytes(b""))
    with engine.connect() as conn:
        assert landing.read_payload_body(conn, stored.payload_id) == b""
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
        "parse_state": "unparseable",
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
            landing.set_state(conn, new.request_id, "loaded")
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
                    "body": landing.read_payload_body(conn, row.payload_id),
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

    one_statement = deliveries(landing._store_in_one_statement)
    steps = deliveries(landing._store_in_steps)
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
            landing.read_payload_body(conn, pid) for pid in landing.received_payload_ids(conn, new.request_id)
        }
    assert stored == set(bodies)
    assert state_of(engine, new.request_id) == "received"
    engine.dispose()
