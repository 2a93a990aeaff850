"""``make demo``: one real run of the ``cloudagent_dial_status`` DAG on the embedded default, then a summary.

What it does, all on loopback and under ``./data/demo`` (nothing else is touched):

1. migrates the SQLite database ``data/demo/cloudagent.db``;
2. starts the CloudAgent simulator and the callback receiver on free ports;
3. prepares an Airflow home in ``data/demo/airflow`` (``airflow db migrate``, pool ``cloudagent_api``);
4. runs ``airflow dags test cloudagent_dial_status <today>`` (the nightly window that ended today at
   03:30 IST) with the connections and the campaign Variable given as ``AIRFLOW_CONN_*``/``AIRFLOW_VAR_*``;
5. prints rows per campaign and dial status, rejects and timings.

Each step is printed as it ends, and during the DAG run each campaign's request, callback and load as
they happen (read from the warehouse).

The servers it started are stopped by their PIDs on every exit path (failure and Ctrl-C too). Running it
again gives the same warehouse: the simulator is seeded and the load is an idempotent merge. Airflow is
only ever run as a subprocess (this package never imports it).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError

from cloudagent_dev.localstack import (
    DAG_ID,
    DEMO_API_KEY,
    DEMO_CAMPAIGNS,
    DEMO_USER,
    Progress,
    airflow_env,
    prepare_airflow_metadata,
    run_airflow,
)
from cloudagent_dev.processes import StartedProcess, free_port, stop_processes
from cloudagent_dev.servers import start_server
from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine, migrate
from cloudagent_etl.normalize import KEY_COLUMNS, VALUE_COLUMNS
from cloudagent_etl.warehouse.tables import dial_status, dial_status_rejects, load_runs


def summary(engine: Engine) -> str:
    """Rows per campaign and dial status, rejects, the last requests and their loads, as printable text."""
    ds, runs, rejects = dial_status, load_runs, dial_status_rejects
    latest = landing.latest_request_per_campaign(engine)
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
        values = [ds.c[name] for name in (*KEY_COLUMNS, *VALUE_COLUMNS)]
        digest = hashlib.sha256()
        for row in conn.execute(select(*values).order_by(ds.c.campaign_name, ds.c.record_key)):
            digest.update(repr(tuple(row)).encode())
        lines.append(f"  warehouse fingerprint (values, no lineage): {digest.hexdigest()[:16]}")
        lines.append("last export request per campaign:")
        for name, request in sorted(latest.items()):
            lines.append(
                f"  {name:<12} {request.state.value:<8} uniqueId={request.unique_id} "
                f"window={request.window_start:%Y-%m-%d %H:%M}..{request.window_end:%Y-%m-%d %H:%M} UTC"
                + (f" error={request.error}" if request.error else "")
            )
        names = {request.request_id: name for name, request in latest.items()}
        lines.append("its loads (rows in / inserted / updated / unchanged / rejected, seconds):")
        for load in conn.execute(
            select(runs).where(runs.c.request_id.in_(list(names))).order_by(runs.c.started_at)
        ):
            lines.append(
                f"  {names[load.request_id]:<12} {load.rows_in} / {load.inserted} / {load.updated} / "
                f"{load.unchanged} / {load.rejected}  {load.seconds:.2f} s"
            )
    return "\n".join(lines)


class CampaignProgress:
    """Prints, as it happens, each campaign's export request of this run: requested, callback landed, rows
    loaded (or failed/expired). Requests that existed before the run are not this run's and are skipped."""

    def __init__(self, engine: Engine, progress: Progress) -> None:
        self.engine, self.progress = engine, progress
        self.before = {request.request_id for request in landing.latest_request_per_campaign(engine).values()}
        self.reported: set[tuple[str, str]] = set()

    def poll(self) -> None:
        try:
            latest = landing.latest_request_per_campaign(self.engine)
        except OperationalError:  # the warehouse is busy (SQLite): the next poll reports it
            return
        for name, request in sorted(latest.items()):
            if request.request_id in self.before:
                continue
            if request.requested_at is not None:
                self._once(
                    request.request_id,
                    "requested",
                    f"{name}: export requested (uniqueId={request.unique_id})",
                )
            if request.received_at is not None:
                self._once(request.request_id, "landed", f"{name}: callback landed")
            if request.loaded_at is not None:
                self._once(request.request_id, "loaded", f"{name}: {self._loaded(request.request_id)}")
            if request.failed_at is not None or request.expired_at is not None:
                self._once(request.request_id, "ended", f"{name}: {request.state.value} ({request.error})")

    def _once(self, request_id: str, milestone: str, message: str) -> None:
        if (request_id, milestone) not in self.reported:
            self.reported.add((request_id, milestone))
            self.progress.say(message)

    def _loaded(self, request_id: str) -> str:
        runs = load_runs
        counts = [
            func.coalesce(func.sum(runs.c[name]), 0)
            for name in ("rows_in", "inserted", "updated", "unchanged", "rejected")
        ]
        with self.engine.connect() as conn:
            rows_in, inserted, updated, unchanged, rejected = conn.execute(
                select(*counts).where(runs.c.request_id == request_id)
            ).one()
        # A second run loads the same records again: "unchanged" says where they went.
        return (
            f"{rows_in} rows loaded ({inserted} inserted, {updated} updated, {unchanged} unchanged, "
            f"{rejected} rejected)"
        )


