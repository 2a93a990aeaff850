"""The callback receiver over real HTTP on loopback, on SQLite and PostgreSQL: what is stored, what is not."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine
from tests.factories import new_request_in as new_request
from tests.factories import state_of, stored_payloads
from tests.fixtures.receiver import ReceiverHandle, StartReceiver
from tests.timing import DEADLINE_S

RECORDS = [{"CampaignName": "A", "DataUniqueId": "D-1", "PhoneNumber": "919800000001", "Apikey": "k"}]
SHARED = "shared-callback-s3cret"


def state(db_url: str, request_id: str) -> str:
    engine = create_db_engine(db_url)
    try:
        return state_of(engine, request_id).value
    finally:
        engine.dispose()


def raw_exchange(base_url: str, request: bytes, *, wait_s: float = 10) -> bytes:
    """Send ``request`` bytes on a fresh connection and return whatever comes back until it closes."""
    url = httpx.URL(base_url)
    with socket.create_connection((url.host, url.port), timeout=wait_s) as sock:
        sock.sendall(request)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


@pytest.mark.parametrize(
    ("content", "content_type", "unique_id"),
    [
        (json.dumps(RECORDS).encode(), "application/json", None),
        (json.dumps({"uniqueId": "U-1", "data": RECORDS}).encode(), "application/json", "U-1"),
        (
            urlencode({"data": json.dumps(RECORDS), "uniqueId": "U-1"}).encode(),
            "application/x-www-form-urlencoded",
            "U-1",
        ),
        (
            b'--XyZ\r\nContent-Disposition: form-data; name="data"\r\n\r\n'
            + json.dumps({"uniqueId": "U-1", "records": RECORDS}).encode()
            + b"\r\n--XyZ--\r\n",
            "multipart/form-data; boundary=XyZ",
            "U-1",
        ),
        (b"\x00\x01 anything at all \xff", "application/octet-stream", None),
    ],
    ids=["json-array", "json-object", "form", "multipart", "binary"],
)
def test_every_body_shape_is_stored_verbatim_and_the_request_becomes_received(
    receiver: ReceiverHandle, content: bytes, content_type: str, unique_id: str | None
) -> None:
    new = new_request(receiver.db_url)
    response = httpx.post(
        receiver.callback_url(new),
        content=content,
        headers={"Content-Type": content_type, "User-Agent": "CA/1"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "stored"
    [row] = stored_payloads(receiver.db_url)
    assert row["body"] == content
    assert row["sha256"] == hashlib.sha256(content).hexdigest()
    assert (row["size_bytes"], row["content_type"], row["unique_id"]) == (
        len(content),
        content_type,
        unique_id,
    )
    assert (row["request_id"], row["parse_state"], row["late"], row["client_addr"]) == (
        new.request_id,
        "pending",
        0,
        "127.0.0.1",
    )
    assert row["headers"]["user-agent"] == "CA/1"
    assert state(receiver.db_url, new.request_id) == "received"


def test_duplicate_and_late_deliveries(receiver: ReceiverHandle) -> None:
    new = new_request(receiver.db_url)
    body = json.dumps(RECORDS).encode()
    first = httpx.post(receiver.callback_url(new), content=body)
    again = httpx.post(receiver.callback_url(new), content=body)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == {"status": "duplicate", "payload_id": first.json()["payload_id"], "late": False}
    engine = create_db_engine(receiver.db_url)
    with engine.begin() as conn:
        landing.mark_loaded(conn, new.request_id)
    engine.dispose()
    late = httpx.post(receiver.callback_url(new), content=body + b" ")
    assert late.status_code == 200
    assert late.json()["late"] is True
    assert [row["late"] for row in stored_payloads(receiver.db_url)] == [0, 1]
    assert state(receiver.db_url, new.request_id) == "loaded"


def test_wrong_token_or_unknown_request_store_nothing(receiver: ReceiverHandle) -> None:
    new = new_request(receiver.db_url)
    base = f"{receiver.base_url}/callbacks/dial-status"
    cases = {
        f"{base}/{new.request_id}/{new.token.get()}x": 401,
        f"{base}/{new.request_id}/{quote('x' * 300)}": 401,
        f"{base}/{uuid.uuid4()}/{new.token.get()}": 404,
        f"{base}/not-a-uuid/{new.token.get()}": 404,
        f"{base}/{new.request_id}": 404,  # the fixed URL with its token in the path: not enabled here
    }
    for url, expected in cases.items():
        response = httpx.post(url, content=b"[1]")
        assert response.status_code == expected, url
        assert set(response.json()) == {"error"}
    assert stored_payloads(receiver.db_url) == []
    assert state(receiver.db_url, new.request_id) == "requested"
    assert new.token.get() not in receiver.log()


def test_other_routes_and_methods_get_short_json_errors(receiver: ReceiverHandle) -> None:
    new = new_request(receiver.db_url)
    base = receiver.base_url
    callback = receiver.callback_url(new)
    cases = {
        ("GET", callback): 405,
        ("PUT", f"{base}/callbacks/dial-status"): 405,
        ("POST", f"{base}/healthz"): 405,
        ("POST", f"{base}/callbacks/dial-status/{new.request_id}/{new.token.get()}/extra"): 404,
        ("POST", f"{base}/callbacks/dial-status//{new.token.get()}"): 404,
        ("POST", f"{base}/callbacks/dial-status-other"): 404,
        ("POST", f"{base}/"): 404,
    }
    for (method, url), expected in cases.items():
        response = httpx.request(method, url, content=b"[1]")
        assert response.status_code == expected, (method, url)
        assert set(response.json()) == {"error"}
        if expected == 405:
            assert response.headers["allow"] in {"GET", "POST"}
    assert httpx.head(f"{base}/healthz").status_code == 200
    assert stored_payloads(receiver.db_url) == []
    assert state(receiver.db_url, new.request_id) == "requested"
    assert new.token.get() not in receiver.log()


def test_sql_metacharacters_in_every_field_are_just_data(receiver: ReceiverHandle) -> None:
    evil = "'; DROP TABLE callback_payloads; --\"`\\"
    new = new_request(receiver.db_url)
    base = f"{receiver.base_url}/callbacks/dial-status"
    assert (
        httpx.post(f"{base}/{quote(evil, safe='')}/{quote(evil, safe='')}", content=b"x").status_code == 404
    )
    assert httpx.post(f"{base}/{new.request_id}/{quote(evil, safe='')}", content=b"x").status_code == 401
    # the uniqueId scan takes values without JSON escapes, so this one has no quote or backslash
    body = json.dumps({"uniqueId": "U'; DROP TABLE export_requests; --", "data": [{"Name": evil}]}).encode()
    headers = {"Content-Type": f"application/json; x={evil}", "User-Agent": evil, "X-Request-Id": evil}
    assert httpx.post(receiver.callback_url(new), content=body, headers=headers).status_code == 200
    [row] = stored_payloads(receiver.db_url)
    assert row["body"] == body
    assert row["content_type"] == headers["Content-Type"]
    assert row["unique_id"] == json.loads(body)["uniqueId"]
    assert row["headers"]["user-agent"] == evil
    engine = create_db_engine(receiver.db_url)
    assert {"export_requests", "callback_payloads"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_body_limits_empty_and_malformed_bodies(start_receiver: StartReceiver, db_url: str) -> None:
    with start_receiver(db_url, CLOUDAGENT_RECEIVER_MAX_BODY_BYTES="100000") as receiver:
        new = new_request(db_url)
        url = receiver.callback_url(new)
        assert httpx.post(url, content=b"x" * 100_001).status_code == 413

        def chunked() -> Any:
            for _ in range(30):
                yield b"y" * 10_000

        too_big_chunked = httpx.post(url, content=chunked())
        assert too_big_chunked.status_code == 413
        assert httpx.post(url, content=b"").status_code == 400
        assert stored_payloads(db_url) == []
        assert state(db_url, new.request_id) == "requested"

        malformed = b'{"data": [{"Name": "A"'
        not_utf8 = b'["\xff\xfe caf\xe9"]'
        for content in (malformed, not_utf8):
            response = httpx.post(url, content=content, headers={"Content-Type": "application/json"})
            assert response.status_code == 200
        assert [(row["body"], row["parse_state"]) for row in stored_payloads(db_url)] == [
            (malformed, "pending"),  # the load decides; it records why it could not parse them
            (not_utf8, "pending"),
        ]
        fields = b"&".join(b"f%d=%d" % (i, i) for i in range(15_000))[:99_000]
        response = httpx.post(
            url, content=fields, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert response.status_code == 200
        assert stored_payloads(db_url)[-1]["body"] == fields


def test_a_slow_client_that_never_finishes_times_out_and_stores_nothing(
    start_receiver: StartReceiver, sqlite_url: str
) -> None:
    with start_receiver(sqlite_url, CLOUDAGENT_RECEIVER_BODY_TIMEOUT_S="1") as receiver:
        new = new_request(sqlite_url)
        path = f"/callbacks/dial-status/{new.request_id}/{new.token.get()}"
        started = time.monotonic()
        answer = raw_exchange(
            receiver.base_url,
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"[" * 10,
        )
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 8
        assert stored_payloads(sqlite_url) == []
        assert state(sqlite_url, new.request_id) == "requested"


def test_header_and_log_injection_attempts(receiver: ReceiverHandle) -> None:
    new = new_request(receiver.db_url)
    path = f"/callbacks/dial-status/{new.request_id}/{new.token.get()}"
    for bad_header in (b"X-Evil: a\rSet-Cookie: b", b"X-Evil: a\x00b", b"Bad Name: v"):
        answer = raw_exchange(
            receiver.base_url,
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n".encode()
            + bad_header
            + b"\r\n\r\n[1]",
        )
        assert answer.startswith(b"HTTP/1.1 400") or answer == b"", answer
    injected = f"{receiver.base_url}/callbacks/dial-status/x%0D%0AINFO%20forged/tok"
    assert httpx.post(injected, content=b"[1]").status_code == 404
    response = httpx.post(
        receiver.callback_url(new),
        content=b"[1]",
        headers={"X-Callback-Token": "tok", "Cookie": "c=1", "Authorization": "Basic eA=="},
    )
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    [row] = stored_payloads(receiver.db_url)
    assert not {"x-callback-token", "cookie", "authorization", "x-evil"} & set(row["headers"])
    access_lines = [line for line in receiver.log().splitlines() if "receiver.access" in line]
    assert all(json.loads(line.split("receiver.access ", 1)[1]) for line in access_lines)
    assert not any(line.startswith("INFO forged") for line in receiver.log().splitlines())
    assert new.token.get() not in receiver.log()


def test_fixed_url_matches_the_request_by_unique_id(start_receiver: StartReceiver, db_url: str) -> None:
    with start_receiver(
        db_url, CLOUDAGENT_CALLBACK_TOKEN=SHARED, CLOUDAGENT_RECEIVER_UNIQUE_ID_WAIT_S="3"
    ) as receiver:
        fixed = f"{receiver.base_url}/callbacks/dial-status"
        new = new_request(db_url, unique_id="U-7")
        json_body = json.dumps({"uniqueId": "U-7", "data": RECORDS}).encode()
        form_body = urlencode({"data": json.dumps({"uniqueId": "U-7", "data": RECORDS[:0]})}).encode()
        ok = httpx.post(fixed, content=json_body, headers={"X-Callback-Token": SHARED})
        assert ok.status_code == 200, ok.text
        form = httpx.post(
            f"{fixed}/{SHARED}",
            content=form_body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 200, form.text
        assert httpx.post(fixed, content=json_body, headers={"X-Callback-Token": "nope"}).status_code == 401
        assert httpx.post(fixed, content=json_body).status_code == 401
        assert httpx.post(f"{fixed}/nope", content=json_body).status_code == 401
        no_id = httpx.post(fixed, content=json.dumps(RECORDS).encode(), headers={"X-Callback-Token": SHARED})
        assert no_id.status_code == 422
        started = time.monotonic()
        unknown = json.dumps({"uniqueId": "U-unknown"}).encode()
        assert httpx.post(fixed, content=unknown, headers={"X-Callback-Token": SHARED}).status_code == 404
        assert time.monotonic() - started >= 3
        assert [(row["request_id"], row["unique_id"]) for row in stored_payloads(db_url)] == [
            (new.request_id, "U-7")
        ] * 2

        # The callback can arrive before the API's uniqueId is committed: the receiver waits for it.
        racing = new_request(db_url)
        early = json.dumps({"uniqueId": "U-8", "data": RECORDS}).encode()
        recorder = threading.Timer(1.0, _record_unique_id, (db_url, racing.request_id, "U-8"))
        recorder.start()
        response = httpx.post(fixed, content=early, headers={"X-Callback-Token": SHARED}, timeout=DEADLINE_S)
        recorder.join(timeout=DEADLINE_S)
        assert not recorder.is_alive(), f"the uniqueId was not recorded within {DEADLINE_S:g} s"
        assert response.status_code == 200
        assert state(db_url, racing.request_id) == "received"
        assert SHARED not in receiver.log()


def _record_unique_id(db_url: str, request_id: str, unique_id: str) -> None:
    engine = create_db_engine(db_url)
    landing.record_unique_id(engine, request_id, unique_id)
    engine.dispose()


@pytest.mark.postgres
def test_database_down_answers_503_and_stores_nothing(start_receiver: StartReceiver, pg_url: str) -> None:
    with start_receiver(pg_url) as receiver:
        new = new_request(pg_url)
        assert httpx.get(receiver.base_url + "/healthz").status_code == 200
        url = make_url(pg_url)
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{url.database}" WITH (FORCE)'))
        admin.dispose()
        response = httpx.post(receiver.callback_url(new), content=b"[1]")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert httpx.get(receiver.base_url + "/healthz").status_code == 503


@pytest.mark.postgres
def test_an_unexpected_error_answers_500_and_stores_nothing(
    start_receiver: StartReceiver, pg_url: str
) -> None:
    with start_receiver(pg_url) as receiver:
        new = new_request(pg_url)
        engine = create_engine(make_url(pg_url))
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE callback_payload_chunks RENAME TO chunks_elsewhere"))
        response = httpx.post(receiver.callback_url(new), content=b"[1]")
        assert response.status_code == 500
        assert response.json() == {"error": "internal error"}
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE chunks_elsewhere RENAME TO callback_payload_chunks"))
        engine.dispose()
        assert stored_payloads(pg_url) == []
        assert state(pg_url, new.request_id) == "requested"
        assert "unexpected error on /callbacks/dial-status/" in receiver.log()
        assert new.token.get() not in receiver.log()
        assert httpx.post(receiver.callback_url(new), content=b"[1]").status_code == 200
