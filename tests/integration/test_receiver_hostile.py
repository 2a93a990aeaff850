"""The receiver against hostile and broken senders, over real sockets on loopback.

One test per way a sender can misbehave (or the receiver's own resources fail). Each checks the status
the sender gets, that nothing is stored where the callback is refused, that the receiver's memory stays
bounded (its RSS, sampled with psutil while the sender misbehaves), that other requests are still
served meanwhile and afterwards, and that no callback token shows up in any log line.
"""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import make_url

from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.normalize import iter_records
from tests.factories import new_request_in as new_request
from tests.factories import state_of, stored_payloads
from tests.fixtures.hostile import (
    BODY,
    RECORDS,
    MiB,
    assert_not_logged,
    assert_still_serves,
    connect,
    hostile,
    in_mount_namespace_with_tmpfs,
)
from tests.fixtures.receiver import ReceiverHandle, StartReceiver
from tests.timing import DEADLINE_S, TIMER_SLACK_S, wait_until

SHARED = "shared-callback-s3cret"
#: What /healthz says while the spool folder lacks its minimum free space (README, "The callback receiver").
SPOOL_FULL = frozenset({"spool folder full", "spool folder unavailable"})


# ---------------------------------------------------------------------------------------------- helpers
def stored_for(db_url: str, request_id: str) -> list[dict]:
    return [row for row in stored_payloads(db_url) if row["request_id"] == request_id]


def state(db_url: str, request_id: str) -> str:
    engine = create_db_engine(db_url)
    try:
        return state_of(engine, request_id).value
    finally:
        engine.dispose()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the receiver sends until it closes the connection (or resets it); ``sock`` is closed."""
    answer = b""
    with sock, suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def send_head_forever(sock: socket.socket, head: bytes, filler: bytes, limit: int) -> bytes:
    """Send ``head`` then ``filler`` until ``limit`` bytes or the receiver closes; its answer."""
    sent = 0
    with suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
        sock.sendall(head)
        while sent < limit:
            sock.sendall(filler)
            sent += len(filler)
    sock.settimeout(10)
    return read_until_closed(sock)


def healthz_status(receiver: ReceiverHandle) -> int:
    return httpx.get(f"{receiver.base_url}/healthz", timeout=DEADLINE_S).status_code


def _proc_net_tcp_address(host: str, port: int) -> str:
    """An IPv4 address as /proc/net/tcp writes it: the 32-bit address in host order, then the port."""
    return f"{int.from_bytes(socket.inet_aton(host), 'little'):08X}:{port:04X}"


def _tcp_queues(local: tuple[str, int], remote: tuple[str, int]) -> tuple[int, int] | None:
    """(bytes sent but not acknowledged, bytes received but not read by the application) of the TCP
    socket ``local`` -> ``remote`` on this machine, or None if there is no such socket."""
    wanted = (_proc_net_tcp_address(*local), _proc_net_tcp_address(*remote))
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            tx_queue, rx_queue = (int(size, 16) for size in fields[4].split(":"))
            return tx_queue, rx_queue
    return None


def wait_until_read_by_the_receiver(sock: socket.socket) -> None:
    """Wait until everything sent on ``sock`` has reached the receiver and the receiver has read it (so
    its protocol has parsed it): the kernel's own queues say so, nothing to guess with a pause."""
    ours, theirs = sock.getsockname()[:2], sock.getpeername()[:2]

    def read() -> bool:
        sent = _tcp_queues(ours, theirs)
        received = _tcp_queues(theirs, ours)
        return sent is not None and received is not None and sent[0] == 0 and received[1] == 0

    wait_until(f"the receiver read what {ours} sent", read, interval_s=0.01)


def callback_path(new: landing.NewExportRequest) -> str:
    return f"/callbacks/dial-status/{new.request_id}/{new.token.get()}"


