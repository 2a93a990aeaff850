"""Answers sent before the body is read reach the sender, whatever its HTTP client (RFC 9112 §9.6).

The receiver answers some callbacks before it has read their bodies (401, 404, 410, 413, a 503 while the
body spools). It must then say ``Connection: close`` and close gracefully: half-close, read and discard
what the sender still sends, within bounds. A plain close makes the kernel reset the connection, and a
sender still writing its body (http.client, Java's clients) sees the reset instead of the answer; a
keep-alive client reusing the connection fails its next request. Real clients, real receiver processes,
both databases.
"""

from __future__ import annotations

import http.client
import secrets
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest

from cloudagent_etl import landing
from tests.factories import new_request_in as new_request
from tests.factories import stored_payloads
from tests.fixtures.early_answers import (
    BIG,
    JavaClient,
    assert_every_client_read_its_answers,
    assert_nothing_stored,
    compile_java_client,
    early_answer_receiver,
    via_curl,
    via_http_client,
    via_httpx,
)
from tests.fixtures.hostile import BODY, assert_still_serves, connect, hostile
from tests.fixtures.receiver import ReceiverHandle, StartReceiver

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def java_client(tmp_path_factory: pytest.TempPathFactory) -> JavaClient:
    return compile_java_client(tmp_path_factory.mktemp("java-client"))


# ---------------------------------------------------------------------------------------- real clients
@pytest.mark.slow
def test_every_real_client_reads_every_early_answer(
    start_receiver: StartReceiver, db_url: str, tmp_path: Path, java_client: JavaClient
) -> None:
    """curl, http.client, httpx and the JDK's two clients (HttpURLConnection buffered, as by default, and
    streaming) each send the five cases (10-16 MiB bodies, one client and connection pool per kind) and
    read the README's status, with Retry-After on the 503. Today's reference: http.client and a buffered
    HttpURLConnection read a reset instead when the receiver closes without draining."""
    with early_answer_receiver(start_receiver, db_url, tmp_path) as setup:
        base, cases = setup.receiver.base_url, setup.cases
        sent_by = {
            "curl": lambda: via_curl(base, cases, tmp_path),
            "http.client": lambda: via_http_client(base, cases),
            "httpx": lambda: via_httpx(base, cases),
            "java HttpClient": lambda: java_client("httpclient", base, cases),
            "java HttpURLConnection": lambda: java_client("urlconnection", base, cases),
            "java HttpURLConnection streaming": lambda: java_client("urlconnection-streaming", base, cases),
        }
        assert_every_client_read_its_answers(cases, {client: send() for client, send in sent_by.items()})
        assert_nothing_stored(setup)
        assert_still_serves(setup.receiver, *setup.tokens)
        log = setup.receiver.log()
    for status in ("401", "404", "410", "413", "503"):
        assert log.count(f'"status":{status}') == len(sent_by), status


# ---------------------------------------------------------------------------------------- keep-alive
ROUNDS = 12


def test_a_pooled_httpx_client_reconnects_cleanly_after_an_early_answer(receiver: ReceiverHandle) -> None:
    """One pooled connection: a stored callback, a 401 with a 10 MiB body, a /healthz, twelve times.

    The 401 goes on the kept connection and closes it (``Connection: close``); the next request opens a
    new one, and every request gets its answer (no broken pipe, no reset)."""
    refused_requests = [new_request(receiver.db_url) for _ in range(ROUNDS)]
    wrong_token = secrets.token_urlsafe(32)
    big = b"[" + b" " * (BIG - 2) + b"]"
    rounds: list[tuple[httpx.Response, httpx.Response, httpx.Response]] = []
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with hostile(receiver, wrong_token), httpx.Client(limits=limits, timeout=60) as client:
        for refused in refused_requests:
            good = new_request(receiver.db_url)
            stored = client.post(receiver.callback_url(good), content=BODY)
            answered = client.post(f"{receiver.base_url}{_path(refused, wrong_token)}", content=big)
            health = client.get(f"{receiver.base_url}/healthz")
            rounds.append((stored, answered, health))
    assert [tuple(r.status_code for r in round_) for round_ in rounds] == [(200, 401, 200)] * ROUNDS
    for index, (stored, answered, health) in enumerate(rounds):
        assert answered.headers["connection"] == "close"
        assert answered.json() == {"error": "invalid token"}
        assert "connection" not in stored.headers
        # The connection (its stream object) each answer came on: the same one up to the 401, a new one after.
        assert _stream(answered) is _stream(stored), "the 401's request went on the kept-alive connection"
        assert _stream(health) is not _stream(answered), "the request after the 401 went on a new connection"
        if index + 1 < ROUNDS:
            assert _stream(rounds[index + 1][0]) is _stream(health), "a plain 200 keeps the connection"
    assert {row["request_id"] for row in stored_payloads(receiver.db_url)}.isdisjoint(
        new.request_id for new in refused_requests
    )


def _stream(response: httpx.Response) -> object:
    return response.extensions["network_stream"]


