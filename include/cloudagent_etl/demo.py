"""``make demo``: one real run of the ``cloudagent_dial_status`` DAG on the embedded default, then a summary.

What it does, all on loopback and under ``./data/demo`` (nothing else is touched):

1. migrates the SQLite database ``data/demo/cloudagent.db``;
2. starts the CloudAgent simulator and the callback receiver on free ports;
3. prepares an Airflow home in ``data/demo/airflow`` (``airflow db migrate``, pool ``cloudagent_api``);
4. runs ``airflow dags test cloudagent_dial_status <today>`` (the nightly window that ended today at
   03:30 IST) with the connections and the campaign Variable given as ``AIRFLOW_CONN_*``/``AIRFLOW_VAR_*``;
5. prints rows per campaign and dial status, rejects and timings.

The servers it started are stopped by their PIDs on every exit path (failure and Ctrl-C too). Running it
again gives the same warehouse: the simulator is seeded and the load is an idempotent merge. Airflow is
only ever run as a subprocess (this package never imports it).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, func, select

from cloudagent_etl import schema
from cloudagent_etl.db import create_db_engine, migrate

REPO = Path(__file__).resolve().parents[2]
DEMO_USER = "demo_user"
DEMO_API_KEY = "demo-api-key"
DEMO_CAMPAIGNS = ("Sales", "Support", "Renewals")
DAG_ID = "cloudagent_dial_status"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _server(name: str, args: list[str], port: int, log_dir: Path, env: Mapping[str, str]) -> Iterator[str]:
    """Run ``cloudagent-etl <args>`` in its own process group until the block exits; yield its base URL."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603  (our own CLI, fixed arguments)
            [sys.executable, "-m", "cloudagent_etl.cli", *args, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {log_path}")
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become healthy in 30 s; see {log_path}")
            time.sleep(0.1)
        print(f"  {name} listening on {base_url} (pid {process.pid}, log {log_path})")
        yield base_url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def _airflow(args: list[str], env: Mapping[str, str], log_path: Path) -> float:
    """Run the venv's ``airflow <args>``, output to ``log_path``; return seconds taken (raise on failure)."""
    started = time.perf_counter()
    with log_path.open("ab") as log:
        result = subprocess.run(  # noqa: S603  (the venv's airflow, fixed arguments)
            [str(Path(sys.executable).with_name("airflow")), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"`airflow {' '.join(args)}` failed ({result.returncode}); last lines:\n{tail}")
    return time.perf_counter() - started


def latest_requests(engine: Engine) -> dict[str, Any]:
    """The newest export request row of each campaign (what the last run did)."""
    requests = schema.export_requests
    with engine.connect() as conn:
        rows = conn.execute(select(requests).order_by(requests.c.created_at)).all()
    return {row.campaign_name: row for row in rows}


def summary(engine: Engine) -> str:
    """Rows per campaign and dial status, rejects, the last requests and their loads, as printable text."""
    ds, runs, rejects = schema.dial_status, schema.load_runs, schema.dial_status_rejects
    latest = latest_requests(engine)
    lines = ["", "dial_status rows per campaign and dial status (last leg):"]
    with engine.connect() as conn:
        for name, status, count in conn.execute(
            select(ds.c.campaign_name, ds.c.dial_status_last, func.count())
            .group_by(ds.c.campaign_name, ds.c.dial_status_last)
            .order_by(ds.c.campaign_name, ds.c.dial_status_last)
        ):
            lines.append(f"  {name:<12} {status or '(none)':<20} {count:>6}")
        total = conn.execute(select(func.count()).select_from(ds)).scalar_one()
        rejected = conn.execute(select(func.count()).select_from(rejects)).scalar_one()
        lines.append(f"  total {total} rows; {rejected} rows in dial_status_rejects")
        # Same fingerprint on every run of the demo = the same warehouse (the merge is idempotent).
        values = [
            ds.c.campaign_name,
            ds.c.record_key,
            *(ds.c[name] for name in schema.DIAL_STATUS_VALUE_COLUMNS),
        ]
        digest = hashlib.sha256()
        for row in conn.execute(select(*values).order_by(ds.c.campaign_name, ds.c.record_key)):
            digest.update(repr(tuple(row)).encode())
        lines.append(f"  warehouse fingerprint (values, no lineage): {digest.hexdigest()[:16]}")
        lines.append("last export request per campaign:")
        for name, row in sorted(latest.items()):
            lines.append(
                f"  {name:<12} {row.state:<8} uniqueId={row.unique_id} "
                f"window={row.window_start:%Y-%m-%d %H:%M}..{row.window_end:%Y-%m-%d %H:%M} UTC"
                + (f" error={row.error}" if row.error else "")
            )
        names = {row.request_id: name for name, row in latest.items()}
        lines.append("its loads (rows in / inserted / updated / unchanged / rejected, seconds):")
        for load in conn.execute(
            select(runs).where(runs.c.request_id.in_(list(names))).order_by(runs.c.started_at)
        ):
            lines.append(
                f"  {names[load.request_id]:<12} {load.rows_in} / {load.inserted} / {load.updated} / "
                f"{load.unchanged} / {load.rejected}  {load.seconds:.2f} s"
            )
    return "\n".join(lines)


def run_demo(data_dir: Path) -> int:
    """Run the demo under ``data_dir``; return the process exit code (0 when every campaign loaded)."""
    timings: dict[str, float] = {}
    airflow_home = data_dir / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    db_path = data_dir / "cloudagent.db"
    db_url = f"sqlite:///{db_path}"
    log_path = data_dir / "airflow.log"
    log_path.write_bytes(b"")

    print(f"cloudagent-etl demo in {data_dir}")
    started = time.perf_counter()
    migrate(db_url)
    timings["migrate project database"] = time.perf_counter() - started

    server_env = {"CLOUDAGENT_DB_URL": db_url, "CLOUDAGENT_DATA_DIR": str(data_dir)}
    with ExitStack() as servers:
        simulator_url = servers.enter_context(
            _server(
                "simulator",
                [
                    "simulate",
                    "--user",
                    DEMO_USER,
                    "--api-key",
                    DEMO_API_KEY,
                    "--campaigns",
                    ",".join(DEMO_CAMPAIGNS),
                ],
                _free_port(),
                data_dir,
                server_env,
            )
        )
        receiver_url = servers.enter_context(
            _server("receiver", ["receiver"], _free_port(), data_dir, server_env)
        )
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
            "AIRFLOW_CONN_CLOUDAGENT_DEFAULT": json.dumps(
                {
                    "conn_type": "cloudagent",
                    "host": simulator_url,
                    "login": DEMO_USER,
                    "password": DEMO_API_KEY,
                }
            ),
            "AIRFLOW_CONN_CLOUDAGENT_DB": db_url,
            "AIRFLOW_VAR_CLOUDAGENT_CAMPAIGNS": json.dumps(list(DEMO_CAMPAIGNS)),
            "CLOUDAGENT_CALLBACK_BASE_URL": receiver_url,
        }
        timings["airflow db migrate"] = _airflow(["db", "migrate"], env, log_path)
        timings["airflow pools set"] = _airflow(
            ["pools", "set", "cloudagent_api", "1", "CloudAgent API: one export request at a time"],
            env,
            log_path,
        )
        today = date.today().isoformat()
        print(f"  running `airflow dags test {DAG_ID} {today}` (log {log_path}) ...")
        try:
            timings["airflow dags test"] = _airflow(["dags", "test", DAG_ID, today], env, log_path)
        except RuntimeError as exc:
            print(f"  {exc}")
    engine = create_db_engine(db_url)
    try:
        print(summary(engine))
        latest = latest_requests(engine)
    finally:
        engine.dispose()
    print("timings:")
    for step, seconds in timings.items():
        print(f"  {step:<26} {seconds:6.1f} s")
    failed = sorted(name for name in DEMO_CAMPAIGNS if name not in latest or latest[name].state != "loaded")
    if failed:
        print(f"FAILED: campaigns not loaded: {', '.join(failed)}")
        return 1
    print("OK: every campaign loaded")
    return 0


def main() -> int:
    data_dir = Path(os.environ.get("CLOUDAGENT_DEMO_DIR", "data/demo")).absolute()
    try:
        return run_demo(data_dir)
    except KeyboardInterrupt:
        print("interrupted; the servers started by the demo were stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