# ---------------------------------------------------------------------------------------------- paths
def test_tokens_in_paths_that_match_no_route_are_masked_in_every_log_line(
    start_receiver: StartReceiver, db_url: str
) -> None:
    with start_receiver(db_url, CLOUDAGENT_CALLBACK_TOKEN=SHARED) as receiver:
        probes = [new_request(db_url) for _ in range(8)]
        base = receiver.base_url
        expected: dict[str, int] = {}
        for new in probes[:6]:
            request_id, token = new.request_id, new.token.get()
            expected |= {
                f"{base}/callbacks/dial-status//{request_id}/{token}": 404,  # double slash
                f"{base}/callbacks/dial-status/{request_id}/{token}/": 404,  # trailing slash
                f"{base}/callbacks/dial-status/{request_id}/{token}/x": 404,  # extra segment
                f"{base}/CALLBACKS/Dial-Status/{request_id}/{token}": 404,  # other case
                f"{base}/api/callbacks/dial-status/{request_id}/{token}": 404,  # proxy prefix
                f"{base}/callbacks/dial_status/{request_id}/{token}": 404,  # misspelt route
            }
        expected |= {
            f"{base}/api/callbacks/dial-status/{SHARED}": 404,
            f"{base}/callbacks/dial-status/{SHARED}/": 404,
            f"{base}/callbacks/dial-status/{probes[6].token.get()}": 401,  # a token as the shared one
        }
        with hostile(receiver, SHARED, *(new.token.get() for new in probes)):
            for url, status in expected.items():
                response = httpx.post(url, content=BODY)
                assert response.status_code == status, url
            # a GET with the token, and a request the HTTP parser itself refuses
            assert httpx.get(receiver.callback_url(probes[7])).status_code == 405
            sock = connect(receiver)
            sock.sendall(f"POST {callback_path(probes[7])} HTTP/1.1\r\nBad Header: x\r\n\r\n".encode())
            assert read_until_closed(sock).startswith(b"HTTP/1.1 400")
        assert stored_payloads(db_url)[:-1] == []  # only the check's own callback
        assert '"status":404' in receiver.log()


# ---------------------------------------------------------------------------------------------- heads
@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("1 MiB header", b"X-Big: " + b"a" * MiB + b"\r\n"),
        ("16 MiB header", b"X-Big: " + b"a" * (16 * MiB) + b"\r\n"),
        ("20,000 headers", b"".join(b"X-%d: v\r\n" % i for i in range(20_000))),
        ("2,000 small headers", b"".join(b"X-%d: v\r\n" % i for i in range(2_000))),
        ("1 MiB request target", b""),
    ],
)
def test_oversized_request_heads_get_431_and_store_nothing(
    receiver: ReceiverHandle, name: str, head: bytes
) -> None:
    new = new_request(receiver.db_url)
    path = callback_path(new) + ("?" + "q" * MiB if name == "1 MiB request target" else "")
    with hostile(receiver, new.token.get()):
        sock = connect(receiver)
        request = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BODY)}\r\n".encode()
        answer = send_head_forever(sock, request + head + b"\r\n" + BODY, b"", 0)
    expected = b"HTTP/1.1 414" if name == "1 MiB request target" else b"HTTP/1.1 431"
    assert answer.startswith(expected), answer[:200]
    assert stored_for(receiver.db_url, new.request_id) == []
    assert state(receiver.db_url, new.request_id) == "requested"


def test_unfinished_huge_heads_on_many_connections_keep_memory_flat(receiver: ReceiverHandle) -> None:
    """8 connections each send 64 MiB of a header that never ends, without authentication."""
    answers: list[bytes] = []
    with hostile(receiver):

        def flood() -> None:
            sock = connect(receiver)
            head = b"POST /callbacks/dial-status HTTP/1.1\r\nX-Flood: "
            answers.append(send_head_forever(sock, head, b"a" * 65536, 64 * MiB))

        floods = [threading.Thread(target=flood) for _ in range(8)]
        for thread in floods:
            thread.start()
        for thread in floods:
            thread.join(timeout=DEADLINE_S)
        assert [t.name for t in floods if t.is_alive()] == [], f"floods still sending after {DEADLINE_S:g} s"
    assert len(answers) == 8
    assert all(answer.startswith(b"HTTP/1.1 431") for answer in answers), [a[:40] for a in answers]


