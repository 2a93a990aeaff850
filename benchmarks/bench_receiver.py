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
to run. The load driver and the loss check (``cloudagent_dev.callback_load``) are also used by the
zero-loss test.
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
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import create_engine, select, text

from cloudagent_dev.callback_load import check_zero_loss, make_callbacks, post_until_acked
from cloudagent_dev.databases import scratch_database
from cloudagent_dev.servers import run_receiver
from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine, to_sqlalchemy_url

RESULTS = Path("bench-results/receiver.json")


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
        run_receiver(db_url, folder, workers=workers) as server,
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
    with scratch_database(kind, folder) as db_url, run_receiver(db_url, folder) as server:
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
            payload_id = conn.execute(select(landing.callback_payloads.c.payload_id)).scalar_one()
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
        first = servers.enter_context(run_receiver(db_url, folder))
        port = int(first.base_url.rsplit(":", 1)[1])
        callbacks = make_callbacks(db_url, first.base_url, count)

        def kill_and_restart() -> None:
            first.kill(signal.SIGKILL)
            servers.enter_context(run_receiver(db_url, folder, port=port))

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