def test_http_client_on_one_connection_reconnects_cleanly_after_an_early_answer(
    receiver: ReceiverHandle,
) -> None:
    """Python's http.client, one HTTPConnection (it reopens by itself when the server closes), whole
    bodies written before reading: the same twelve rounds, every answer read, a new socket after each 401."""
    url = httpx.URL(receiver.base_url)
    wrong_token = secrets.token_urlsafe(32)
    big = b"[" + b" " * (BIG - 2) + b"]"
    seen: list[tuple[str, int, str | None]] = []
    sockets: list[object] = []
    connection = http.client.HTTPConnection(url.host, url.port or 80, timeout=60)
    with hostile(receiver, wrong_token):
        try:
            for _ in range(ROUNDS):
                good, refused = new_request(receiver.db_url), new_request(receiver.db_url)
                for what, method, path, body in [
                    ("stored", "POST", _path(good, good.token.get()), BODY),
                    ("401", "POST", _path(refused, wrong_token), big),
                    ("healthz", "GET", "/healthz", None),
                ]:
                    connection.request(method, path, body)
                    sockets.append(connection.sock)
                    response = connection.getresponse()
                    response.read()
                    seen.append((what, response.status, response.getheader("connection")))
        finally:
            connection.close()
    assert seen == [("stored", 200, None), ("401", 401, "close"), ("healthz", 200, None)] * ROUNDS
    for index in range(0, len(sockets), 3):
        stored, refused, health = sockets[index : index + 3]
        assert refused is stored
        assert health is not refused


def _path(new: landing.NewExportRequest, token: str) -> str:
    return f"/callbacks/dial-status/{new.request_id}/{token}"


# ---------------------------------------------------------------------------------------- the drain
def _head(new: landing.NewExportRequest, token: str, length: int) -> bytes:
    return f"POST {_path(new, token)} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


def _answer_then_end(sock: socket.socket) -> bytes:
    """The answer, read up to the end of stream the receiver's half-close makes (not a reset)."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def _connected(receiver: ReceiverHandle, port: int) -> bool:
    """Whether the receiver still holds the connection from our local ``port``."""
    connections = psutil.Process(receiver.server.pid).net_connections(kind="tcp")
    return any(c.raddr and c.raddr.port == port for c in connections)


def _wait_let_go(receiver: ReceiverHandle, port: int, timeout: float = 30) -> float:
    """Seconds until the receiver no longer holds the connection from ``port``."""
    started = time.monotonic()
    while _connected(receiver, port):
        assert time.monotonic() - started < timeout, "the receiver kept the connection"
        time.sleep(0.02)
    return time.monotonic() - started


def _send_until_refused(
    sock: socket.socket, piece: bytes, limit: int, pause: float = 0.0
) -> tuple[int, float]:
    """Send ``piece`` after ``piece`` until the receiver's close makes a send fail; bytes sent, seconds."""
    sent, started = 0, time.monotonic()
    try:
        while sent < limit:
            sock.sendall(piece)
            sent += len(piece)
            if pause:
                time.sleep(pause)
    except (BrokenPipeError, ConnectionResetError):
        return sent, time.monotonic() - started
    pytest.fail(f"the receiver still took bytes after {sent} of them")


def test_after_an_early_answer_the_receiver_drains_within_its_bounds(
    start_receiver: StartReceiver, sqlite_url: str
) -> None:
    """Raw sockets: the answer and its end of stream come at once; what follows is read, not reset, until
    the sender closes, or 4 MiB are discarded, or 3 s passed, or it was quiet for 2 s (test settings)."""
    with start_receiver(
        sqlite_url,
        CLOUDAGENT_RECEIVER_DRAIN_MAX_BYTES=str(4 * MiB),
        CLOUDAGENT_RECEIVER_DRAIN_TIMEOUT_S="3",
        CLOUDAGENT_RECEIVER_IDLE_TIMEOUT_S="2",
    ) as receiver:
        new = new_request(sqlite_url)
        wrong = secrets.token_urlsafe(32)
        head = _head(new, wrong, 512 * MiB)
        with hostile(receiver, wrong, new.token.get()):
            # The answer comes with 1 MiB of 512 read; the rest is still taken; the sender closes, and
            # the receiver lets go at once (well within the idle timeout).
            with connect(receiver, timeout=30) as sock:
                port = sock.getsockname()[1]
                sock.sendall(head + b" " * MiB)
                answer = _answer_then_end(sock)
                sock.sendall(b" " * (2 * MiB))
                assert _connected(receiver, port)
            closed_s = _wait_let_go(receiver, port)
            assert answer.startswith(b"HTTP/1.1 401 ")
            assert b"\r\nconnection: close\r\n" in answer.lower()
            assert closed_s < 1.5, closed_s

            # Bytes: a sender that never stops is cut once 4 MiB were discarded.
            with connect(receiver, timeout=30) as sock:
                sock.sendall(head)
                assert _answer_then_end(sock).startswith(b"HTTP/1.1 401 ")
                sent, _ = _send_until_refused(sock, b" " * 65536, 256 * MiB)
            assert 4 * MiB < sent < 64 * MiB, sent

            # Time: a sender that trickles forever is cut after 3 s.
            with connect(receiver, timeout=30) as sock:
                sock.sendall(head)
                assert _answer_then_end(sock).startswith(b"HTTP/1.1 401 ")
                _, trickled_s = _send_until_refused(sock, b" " * 1024, 256 * MiB, pause=0.1)
            assert 2.5 < trickled_s < 10, trickled_s

            # Silence: a sender that neither sends nor closes is closed after the 2 s idle timeout.
            with connect(receiver, timeout=30) as sock:
                sock.sendall(head)
                assert _answer_then_end(sock).startswith(b"HTTP/1.1 401 ")
                quiet_s = _wait_let_go(receiver, sock.getsockname()[1])
            assert 1.5 < quiet_s < 8, quiet_s
        log = receiver.log()
        assert f"sender still sending after {4 * MiB} bytes discarded" in log
        assert "sender still connected after 3 s" in log
        assert stored_payloads(sqlite_url) == [stored_payloads(sqlite_url)[0]]  # hostile()'s own callback