# ---------------------------------------------------------------------------------------------- time
def test_idle_connections_and_unfinished_heads_are_closed_by_their_timeouts(
    start_receiver: StartReceiver, sqlite_url: str
) -> None:
    with start_receiver(
        sqlite_url, CLOUDAGENT_RECEIVER_IDLE_TIMEOUT_S="1", CLOUDAGENT_RECEIVER_HEADER_TIMEOUT_S="2"
    ) as receiver:
        new = new_request(sqlite_url)
        with hostile(receiver, new.token.get()):
            started = time.monotonic()
            idle = connect(receiver)  # sends nothing
            assert read_until_closed(idle) == b""
            idle_s = time.monotonic() - started

            slow = connect(receiver)  # a head dribbled a byte every 0.2 s, never finished
            head = f"POST {callback_path(new)} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode()
            started = time.monotonic()
            with suppress(BrokenPipeError, ConnectionResetError):
                slow.sendall(head)
                while time.monotonic() - started < 10:
                    slow.sendall(b"a")
                    time.sleep(0.2)
            answer = read_until_closed(slow)
            head_s = time.monotonic() - started

            kept = connect(receiver)  # a keep-alive connection after a response: closed when idle too
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            started = time.monotonic()
            after_response = read_until_closed(kept)
            kept_s = time.monotonic() - started
        # The 1 s and 2 s timers fired, not the defaults (idle 5 s, head 10 s) nor never.
        assert 0.9 < idle_s < 1 + TIMER_SLACK_S, idle_s
        assert after_response.startswith(b"HTTP/1.1 200"), after_response
        assert 0.9 < kept_s < 1 + TIMER_SLACK_S, kept_s
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert 1.9 < head_s < 2 + TIMER_SLACK_S, head_s
        assert stored_for(sqlite_url, new.request_id) == []


def test_a_body_dribbled_slowly_meets_the_total_deadline(start_receiver: StartReceiver, db_url: str) -> None:
    with start_receiver(
        db_url, CLOUDAGENT_RECEIVER_BODY_TIMEOUT_S="1", CLOUDAGENT_RECEIVER_BODY_DEADLINE_S="3"
    ) as receiver:
        new = new_request(db_url)
        with hostile(receiver, new.token.get()):
            sock = connect(receiver)
            sock.sendall(
                f"POST {callback_path(new)} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
            )
            started = time.monotonic()
            with suppress(BrokenPipeError, ConnectionResetError):
                for _ in range(100):  # one byte every 0.5 s: never idle for the 1 s body timeout
                    sock.sendall(b"[")
                    sock.settimeout(0.5)
                    with suppress(TimeoutError):
                        if sock.recv(1, socket.MSG_PEEK):
                            break
            sock.settimeout(10)
            answer = read_until_closed(sock)
            seconds = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"not received within 3 s" in answer
        assert 2.5 < seconds < 3 + TIMER_SLACK_S, seconds  # the 3 s deadline, not the 50 s of dribbling
        assert stored_for(db_url, new.request_id) == []
        assert state(db_url, new.request_id) == "requested"


# ---------------------------------------------------------------------------------------------- connections
def test_idle_connections_beyond_the_open_file_limit_do_not_shut_out_a_real_callback(
    start_receiver: StartReceiver, sqlite_url: str
) -> None:
    """300 idle connections against a 256 file-descriptor limit, and a real callback at the same time."""
    prefix = ["prlimit", "--nofile=256:256", "--"]
    with start_receiver(
        sqlite_url, command_prefix=prefix, CLOUDAGENT_RECEIVER_IDLE_TIMEOUT_S="60"
    ) as receiver:
        assert psutil.Process(receiver.server.pid).rlimit(psutil.RLIMIT_NOFILE) == (256, 256)
        new = new_request(sqlite_url)
        with hostile(receiver, new.token.get()), ExitStack() as idle:
            for _ in range(300):
                idle.enter_context(connect(receiver))
            response = httpx.post(receiver.callback_url(new), content=BODY, timeout=30)
            assert response.status_code == 200, response.text
            fds = psutil.Process(receiver.server.pid).num_fds()
        assert fds < 256
        assert [row["body"] for row in stored_for(sqlite_url, new.request_id)] == [BODY]
        log = receiver.log()
        assert "at most 96 connections per worker" in log
        assert "closing the connection idle longest" in log
        assert "out of system resource" not in log
        assert "Too many open files" not in log


