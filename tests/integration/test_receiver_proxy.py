"""The deployment the README describes: nginx with TLS in front of the receiver, as shipped in deploy/nginx.

A real nginx (Debian's package, our own process) runs ``deploy/nginx/cloudagent-receiver.conf`` with only
ports and paths changed, in front of a real receiver on both databases. Callbacks over HTTPS are stored
with the sender's address (taken from X-Forwarded-For only when the request came through the trusted
proxy); the early answers (413, 410, 503 with Retry-After, ...) reach the sender through it; the preflight's
probe works through it; and the config's sizes and timeouts are the receiver's limits.
"""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

import httpx
import pytest

from cloudagent_etl import landing, preflight
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.settings import ReceiverSettings
from tests.factories import new_request_in as new_request
from tests.factories import stored_payloads
from tests.fixtures.early_answers import (
    assert_every_client_read_its_answers,
    assert_nothing_stored,
    early_answer_receiver,
    tls_context,
    via_curl,
    via_http_client,
    via_httpx,
)
from tests.fixtures.hostile import BODY, assert_not_logged, assert_still_serves
from tests.fixtures.nginx import SHIPPED, run_nginx
from tests.fixtures.receiver import ReceiverHandle, StartReceiver

README = Path(__file__).resolve().parents[2] / "README.md"
#: A second loopback address for the senders, so that their address differs from the proxy's (127.0.0.1).
SENDER = "127.0.0.2"
SPOOFED = "203.0.113.7"


# ------------------------------------------------------------------------------------------- the config
Directives = dict[str, list[str]]


def _blocks(text: str) -> dict[str, Directives]:
    """Each block of a one-directive-a-line nginx config (``server``, ``location /callbacks/``, ...) and
    its own directives by name (comments dropped; a nested block's directives are not its parent's)."""
    blocks: dict[str, Directives] = {"": {}}
    open_blocks = [""]
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.endswith("{"):
            open_blocks.append(line[:-1].strip())
            blocks[open_blocks[-1]] = {}
        elif line == "}":
            open_blocks.pop()
        elif match := re.fullmatch(r"([a-z_]+)\s+([^;{}]*);", line):
            blocks[open_blocks[-1]].setdefault(match[1], []).append(match[2].strip())
    return blocks


def _one(directives: Directives, name: str) -> str:
    [value] = directives[name]
    return value


_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SECONDS = {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600}


def _size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", value.lower()).groups()  # type: ignore[union-attr]
    return int(number) * _UNITS[unit]


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h|)", value).groups()  # type: ignore[union-attr]
    return int(number) * _SECONDS[unit]


def test_the_shipped_nginx_config_agrees_with_the_receiver_limits() -> None:
    """Each size and timeout of deploy/nginx/cloudagent-receiver.conf against the receiver's defaults
    (RECEIVER_LIMITS): a proxy stricter than the receiver would refuse callbacks it takes, a laxer one
    would hold connections the receiver has given up."""
    limits = ReceiverSettings(database_url="sqlite://")
    blocks = _blocks(SHIPPED.read_text())
    server, callbacks, health = (
        blocks["server"],
        blocks["location /callbacks/"],
        blocks["location = /healthz"],
    )
    assert _size(_one(server, "client_max_body_size")) == limits.max_body_bytes
    assert _size(_one(server, "large_client_header_buffers").split()[1]) == limits.max_header_bytes
    assert _seconds(_one(server, "client_header_timeout")) == limits.header_timeout_s
    assert _seconds(_one(server, "client_body_timeout")) == limits.body_timeout_s
    assert _seconds(_one(server, "keepalive_timeout")) == limits.idle_timeout_s
    assert _seconds(_one(server, "lingering_time")) == limits.drain_timeout_s
    assert _seconds(_one(server, "lingering_timeout")) == limits.idle_timeout_s
    assert _seconds(_one(callbacks, "proxy_send_timeout")) == limits.body_timeout_s
    assert _seconds(_one(callbacks, "proxy_read_timeout")) >= limits.body_deadline_s
    # Streamed through (the receiver bounds the body); no kept-alive sender connections after a callback
    # (see the file), nor upstream ones; the sender's address set by the proxy only.
    assert _one(callbacks, "proxy_request_buffering") == "off"
    assert _one(callbacks, "keepalive_timeout") == "0"
    assert "keepalive" not in blocks["upstream cloudagent_receiver"]
    for location in (callbacks, health):
        assert _one(location, "proxy_pass") == "http://cloudagent_receiver"
        assert _one(location, "proxy_http_version") == "1.1"
        assert {"X-Forwarded-For $remote_addr", "X-Forwarded-Proto https"} <= set(
            location["proxy_set_header"]
        )
    assert _one(blocks["location /"], "return") == "404"
    # The path carries the token: no access log, and no error-level lines that quote the request.
    assert _one(server, "access_log") == "off"
    assert _one(server, "error_log").split()[-1] == "crit"


