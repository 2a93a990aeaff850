"""Benchmark of the callback receiver (``make bench-receiver``): throughput, a big body, zero loss.

Runs the real ``cloudagent-etl receiver`` process on loopback against PostgreSQL (a scratch database on
``CLOUDAGENT_TEST_PG_URL`` or the local server) and against a SQLite file, and prints a table; the
figures are also written to ``bench-results/receiver.json``.

- throughput: 50 concurrent clients post 2,000 distinct ~20 KB JSON callbacks; acknowledged callbacks per
  second and p50/p99 latency (targets on PostgreSQL: >= 300/s, p99 < 250 ms), and the CPU milliseconds
  per callback of the receiver's processes, of the PostgreSQL backends serving them and of this load
  generator (psutil, before/after). acks/s moves with whatever else runs on the two cores; CPU per
  callback hardly does, so compare that between versions. ``load_1m`` is the load average at the end.
- big body: one 200 MB callback streamed in; the stored body's SHA-256 must match and the receiver's
  peak RSS growth (psutil, sampled every 10 ms) must stay under 100 MB.
- zero loss: 2,000 callbacks from 50 clients, the receiver SIGKILLed and restarted halfway; clients retry
  whatever was not acknowledged; every acknowledged body must be stored exactly once.

``--scenarios throughput`` (or ``big_body``, ``zero_loss``), ``--databases`` and ``--workers`` pick what
to run. The load driver (:func:`post_until_acked`) and the loss check (:func:`check_zero_loss`) are also
used by the zero-loss test in ``tests/integration/test_receiver_zero_loss.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine, migrate, to_sqlalchemy_url
from cloudagent_etl.schema import callback_payloads
from cloudagent_etl.simulator.data import synthetic_records
from tests.servers import ServerProcess, free_port, run_server

RESULTS = Path("bench-results/receiver.json")
WINDOW = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))


@dataclass(frozen=True)
class Callback:
    url: str
    body: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass
class LoadResult:
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
            new = landing.create_export_request(
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
) -> LoadResult:
    """Post every callback from ``clients`` concurrent connections, retrying each until it gets a 2xx.

    ``on_halfway`` (blocking, run in a thread) is called once half of them are acknowledged, while the
    others keep posting: the zero-loss run kills and restarts the receiver there.
    """
    result = LoadResult()
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
        rows = conn.execute(select(callback_payloads.c.payload_id, callback_payloads.c.sha256)).all()
        corrupted = sum(
            hashlib.sha256(landing.read_payload_body(conn, payload_id)).hexdigest() != sha
            for payload_id, sha in rows
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


# ------------------------------------------------------------------------------------------- databases
@contextmanager
def scratch_database(kind: str, folder: Path) -> Iterator[str]:
    """A fresh migrated database URL: a SQLite file in ``folder`` or a PostgreSQL database dropped after."""
    if kind == "sqlite":
        url = f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        migrate(url)
        yield url
        return
    server = os.environ.get("CLOUDAGENT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    admin = create_engine(to_sqlalchemy_url(server), isolation_level="AUTOCOMMIT")
    name = f"cloudagent_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(to_sqlalchemy_url(server)).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def receiver_process(
    db_url: str, folder: Path, *, workers: int = 1, port: int | None = None
) -> Iterator[ServerProcess]:
    port = port or free_port()
    env = {"CLOUDAGENT_DB_URL": db_url, "CLOUDAGENT_DATA_DIR": str(folder), "CLOUDAGENT_CALLBACK_TOKEN": ""}
    args = ["receiver", "--port", str(port), "--workers", str(workers)]
    with run_server(args, port, folder / f"receiver-{port}-{time.monotonic_ns()}.log", env=env) as server:
        yield server


# ------------------------------------------------------------------------------------------- scenarios
def _cpu_s(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds used so far by ``processes`` (those that vanished count as 0)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _postgres_backends(db_url: str) -> list[psutil.Process]:
    """The server processes serving ``db_url``'s database (the receiver's pooled connections)."""
    engine = create_engine(to_sqlalchemy_url(db_url))
    with engine.connect() as conn:
        pids = conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalars()
        backends = [psutil.Process(pid) for pid in pids]
    engine.dispose()
    return backends


def bench_throughput(kind: str, folder: Path, count: int, clients: int, workers: int) -> dict[str, Any]:
    """Acks/s and latency, plus CPU ms per callback of each party (load-insensitive, unlike acks/s).

    ``receiver_cpu_ms`` covers the receiver's processes, ``db_cpu_ms`` the PostgreSQL backends serving
    them, ``client_cpu_ms`` this load generator; all three share the machine's cores.
    """
    with (
        scratch_database(kind, folder) as db_url,
        receiver_process(db_url, folder, workers=workers) as server,
    ):
        callbacks = make_callbacks(db_url, server.base_url, count)
        asyncio.run(post_until_acked(callbacks[:clients], clients))  # warm up connections and pools
        root = psutil.Process(server.pid)
        receiver = [root, *root.children(recursive=True)]
        backends = _postgres_backends(db_url) if kind == "postgres" else []
        client = psutil.Process()
        before = (_cpu_s(receiver), _cpu_s(backends), _cpu_s([client]))
        result = asyncio.run(post_until_acked(callbacks[clients:], clients))
        after = (_cpu_s(receiver), _cpu_s(backends), _cpu_s([client]))
        load_1m = os.getloadavg()[0]
        loss = check_zero_loss(db_url, callbacks, result.acked)
    per_callback_ms = [
        round((b - a) * 1000 / len(result.acked), 2) for a, b in zip(before, after, strict=True)
    ]
    body_kb = round(statistics.mean(len(c.body) for c in callbacks) / 1024, 1)
    return {
        "db": kind,
        "workers": workers,
        "clients": clients,
        "body_kb": body_kb,
        **result.summary(),
        "receiver_cpu_ms": per_callback_ms[0],
        "db_cpu_ms": per_callback_ms[1],
        "client_cpu_ms": per_callback_ms[2],
        "load_1m": round(load_1m, 2),
        **loss,
    }


def _rss(process: psutil.Process) -> int:
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def bench_big_body(kind: str, folder: Path, size_mb: int) -> dict[str, Any]:
    block = hashlib.sha256(b"seed").digest() * (1024 * 1024 // 32)  # 1 MiB of varied bytes
    expected = hashlib.sha256()
    for _ in range(size_mb):
        expected.update(block)
    with scratch_database(kind, folder) as db_url, receiver_process(db_url, folder) as server:
        [callback] = make_callbacks(db_url, server.base_url, 1, records=1)
        process = psutil.Process(server.pid)
        httpx.get(server.base_url + "/healthz")
        baseline = _rss(process)
        peak = baseline
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _rss(process))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()

        def body() -> Iterator[bytes]:
            for _ in range(size_mb):
                yield block

        started = time.perf_counter()
        response = httpx.post(callback.url, content=body(), timeout=600)
        seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
        engine = create_db_engine(db_url)
        with engine.connect() as conn:
            payload_id = conn.execute(select(callback_payloads.c.payload_id)).scalar_one()
            stored = hashlib.sha256()
            for chunk in landing.iter_payload_body(conn, payload_id):
                stored.update(chunk)
        engine.dispose()
    return {
        "db": kind,
        "size_mb": size_mb,
        "status": response.status_code,
        "seconds": round(seconds, 1),
        "sha256_matches": stored.hexdigest() == expected.hexdigest(),
        "rss_baseline_mb": round(baseline / 2**20, 1),
        "rss_peak_growth_mb": round((peak - baseline) / 2**20, 1),
    }


def bench_zero_loss(kind: str, folder: Path, count: int, clients: int) -> dict[str, Any]:
    with scratch_database(kind, folder) as db_url, ExitStack() as servers:
        first = servers.enter_context(receiver_process(db_url, folder))
        port = int(first.base_url.rsplit(":", 1)[1])
        callbacks = make_callbacks(db_url, first.base_url, count)

        def kill_and_restart() -> None:
            first.kill(signal.SIGKILL)
            servers.enter_context(receiver_process(db_url, folder, port=port))

        result = asyncio.run(post_until_acked(callbacks, clients, on_halfway=kill_and_restart))
        loss = check_zero_loss(db_url, callbacks, result.acked)
    return {"db": kind, "clients": clients, **result.summary(), **loss}


def _table(title: str, rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    widths = [max(len(str(column)), *(len(str(row[column])) for row in rows)) for column in columns]
    lines = [title, "  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--workers", default="1,2", help="uvicorn worker counts to measure (default 1,2)")
    parser.add_argument("--databases", default="postgres,sqlite")
    parser.add_argument(
        "--scenarios", default="throughput,big_body,zero_loss", help="which to run (default: all three)"
    )
    args = parser.parse_args(argv)
    scenarios = set(args.scenarios.split(","))
    kinds = args.databases.split(",")
    results: dict[str, Any] = {"throughput": [], "big_body": [], "zero_loss": []}
    with tempfile.TemporaryDirectory(prefix="bench-receiver-") as tmp:
        folder = Path(tmp)
        for kind in kinds if "throughput" in scenarios else []:
            for workers in (int(w) for w in args.workers.split(",")):
                results["throughput"].append(
                    bench_throughput(kind, folder, args.count, args.clients, workers)
                )
                print(results["throughput"][-1], flush=True)
        for kind in kinds if "big_body" in scenarios else []:
            results["big_body"].append(bench_big_body(kind, folder, args.big_mb))
            print(results["big_body"][-1], flush=True)
        for kind in kinds if "zero_loss" in scenarios else []:
            results["zero_loss"].append(bench_zero_loss(kind, folder, args.count, args.clients))
            print(results["zero_loss"][-1], flush=True)
    titles = {
        "throughput": "throughput (targets on postgres: >= 300 acks/s, p99 < 250 ms; CPU ms per callback)",
        "big_body": "big body (target: sha256 matches, peak RSS growth < 100 MB)",
        "zero_loss": "zero loss with SIGKILL + restart halfway (target: missing = stored_twice = 0)",
    }
    for scenario, title in titles.items():
        if results[scenario]:
            print()
            print(_table(title, results[scenario]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"measured_at": datetime.now(UTC).isoformat(), "cpus": os.cpu_count(), **results}, indent=2
        )
    )
    print(f"\nwritten to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