def test_when_every_connection_is_busy_a_new_one_gets_503(
    start_receiver: StartReceiver, sqlite_url: str
) -> None:
    with start_receiver(
        sqlite_url, CLOUDAGENT_RECEIVER_MAX_CONNECTIONS="2", CLOUDAGENT_RECEIVER_IDLE_TIMEOUT_S="1"
    ) as receiver:
        busy = [new_request(sqlite_url) for _ in range(2)]
        with hostile(receiver, *(new.token.get() for new in busy), poll_healthz=False):
            senders = [connect(receiver) for _ in busy]
            for sock, new in zip(senders, busy, strict=True):  # heads sent, bodies half-way: both busy
                head = f"POST {callback_path(new)} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BODY)}\r\n\r\n"
                sock.sendall(head.encode() + BODY[:5])
            for sock in senders:  # read: each head parsed, so each connection has a request in progress
                wait_until_read_by_the_receiver(sock)
            refused = read_until_closed(connect(receiver))
            for sock in senders:
                sock.sendall(BODY[5:])
            answers = [read_until_closed(sock) for sock in senders]  # closed once idle
        assert refused.startswith(b"HTTP/1.1 503"), refused
        assert b"retry-after: 5" in refused.lower()
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers
        assert [len(stored_for(sqlite_url, new.request_id)) for new in busy] == [1, 1]


# ---------------------------------------------------------------------------------------------- bodies
def test_a_multipart_body_of_repeated_unique_id_names_is_linear_and_blocks_no_one(
    start_receiver: StartReceiver, sqlite_url: str
) -> None:
    repeated = (b'Content-Disposition: form-data; name="uniqueId"\r\n' * 4000)[: 204 * 1024]
    body = b"--b\r\n" + repeated + b"\r\n--b--\r\n"
    with start_receiver(
        sqlite_url, CLOUDAGENT_CALLBACK_TOKEN=SHARED, CLOUDAGENT_RECEIVER_UNIQUE_ID_WAIT_S="1"
    ) as receiver:
        requests = [new_request(sqlite_url) for _ in range(10)]
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        with hostile(receiver, SHARED, *(new.token.get() for new in requests), healthz_within_s=1.0):
            for new in requests:
                started = time.monotonic()
                response = httpx.post(receiver.callback_url(new), content=body, headers=headers, timeout=30)
                assert response.status_code == 200, response.text
                assert time.monotonic() - started < 2
            fixed = httpx.post(
                f"{receiver.base_url}/callbacks/dial-status",
                content=body,
                headers={**headers, "X-Callback-Token": SHARED},
            )
            assert fixed.status_code == 404  # its "uniqueId" is the closing boundary: no such request
        assert [len(stored_for(sqlite_url, new.request_id)) for new in requests] == [1] * 10


def test_encoded_bodies_are_stored_decoded_or_refused(receiver: ReceiverHandle) -> None:
    records = RECORDS * 50
    plain = json.dumps(records).encode()
    deflated = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_deflate = deflated.compress(plain) + deflated.flush()
    cases = [
        ("gzip", gzip.compress(plain), 200),
        ("x-gzip", gzip.compress(plain), 200),
        ("deflate", zlib.compress(plain), 200),
        ("deflate", raw_deflate, 200),
        ("identity, gzip", gzip.compress(plain), 200),
        ("br", b"\x1b\x03\x00", 415),
        ("gzip, br", b"x", 415),
        ("gzip", b"this is not gzip", 400),
        ("gzip", gzip.compress(plain)[:-12], 400),
    ]
    news = [new_request(receiver.db_url) for _ in cases]
    with hostile(receiver, *(new.token.get() for new in news)):
        for new, (encoding, content, status) in zip(news, cases, strict=True):
            response = httpx.post(
                receiver.callback_url(new),
                content=content,
                headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
            )
            assert response.status_code == status, (encoding, response.text)
            if status == 415:
                assert response.headers["accept-encoding"] == "gzip, deflate"
    for new, (_encoding, _content, status) in zip(news, cases, strict=True):
        rows = stored_for(receiver.db_url, new.request_id)
        if status != 200:
            assert rows == []
            assert state(receiver.db_url, new.request_id) == "requested"
            continue
        [row] = rows
        assert row["body"] == plain
        assert list(iter_records(row["body"], row["content_type"])) == records  # the load can read it