def test_the_readme_shows_the_shipped_nginx_config() -> None:
    start, end = "<!-- nginx-config:start -->\n```nginx\n", "```\n<!-- nginx-config:end -->"
    shown = README.read_text().split(start, 1)[1].split(end, 1)[0]
    assert shown == SHIPPED.read_text()


# ------------------------------------------------------------------------------------------- through it
def _sender(ca_file: Path) -> httpx.Client:
    """An HTTPS client whose connections come from the sender's loopback address."""
    transport = httpx.HTTPTransport(local_address=SENDER, verify=tls_context(ca_file) or True)
    return httpx.Client(transport=transport, timeout=60)


@pytest.mark.slow
def test_callbacks_through_the_tls_proxy_are_stored_with_the_senders_address(
    receiver: ReceiverHandle, tmp_path: Path
) -> None:
    db_url = receiver.db_url
    through, spoofed, direct = (new_request(db_url) for _ in range(3))
    with run_nginx(receiver.base_url, tmp_path / "nginx") as nginx, _sender(nginx.ca_file) as sender:
        public = nginx.base_url
        stored = sender.post(landing.callback_url(public, through.request_id, through.token), content=BODY)
        lying = sender.post(
            landing.callback_url(public, spoofed.request_id, spoofed.token),
            content=BODY,
            headers={"X-Forwarded-For": SPOOFED},
        )
        # Straight to the receiver, not through the proxy: its X-Forwarded-For is not believed.
        around = sender.post(
            receiver.callback_url(direct), content=BODY, headers={"X-Forwarded-For": SPOOFED}
        )
        elsewhere = sender.post(f"{public}/internal/callbacks/dial-status", content=BODY)
        engine = create_db_engine(db_url)
        try:
            probe = preflight.check_callback_url(
                engine, public, transport=httpx.HTTPTransport(verify=tls_context(nginx.ca_file) or True)
            )
        finally:
            engine.dispose()
        nginx_logs = nginx.logs()
    assert [r.status_code for r in (stored, lying, around)] == [200, 200, 200], [stored.text, lying.text]
    assert stored.json()["status"] == "stored"
    assert elsewhere.status_code == 404
    assert probe.ok, probe.problem  # the preflight reaches this database's receiver through the proxy
    rows = {row["request_id"]: row for row in stored_payloads(db_url)}
    assert {request_id: rows[request_id]["client_addr"] for request_id in rows} == {
        through.request_id: SENDER,
        spoofed.request_id: SENDER,  # the proxy replaced the sender's X-Forwarded-For
        direct.request_id: SENDER,  # not from the trusted proxy: the socket's address
    }
    assert rows[through.request_id]["headers"]["x-forwarded-proto"] == "https"
    assert rows[through.request_id]["body"] == BODY
    assert "/internal/" not in receiver.log()  # only /callbacks/ and /healthz reach the receiver
    tokens = [new.token.get() for new in (through, spoofed, direct)]
    assert [token for token in tokens if token in nginx_logs] == []
    assert_not_logged(receiver, *tokens)


@pytest.mark.slow
def test_early_answers_reach_the_sender_through_the_proxy(
    start_receiver: StartReceiver, db_url: str, tmp_path: Path
) -> None:
    """401, 404, 410, 413 and 503 + Retry-After, answered by the receiver before it read the 10-16 MiB
    bodies nginx streams to it, reach http.client, httpx and curl over HTTPS; a body over nginx's own
    client_max_body_size gets nginx's 413 without reaching the receiver."""
    with (
        early_answer_receiver(start_receiver, db_url, tmp_path) as setup,
        run_nginx(setup.receiver.base_url, tmp_path / "nginx") as nginx,
    ):
        public, cases, ca_file = nginx.base_url, setup.cases, nginx.ca_file
        read = {
            "http.client": via_http_client(public, cases, ca_file),
            "httpx": via_httpx(public, cases, ca_file),
            "curl": via_curl(public, cases, tmp_path, ca_file),
        }
        before = setup.receiver.log()
        too_large = _declare_only(
            public, ca_file, cases[0].path, ReceiverSettings("sqlite://").max_body_bytes + 1
        )
        assert setup.receiver.log() == before  # nginx answered alone
        nginx_logs = nginx.logs()
        assert_every_client_read_its_answers(cases, read)
        assert too_large.startswith(b"HTTP/1.1 413 "), too_large[:100]
        assert_nothing_stored(setup)
        assert_still_serves(setup.receiver, *setup.tokens)
    assert [token for token in setup.tokens if token in nginx_logs] == []


def _declare_only(base_url: str, ca_file: Path, path: str, length: int) -> bytes:
    """A head declaring ``length`` bytes of body, none sent: what the server answers."""
    url = httpx.URL(base_url)
    context = tls_context(ca_file)
    assert context is not None
    with (
        socket.create_connection((url.host, url.port or 443), timeout=60) as raw,
        context.wrap_socket(raw, server_hostname=url.host) as sock,
    ):
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {url.host}\r\nContent-Length: {length}\r\n\r\n".encode())
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    break
        except (ssl.SSLError, ConnectionResetError):
            pass
    return answer
