"""Callbacks posted at the receiver the way CloudAgent would, and the check that none was lost.

Used by ``make bench-receiver`` (throughput, zero loss at full size) and by the zero-loss test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from sqlalchemy import select

from cloudagent_dev.landing import create_export_request, read_payload_body
from cloudagent_dev.records import synthetic_records
from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine

WINDOW = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))


@dataclass(frozen=True)
class Callback:
    url: str
    body: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass
class PostResult:
    acked: list[Callback] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    attempts: int = 0
    failures: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies_s)
        return {
            "acked": len(self.acked),
            "attempts": self.attempts,
            "failed_attempts": self.failures,
            "seconds": round(self.seconds, 2),
            "acks_per_s": round(len(self.acked) / self.seconds, 1),
            "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        }


def make_callbacks(
    db_url: str, base_url: str, count: int, *, per_request: int = 1, records: int = 37
) -> list[Callback]:
    """``count`` distinct ~20 KB JSON-array bodies (37 records of ~540 bytes), ``per_request`` per request.

    One per request is what production sees (plus the odd duplicate), and the default.
    """
    engine = create_db_engine(db_url)
    callbacks: list[Callback] = []
    try:
        for start in range(0, count, per_request):
            new = create_export_request(
                engine,
                account="bench",
                campaign_name="BENCH",
                window_start=WINDOW[0],
                window_end=WINDOW[1],
                filters={},
            )
            url = landing.callback_url(base_url, new.request_id, new.token)
            for index in range(start, min(count, start + per_request)):
                rows = list(synthetic_records(records, seed=index))
                callbacks.append(Callback(url, json.dumps(rows).encode()))
    finally:
        engine.dispose()
    return callbacks


class _Connection:
    """A minimal keep-alive HTTP/1.1 client connection: the load generator must not eat the CPU it measures.

    (httpx's async client spends ~5 ms of CPU per request here, more than the receiver itself.)
    """

    def __init__(self, base_url: str) -> None:
        url = httpx.URL(base_url)
        self.host, self.port = url.host, url.port or 80
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None

    async def post(self, callback: Callback) -> int:
        """POST the callback; return the status code (raises OSError/IncompleteReadError on a broken link)."""
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        path = httpx.URL(callback.url).raw_path.decode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(callback.body)}\r\n\r\n"
        )
        writer.write(head.encode() + callback.body)
        await writer.drain()
        response = (await reader.readuntil(b"\r\n\r\n")).lower()
        length = 0
        for line in response.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        if b"connection: close" in response:
            self.close()
        return int(response[9:12])


async def post_until_acked(
    callbacks: list[Callback],
    clients: int,
    *,
    on_halfway: Callable[[], None] | None = None,
    deadline_s: float = 300,
) -> PostResult:
    """Post every callback from ``clients`` concurrent connections, retrying each until it gets a 2xx.

    ``on_halfway`` (blocking, run in a thread) is called once half of them are acknowledged, while the
    others keep posting: the zero-loss run kills and restarts the receiver there.
    """
    result = PostResult()
    queue: asyncio.Queue[Callback] = asyncio.Queue()
    for callback in callbacks:
        queue.put_nowait(callback)
    halfway = len(callbacks) // 2
    halfway_task: asyncio.Future[None] | None = None
    started = time.perf_counter()
    give_up = time.monotonic() + deadline_s

    async def worker() -> None:
        nonlocal halfway_task
        connection = _Connection(callbacks[0].url)
        try:
            while not queue.empty():
                callback = queue.get_nowait()
                while True:
                    if time.monotonic() > give_up:
                        raise TimeoutError(f"callbacks still unacknowledged after {deadline_s} s")
                    result.attempts += 1
                    sent = time.perf_counter()
                    try:
                        status = await asyncio.wait_for(connection.post(callback), 60)
                    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                        connection.close()
                        status = 0
                    if 200 <= status < 300:
                        result.latencies_s.append(time.perf_counter() - sent)
                        result.acked.append(callback)
                        if on_halfway is not None and halfway_task is None and len(result.acked) >= halfway:
                            halfway_task = asyncio.ensure_future(asyncio.to_thread(on_halfway))
                        break
                    result.failures += 1
                    await asyncio.sleep(0.05)
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    if halfway_task is not None:
        await halfway_task
    result.seconds = time.perf_counter() - started
    return result


def check_zero_loss(db_url: str, sent: list[Callback], acked: list[Callback]) -> dict[str, int]:
    """Counts of acknowledged bodies missing from the landing table, stored twice, or stored corrupted."""
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(landing.callback_payloads.c.payload_id, landing.callback_payloads.c.sha256)
        ).all()
        corrupted = sum(
            hashlib.sha256(read_payload_body(conn, payload_id)).hexdigest() != sha for payload_id, sha in rows
        )
    engine.dispose()
    stored = [sha for _, sha in rows]
    acked_shas = {callback.sha256 for callback in acked}
    return {
        "sent": len(sent),
        "acked": len(acked),
        "stored": len(stored),
        "missing": len(acked_shas - set(stored)),
        "stored_twice": len(stored) - len(set(stored)),
        "corrupted": corrupted,
        "unknown": len(set(stored) - {callback.sha256 for callback in sent}),
    }