def test_a_gzip_bomb_is_refused_without_inflating_it(
    start_receiver: StartReceiver, sqlite_url: str, tmp_path: Path
) -> None:
    bomb = gzip.compress(b" " * (64 * MiB), compresslevel=9)  # 64 MiB of blanks in 64 KB
    near_bomb = gzip.compress(b"[" + b" " * (100 * MiB) + b"]", compresslevel=9)
    spool = tmp_path / "spool"
    lenient_settings = {
        "CLOUDAGENT_RECEIVER_MAX_INFLATE_RATIO": "100000",
        "CLOUDAGENT_RECEIVER_MAX_BODY_BYTES": str(64 * MiB),
    }
    for settings, content, message in [
        (lenient_settings, near_bomb, "larger than 67108864 bytes once decoded"),  # whatever the ratio
        ({}, bomb, "inflates more than 100 times"),
    ]:
        with start_receiver(sqlite_url, CLOUDAGENT_RECEIVER_SPOOL_DIR=str(spool), **settings) as receiver:
            new = new_request(sqlite_url)
            with hostile(receiver, new.token.get()):
                response = httpx.post(
                    receiver.callback_url(new),
                    content=content,
                    headers={"Content-Encoding": "gzip"},
                    timeout=60,
                )
            assert response.status_code == 413
            assert message in response.json()["error"]
            assert stored_for(sqlite_url, new.request_id) == []
            assert list(spool.iterdir()) == []  # the decoded part spilled to a spool file, now removed


def test_multipart_without_a_boundary_is_refused_not_acknowledged(receiver: ReceiverHandle) -> None:
    new = new_request(receiver.db_url)
    with hostile(receiver, new.token.get(), poll_healthz=False):
        response = httpx.post(
            receiver.callback_url(new), content=BODY, headers={"Content-Type": "multipart/form-data"}
        )
    assert response.status_code == 400
    assert stored_for(receiver.db_url, new.request_id) == []


# ---------------------------------------------------------------------------------------------- routing
@pytest.mark.parametrize("top_level_first", [True, False])
def test_the_fixed_url_follows_the_top_level_unique_id_not_a_records(
    start_receiver: StartReceiver, db_url: str, top_level_first: bool
) -> None:
    with start_receiver(db_url, CLOUDAGENT_CALLBACK_TOKEN=SHARED) as receiver:
        a = new_request(db_url, unique_id="U-A")
        b = new_request(db_url, unique_id="U-B")
        records = [{**RECORDS[0], "uniqueId": "U-B", "note": 'a "quoted" {brace'}] * 3
        document = (
            {"uniqueId": "U-A", "data": records} if top_level_first else {"data": records, "uniqueId": "U-A"}
        )
        with hostile(receiver, SHARED, a.token.get(), b.token.get(), poll_healthz=False):
            response = httpx.post(
                f"{receiver.base_url}/callbacks/dial-status",
                content=json.dumps(document).encode(),
                headers={"X-Callback-Token": SHARED},
            )
        assert response.status_code == 200, response.text
        assert [(row["request_id"], row["unique_id"]) for row in stored_payloads(db_url)[:1]] == [
            (a.request_id, "U-A")
        ]
        assert state(db_url, b.request_id) == "requested"