def run_demo(data_dir: Path) -> int:
    """Run the demo under ``data_dir``; return the process exit code (0 when every campaign loaded)."""
    progress = Progress()
    airflow_home = data_dir / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    db_path = data_dir / "cloudagent.db"
    db_url = f"sqlite:///{db_path}"
    log_path = data_dir / "airflow.log"
    log_path.write_bytes(b"")

    print(f"cloudagent-etl demo in {data_dir}", flush=True)
    progress.timed("migrate project database", lambda: migrate(db_url))

    server_env = {"CLOUDAGENT_DB_URL": db_url, "CLOUDAGENT_DATA_DIR": str(data_dir)}
    servers: list[StartedProcess] = []
    urls: dict[str, str] = {}
    engine = create_db_engine(db_url)
    try:
        simulator_args = ["simulate", "--user", DEMO_USER, "--api-key", DEMO_API_KEY]
        simulator_args += ["--campaigns", ",".join(DEMO_CAMPAIGNS)]
        for name, args in (("simulator", simulator_args), ("receiver", ["receiver"])):
            server = start_server(name, args, free_port(), data_dir / f"{name}.log", server_env)
            servers.append(server.started)
            urls[name] = server.base_url
            progress.say(f"{name} listening on {server.base_url} (pid {server.pid}, log {server.log_path})")
        env = airflow_env(
            airflow_home,
            metadata_db_url=f"sqlite:///{airflow_home / 'airflow.db'}",
            warehouse_db_url=db_url,
            api_connection={"host": urls["simulator"], "login": DEMO_USER, "password": DEMO_API_KEY},
            callback_base_url=urls["receiver"],
            campaigns=DEMO_CAMPAIGNS,
        )
        prepare_airflow_metadata(env, log_path, progress)
        today = date.today().isoformat()
        progress.say(f"running `airflow dags test {DAG_ID} {today}` (log {log_path}) ...")
        campaigns = CampaignProgress(engine, progress)
        try:
            progress.timed(
                "airflow dags test",
                lambda: run_airflow(["dags", "test", DAG_ID, today], env, log_path, campaigns.poll),
            )
        except RuntimeError as exc:
            progress.say(str(exc))
    finally:
        survivors = stop_processes(servers)
        if survivors:
            print(f"  could not stop: {'; '.join(survivors)}", flush=True)
    try:
        print(summary(engine))
        latest = landing.latest_request_per_campaign(engine)
    finally:
        engine.dispose()
    print("timings:")
    print(progress.summary())
    failed = sorted(name for name in DEMO_CAMPAIGNS if name not in latest or not latest[name].is_loaded)
    if failed:
        print(f"FAILED: campaigns not loaded: {', '.join(failed)}")
        return 1
    print("OK: every campaign loaded")
    return 0


@contextmanager
def folder_lock(data_dir: Path) -> Iterator[bool]:
    """Hold ``data_dir/demo.lock`` for one demo at a time; yields False (holding nothing) when another has it.

    An OS lock (``flock``): it is released when its holder exits, however it exits, so a killed demo never
    leaves a stale lock behind.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "demo.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield True


def main() -> int:
    data_dir = Path(os.environ.get("CLOUDAGENT_DEMO_DIR", "data/demo")).absolute()
    with folder_lock(data_dir) as ours:
        if not ours:
            holder = (data_dir / "demo.lock").read_text().strip() or "unknown"
            print(
                f"another `make demo` is running in {data_dir} (pid {holder}): wait for it to finish, or run "
                "this one in another folder with CLOUDAGENT_DEMO_DIR=<folder>",
                file=sys.stderr,
            )
            return 2
        try:
            return run_demo(data_dir)
        except KeyboardInterrupt:
            print("interrupted; the servers started by the demo were stopped")
            return 130


if __name__ == "__main__":
    sys.exit(main())