# ---------------------------------------------------------------------------------------------- late
@pytest.mark.parametrize("settle", ["loaded", "failed", "expired"])
def test_callbacks_long_after_a_request_settled_get_410(receiver: ReceiverHandle, settle: str) -> None:
    engine = create_db_engine(receiver.db_url)
    recent, old = new_request(receiver.db_url), new_request(receiver.db_url)
    for new in (recent, old):
        if settle == "loaded":
            landing.store_callback(engine, new.request_id, landing.CallbackBody.from_bytes(b"[]"))
            with engine.begin() as conn:
                landing.mark_loaded(conn, new.request_id)
        elif settle == "failed":
            landing.mark_failed(engine, new.request_id, "export refused")
        else:
            landing.mark_expired(engine, new.request_id, "no callback")
    stamp = landing.export_requests.c[f"{settle}_at"]
    with engine.begin() as conn:  # the old one settled 8 days ago, past the default 7-day grace period
        conn.execute(
            update(landing.export_requests)
            .where(landing.export_requests.c.request_id == old.request_id)
            .values({stamp: datetime.now(UTC) - timedelta(days=8)})
        )
    engine.dispose()
    before = {new.request_id: len(stored_for(receiver.db_url, new.request_id)) for new in (recent, old)}
    with hostile(receiver, recent.token.get(), old.token.get(), poll_healthz=False):
        late = httpx.post(receiver.callback_url(recent), content=BODY)
        gone = httpx.post(receiver.callback_url(old), content=BODY)
    assert (late.status_code, late.json()["late"]) == (200, True)
    assert gone.status_code == 410
    assert "7 days" in gone.json()["error"]
    assert len(stored_for(receiver.db_url, recent.request_id)) == before[recent.request_id] + 1
    assert len(stored_for(receiver.db_url, old.request_id)) == before[old.request_id]
    assert state(receiver.db_url, old.request_id) == settle


def test_the_fixed_url_also_closes_after_the_grace_period(
    start_receiver: StartReceiver, sqlite_url: str
) -> None:
    with start_receiver(
        sqlite_url, CLOUDAGENT_CALLBACK_TOKEN=SHARED, CLOUDAGENT_RECEIVER_LATE_GRACE_S="3600"
    ) as receiver:
        new = new_request(sqlite_url, unique_id="U-OLD")
        engine = create_db_engine(sqlite_url)
        landing.mark_expired(engine, new.request_id, "no callback")
        with engine.begin() as conn:
            conn.execute(
                update(landing.export_requests)
                .where(landing.export_requests.c.request_id == new.request_id)
                .values(expired_at=datetime.now(UTC) - timedelta(hours=2))
            )
        engine.dispose()
        body = json.dumps({"uniqueId": "U-OLD", "data": RECORDS}).encode()
        with hostile(receiver, SHARED, new.token.get(), poll_healthz=False):
            response = httpx.post(
                f"{receiver.base_url}/callbacks/dial-status",
                content=body,
                headers={"X-Callback-Token": SHARED},
            )
        assert response.status_code == 410
        assert stored_for(sqlite_url, new.request_id) == []


# ---------------------------------------------------------------------------------------------- our failures
@contextmanager
def receiver_role(pg_url: str) -> Iterator[tuple[str, str]]:
    """A login role with the receiver's privileges on ``pg_url``'s tables: (its URL, its name)."""
    url = make_url(pg_url)
    role = f"receiver_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}"))
        conn.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    try:
        yield url.set(username=role).render_as_string(hide_password=False), role
    finally:
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :role"),
                {"role": role},
            )
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        admin.dispose()


def _as_admin(pg_url: str, statement: str) -> None:
    engine = create_engine(make_url(pg_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(statement))
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize(
    "revoke",
    [
        "REVOKE INSERT ON callback_payloads FROM {role}",
        "REVOKE INSERT ON callback_payload_chunks FROM {role}",
        "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
    ],
    ids=["no-insert-payloads", "no-insert-chunks", "no-privilege"],
)
def test_a_database_role_that_cannot_write_answers_503_and_healthz_says_so(
    start_receiver: StartReceiver, pg_url: str, revoke: str
) -> None:
    with receiver_role(pg_url) as (role_url, role), start_receiver(role_url) as receiver:
        new = new_request(pg_url)
        assert httpx.get(f"{receiver.base_url}/healthz").status_code == 200
        _as_admin(pg_url, revoke.format(role=role))
        response = httpx.post(receiver.callback_url(new), content=BODY)
        health = httpx.get(f"{receiver.base_url}/healthz")
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert (health.status_code, health.json()["reason"]) == (503, "database cannot store")
        assert health.headers["retry-after"] == "5"
        assert stored_for(pg_url, new.request_id) == []
        assert state(pg_url, new.request_id) == "requested"
        _as_admin(pg_url, f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}")
        assert httpx.get(f"{receiver.base_url}/healthz").status_code == 200
        assert httpx.post(receiver.callback_url(new), content=BODY).status_code == 200
        assert_not_logged(receiver, new.token.get())


@pytest.mark.postgres
def test_an_unreachable_database_answers_503_and_healthz_says_so(
    start_receiver: StartReceiver, pg_url: str
) -> None:
    with start_receiver(pg_url) as receiver:
        new = new_request(pg_url)
        _as_admin(pg_url, "SELECT 1")
        url = make_url(pg_url)
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:  # every connection of the receiver is cut, and new ones refused
            conn.execute(text(f'ALTER DATABASE "{url.database}" WITH ALLOW_CONNECTIONS false'))
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
                {"db": url.database},
            )
        try:
            response = httpx.post(receiver.callback_url(new), content=BODY)
            health = httpx.get(f"{receiver.base_url}/healthz")
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{url.database}" WITH ALLOW_CONNECTIONS true'))
            admin.dispose()
        assert (response.status_code, response.headers["retry-after"]) == (503, "5")
        assert (health.status_code, health.json()["reason"]) == (503, "database cannot store")
        assert stored_for(pg_url, new.request_id) == []
        assert_still_serves(receiver, new.token.get())


def test_a_full_spool_folder_answers_503_stores_nothing_and_frees_the_space(
    start_receiver: StartReceiver, db_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    prefix = in_mount_namespace_with_tmpfs(spool, "4m")
    with start_receiver(
        db_url,
        command_prefix=prefix,
        CLOUDAGENT_RECEIVER_SPOOL_DIR=str(spool),
        CLOUDAGENT_RECEIVER_SPOOL_MIN_FREE_BYTES=str(MiB),
    ) as receiver:
        seen = Path(f"/proc/{receiver.server.pid}/root") / spool.relative_to("/")  # the receiver's view
        assert shutil.disk_usage(seen).total == 4 * MiB
        new = new_request(db_url)
        big = b"[" + b" " * (8 * MiB) + b"]"  # spills from memory to the 4 MiB spool, which fills up
        # While the spool fills, /healthz rightly says so (503: less than its minimum free space, or no
        # room for its probe write); hostile() then waits for a stored callback, once the space is free.
        with hostile(receiver, new.token.get(), unhealthy_reasons=SPOOL_FULL) as watch:
            response = httpx.post(receiver.callback_url(new), content=big, timeout=30)
        assert (response.status_code, response.headers["retry-after"]) == (503, "5")
        print(f"/healthz while the spool filled: {sorted({(h.status, h.reason) for h in watch.healthz})}")
        assert stored_for(db_url, new.request_id) == []
        assert list(seen.iterdir()) == []  # the spool file is gone: the space is free again
        assert shutil.disk_usage(seen).free == 4 * MiB

        filler = seen / "filler"
        with suppress(OSError), filler.open("wb") as out:
            out.write(b"x" * (4 * MiB))
        health = httpx.get(f"{receiver.base_url}/healthz")
        assert (health.status_code, health.headers["retry-after"]) == (503, "5")
        assert health.json()["reason"] in SPOOL_FULL
        filler.unlink()
        wait_until("/healthz answers 200 once the spool has room", lambda: healthz_status(receiver) == 200)
        assert httpx.post(receiver.callback_url(new), content=big, timeout=30).status_code == 503
        assert httpx.post(receiver.callback_url(new), content=BODY).status_code == 200
        assert_not_logged(receiver, new.token.get())
