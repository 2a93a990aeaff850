"""Load benchmark: landed raw bytes -> committed warehouse rows, against the database's own COPY speed.

For each size (100k and 1M synthetic records from the simulator's generator, ~540 bytes each as JSON):

1. the payload is landed through ``landing.store_callback`` (not timed);
2. a fresh child process runs ``pipeline.load_payload`` (timed: end-to-end rows/s; its peak RSS is
   the load's alone);
3. the machine's 1-minute load average around the load (the box is shared: read ratios, not absolutes);
4. the physical reference, in the same run: the final ``dial_status`` rows, copied out as CSV, are
   ``COPY``-ed into a new table with the same primary key (and, second figure, with all of
   ``dial_status``'s indexes). On SQLite the reference is ``executemany`` INSERT of the same rows.

Each size runs :data:`REPEATS` times (``--repeats``), each run in a new database with its own reference;
the table shows each scenario's medians (rows/s, ratios, peak RSS, CPU) and the JSON keeps every run. A
run that begins while the machine's 1-minute load average is above :data:`COMPARABLE_LOAD_AVERAGE` (others
are busy; each load first waits up to :data:`SETTLE_SECONDS` for it to fall) is flagged NOT COMPARABLE;
runs whose warehouse digests differ are flagged too (the same payloads must store the same rows).

Prints a table and writes ``bench-results/load.json``. ``python -m benchmarks.bench_load [--sizes 100000]``;
PostgreSQL from ``CLOUDAGENT_BENCH_PG_URL`` (default the local server).

``--scaling`` measures instead what must grow no faster than the data (``bench-results/load-scaling.json``):

- per-record custom fields: N records (``--scaling-sizes``, default 1k, 10k, 100k), each with 25 custom
  fields of its own names (a campaign's uploaded columns), loaded end to end; the time per record must
  stay flat (the verdict compares the largest N's with the smallest's, tolerance x1.5);
- a form body: ~50 MB of ``uniqueId=...&data=<urlencoded JSON array>``; the load's peak RSS must stay
  under 500 MB (the JSON path's is ~400 MB);
- 5,000,000 empty records (``[{}, {}, ...]``, 10 MB): every one is rejected for the same reasons, so they
  must make one reject row (``occurrences`` = 5M), not 5M rows;
- on PostgreSQL, the load benchmark's first load, unchanged reload and 50 % newer at :data:`LARGE_RECORDS`
  (10M) records, one run: rows/s against the same-shape reference and peak RSS (``--large-records 0``
  skips it: two 5 GB payloads are written and landed, tens of GB of disk and 30-40 minutes in all).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import orjson
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from cloudagent_dev.landing import create_export_request
from cloudagent_dev.records import synthetic_records
from cloudagent_etl import landing, pipeline
from cloudagent_etl.db import create_db_engine, migrate, to_sqlalchemy_url
from cloudagent_etl.normalize import ROW_COLUMNS

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
RESULTS = Path("bench-results/load.json")
SCALING_RESULTS = Path("bench-results/load-scaling.json")
PEER_RESULTS = Path("bench-results/load-peer.json")
CUSTOM_FIELDS_PER_RECORD = 25
FORM_BODY_BYTES = 50_000_000
FORM_PEAK_RSS_LIMIT_MB = 500
EMPTY_RECORDS = 5_000_000
#: The time per record at the largest N may be at most this times that at the smallest: "linear".
LINEAR_TOLERANCE = 1.5
#: Runs of each scenario; its figures are their median.
REPEATS = 3
#: A run that starts with the machine's 1-minute load average above this is not comparable (2 cores).
COMPARABLE_LOAD_AVERAGE = 1.5
#: How long a load waits for the load average to fall to ``COMPARABLE_LOAD_AVERAGE`` before it starts.
SETTLE_SECONDS = 15
#: Records of the large first load of ``--scaling`` (PostgreSQL): peak RSS and rows/s at ten times 1M.
LARGE_RECORDS = 10_000_000
#: What a load imports on first use (lazily, to keep DAG parsing light), imported before a load is timed.
LOAD_MODULES = (
    "cloudagent_etl.warehouse",
    "cloudagent_etl.normalize",
    "cloudagent_etl.personal_data.records",
    "pgpq.encoders",
    "pgpq.schema",
    "psycopg",
    "pyarrow.acero",
    "pyarrow.compute",
)
#: Columns of a stored version compared by ``warehouse_digest`` (``loaded_at`` differs run by run).
DIGEST_COLUMNS = (*ROW_COLUMNS, "payload_id", "load_run_id")


def reused_payload(path: Path, records: Callable[[], Iterable[dict[str, str]]]) -> landing.CallbackBody:
    """The JSON payload at ``path``, written from ``records()`` unless an earlier run wrote it."""
    if not path.exists():
        return write_payload(path, records())
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while data := file.read(8 * 1024 * 1024):
            digest.update(data)
    return landing.CallbackBody(path.open("rb"), path.stat().st_size, digest.hexdigest())


def write_payload(
    path: Path, records: Iterable[dict[str, str]], *, form: bool = False, max_bytes: int | None = None
) -> landing.CallbackBody:
    """Write ``records`` as one JSON array (or as a form's urlencoded ``data`` field), streaming.

    Stops after the record that reaches ``max_bytes``; returns the body ready to land.
    """
    digest = hashlib.sha256()
    with path.open("wb") as out:

        def write(piece: bytes, *, encode: bool = form) -> None:
            data = quote_from_bytes(piece).encode() if encode else piece
            out.write(data)
            digest.update(data)

        if form:
            write(b"uniqueId=bench-form&data=", encode=False)
        write(b"[")
        for index, record in enumerate(records):
            write((b"," if index else b"") + orjson.dumps(record))
            if max_bytes is not None and out.tell() >= max_bytes:
                break
        write(b"]")
    return landing.CallbackBody(path.open("rb"), path.stat().st_size, digest.hexdigest())


def records_with_own_fields(count: int) -> Iterator[dict[str, str]]:
    """Synthetic records, each with ``CUSTOM_FIELDS_PER_RECORD`` custom fields no other record has."""
    for index, record in enumerate(synthetic_records(count, seed=7)):
        record.update(
            {f"Upload_{index}_{field}": f"value {field}" for field in range(CUSTOM_FIELDS_PER_RECORD)}
        )
        yield record


def backend_cpu_seconds(engine: Engine) -> float:
    """CPU seconds used so far by the PostgreSQL backends of ``engine``'s database (from ``/proc``).

    Only the load's own connections are connected to a scratch database; 0.0 on SQLite.
    """
    if engine.dialect.name != "postgresql":
        return 0.0
    with engine.connect() as conn:
        pids = conn.scalars(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend'"
            )
        ).all()
    return sum(process_cpu_seconds(pid) for pid in pids)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process of this machine (0.0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``): unlike ``ru_maxrss``, it does not inherit the high-water mark
    of the parent whose memory a ``vfork``-ed child shared before its ``exec``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_load(url: str, payload_id: int, *, pseudonyms: bool = True) -> None:
    """Run in a fresh process: the load, its time, CPU and this process's peak RSS, as JSON on stdout.

    The modules the load imports are imported before its clock starts (and timed on their own), as in a
    worker that has loaded a payload before: a process's start is not a cost of each load it makes.

    ``pseudonyms=False`` measures the load as it was before pseudonyms: no number parsed, no HMAC (the
    columns stay NULL); only the benchmark can load so."""
    if not pseudonyms:
        import pyarrow as pa

        from cloudagent_etl.normalize import records as normalize_records_module
        from cloudagent_etl.personal_data.phones import PseudonymKey

        normalize_records_module.e164_array = lambda raw, _region: pa.nulls(len(raw), pa.string())  # type: ignore[assignment]
        PseudonymKey.pseudonyms = lambda _self, e164: pa.nulls(len(e164), pa.string())  # type: ignore[method-assign,assignment]
    started = time.perf_counter()
    for module in LOAD_MODULES:
        importlib.import_module(module)
    import_seconds = time.perf_counter() - started
    engine = create_db_engine(url)
    cpu_before = client_cpu_seconds()
    started = time.perf_counter()
    result = pipeline.load_payload(engine, payload_id)
    seconds = time.perf_counter() - started
    client_cpu = client_cpu_seconds() - cpu_before
    server_cpu = backend_cpu_seconds(engine)
    figures = {
        "seconds": seconds,
        "import_seconds": import_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "result": result.__dict__,
    }
    print(json.dumps({**figures, "client_cpu_s": client_cpu, "server_cpu_s": server_cpu}, default=str))


def run_load(url: str, payload_id: int, *, pseudonyms: bool = True) -> dict[str, Any]:
    child = "--child" if pseudonyms else "--child-without-pseudonyms"
    out = subprocess.run(  # noqa: S603 - our own interpreter and module, arguments we made
        [sys.executable, "-m", "benchmarks.bench_load", child, url, str(payload_id)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def pg_reference(url: str, count: int) -> dict[str, float]:
    """COPY the final dial_status rows into tables with the same key, and of the same shape (every index
    and the trigger), in CSV; and into the same shape in binary (the format the load copies in)."""
    engine = create_db_engine(url)
    figures = {}
    with tempfile.TemporaryFile() as csv, tempfile.TemporaryFile() as binary:
        with engine.connect() as conn:
            raw: Any = conn.connection.driver_connection
            for file, format_ in ((csv, "csv"), (binary, "binary")):
                with (
                    raw.cursor() as cursor,
                    cursor.copy(f"COPY dial_status TO STDOUT (FORMAT {format_})") as copy,
                ):
                    for data in copy:
                        file.write(data)
        for name, like, file, format_ in (
            ("reference_pk", "INCLUDING DEFAULTS", csv, "csv"),
            ("reference_all_indexes", "INCLUDING ALL", csv, "csv"),
            ("reference_all_indexes_binary", "INCLUDING ALL", binary, "binary"),
        ):
            with engine.begin() as conn:
                conn.exec_driver_sql(f"CREATE TABLE {name} (LIKE dial_status {like})")
                if name == "reference_pk":
                    conn.exec_driver_sql(f"ALTER TABLE {name} ADD PRIMARY KEY (campaign_name, record_key)")
                else:  # the same shape: key, indexes and the trigger that keeps replaced versions
                    conn.exec_driver_sql(
                        f"CREATE TRIGGER {name}_keep_replaced AFTER UPDATE ON {name} "
                        "REFERENCING OLD TABLE AS replaced NEW TABLE AS replacing "
                        "FOR EACH STATEMENT EXECUTE FUNCTION dial_status_keep_replaced()"
                    )
            file.seek(0)
            started = time.perf_counter()
            with engine.begin() as conn:
                raw = conn.connection.driver_connection
                with (
                    raw.cursor() as cursor,
                    cursor.copy(f"COPY {name} FROM STDIN (FORMAT {format_})") as copy,
                ):
                    while data := file.read(8 * 1024 * 1024):
                        copy.write(data)
            figures[name] = count / (time.perf_counter() - started)
    engine.dispose()
    return figures


def sqlite_reference(url: str, count: int) -> dict[str, float]:
    """executemany INSERT of the final rows into a table with the same key."""
    engine = create_db_engine(url)
    with engine.begin() as conn:
        rows = conn.exec_driver_sql("SELECT * FROM dial_status").all()
        columns = ", ".join(f"c{i}" for i in range(len(rows[0])))
        conn.exec_driver_sql(f"CREATE TABLE reference_pk ({columns}, PRIMARY KEY (c0, c1))")
    started = time.perf_counter()
    with engine.begin() as conn:
        placeholders = ", ".join("?" for _ in rows[0])
        conn.exec_driver_sql(
            f"INSERT INTO reference_pk VALUES ({placeholders})", [tuple(row) for row in rows]
        )
    figure = count / (time.perf_counter() - started)
    engine.dispose()
    return {"reference_pk": figure}


def land_payload(url: str, body: landing.CallbackBody, content_type: str) -> int:
    """Migrate ``url``, make an export request of campaign BENCH and land ``body`` for it; its payload id."""
    migrate(url)
    engine = create_db_engine(url)
    request = create_export_request(
        engine,
        account="bench",
        campaign_name="BENCH",
        window_start=datetime(2024, 1, 1, tzinfo=UTC),
        window_end=datetime(2024, 1, 2, tzinfo=UTC),
        filters={"sortby": "2"},
    )
    with body.file:
        stored = landing.store_callback(engine, request.request_id, body, content_type=content_type)
    engine.dispose()
    return stored.payload_id


def newer_records(count: int) -> Iterator[dict[str, str]]:
    """The records of the first load with every second one a newer version (one hour later, new values)."""
    for index, record in enumerate(synthetic_records(count, seed=7)):
        if index % 2 == 0:
            updated = datetime.strptime(record["UpdatedDate"], "%Y-%m-%d %H:%M:%S") + timedelta(hours=1)
            record.update(
                UpdatedDate=updated.strftime("%Y-%m-%d %H:%M:%S"), Disposition="Callback", Attempts="4"
            )
        yield record


def warehouse_digest(url: str) -> str:
    """SHA-256 of every current and superseded row and the load counts.

    All columns but ``loaded_at`` and ``request_id`` (both new in each run).

    Two versions of the load that give the same digest on the same payloads wrote the same rows.
    """
    engine = create_db_engine(url)
    digest = hashlib.sha256()
    counts = "rows_in, inserted, updated, unchanged, duplicates, rejected"
    queries = [
        f"SELECT {', '.join(columns)} FROM {table} ORDER BY campaign_name, record_key, updated_at"
        for table, columns in (
            ("dial_status", (*DIGEST_COLUMNS, "previous_load_run_id")),
            ("dial_status_superseded", DIGEST_COLUMNS),
        )
    ]
    queries.append(f"SELECT load_run_id, {counts} FROM load_runs ORDER BY load_run_id")
    with engine.connect() as conn:
        for query in queries:
            for row in conn.exec_driver_sql(query):
                digest.update(repr(tuple(_canonical(value) for value in row)).encode())
    engine.dispose()
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    """A value as both databases return it: aware times in UTC, JSON as sorted text."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if isinstance(value, str) and value.startswith("{"):
        try:
            return orjson.dumps(orjson.loads(value), option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONDecodeError:
            return value
    return value


def bench(database: str, url: str, count: int, workdir: Path) -> list[dict[str, Any]]:
    """First load, a reload of the same payload (every row unchanged), a payload with 50 % newer rows.

    One run: each scenario's figures and the reference measured in this run (see :func:`repeated`).
    """
    body = reused_payload(workdir / f"payload-{count}.json", lambda: synthetic_records(count, seed=7))
    payload_id = land_payload(url, body, "application/json")
    runs = {"first_load": _timed_load(url, payload_id)}
    reference = pg_reference(url, count) if database == "postgresql" else sqlite_reference(url, count)
    runs["reload_unchanged"] = _timed_load(url, payload_id)
    newer = reused_payload(workdir / f"newer-{count}.json", lambda: newer_records(count))
    runs["reload_50pct_newer"] = _timed_load(url, land_payload(url, newer, "application/json"))
    digest = warehouse_digest(url)
    rows = []
    for scenario, load in runs.items():
        rows_per_s = count / load["seconds"]
        same_shape = reference.get("reference_all_indexes", reference["reference_pk"])
        rows.append(
            {
                "database": database,
                "scenario": scenario,
                "records": count,
                "payload_mb": body.size / 1e6,
                "seconds": load["seconds"],
                "import_seconds": load["import_seconds"],
                "rows_per_s": rows_per_s,
                "peak_rss_mb": load["peak_rss_mb"],
                **{f"{name}_rows_per_s": value for name, value in reference.items()},
                "ratio": rows_per_s / reference["reference_pk"],
                "ratio_to_same_shape": rows_per_s / same_shape,
                **(
                    {"ratio_to_same_shape_binary": rows_per_s / reference["reference_all_indexes_binary"]}
                    if "reference_all_indexes_binary" in reference
                    else {}
                ),
                "client_cpu_s_per_100k": load["client_cpu_s"] * 100_000 / count,
                "server_cpu_s_per_100k": load["server_cpu_s"] * 100_000 / count,
                "load_avg_1m": load["load_avg_1m"],
                "load_avg_1m_before": load["load_avg_1m_before"],
                "comparable": load["load_avg_1m_before"] <= COMPARABLE_LOAD_AVERAGE,
                "cpus": os.cpu_count(),
                "counts": load["result"],
                "warehouse_digest": digest,
            }
        )
    return rows


def _timed_load(url: str, payload_id: int) -> dict[str, Any]:
    """``run_load`` with the machine's 1-minute load average around it (the box is shared).

    The load waits up to :data:`SETTLE_SECONDS` for the average to fall to :data:`COMPARABLE_LOAD_AVERAGE`
    (the previous load's own work still counts in it); the average when it starts is what says whether
    others were busy (``load_avg_1m_before``); ``load_avg_1m`` is the greater of before and after.
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    while os.getloadavg()[0] > COMPARABLE_LOAD_AVERAGE and time.monotonic() < deadline:
        time.sleep(1)
    load_before = os.getloadavg()[0]
    load = run_load(url, payload_id)
    return {**load, "load_avg_1m_before": load_before, "load_avg_1m": max(load_before, os.getloadavg()[0])}


#: Figures of a repeated scenario summarised by their median (a shared machine's single run is no result).
MEDIAN_FIGURES = (
    "seconds",
    "rows_per_s",
    "ratio",
    "ratio_to_same_shape",
    "ratio_to_same_shape_binary",
    "peak_rss_mb",
    "client_cpu_s_per_100k",
    "server_cpu_s_per_100k",
    "reference_pk_rows_per_s",
    "reference_all_indexes_rows_per_s",
    "reference_all_indexes_binary_rows_per_s",
)


def repeated(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per scenario from several runs of :func:`bench`: the median of each figure, every run's
    figures and load average, and whether every run stored the same rows (one digest)."""
    summary = []
    for scenario_runs in zip(*runs, strict=True):
        first = scenario_runs[0]
        medians = {
            name: statistics.median(run[name] for run in scenario_runs)
            for name in MEDIAN_FIGURES
            if name in first
        }
        digests = sorted({run["warehouse_digest"] for run in scenario_runs})
        summary.append(
            {
                **first,
                **medians,
                "runs": len(scenario_runs),
                "not_comparable_runs": sum(not run["comparable"] for run in scenario_runs),
                "comparable": all(run["comparable"] for run in scenario_runs),
                "load_avg_1m": max(run["load_avg_1m"] for run in scenario_runs),
                "load_avg_1m_before": max(run["load_avg_1m_before"] for run in scenario_runs),
                "warehouse_digest": digests[0] if len(digests) == 1 else digests,
                "same_rows_every_run": len(digests) == 1,
                "each_run": [
                    {
                        name: run[name]
                        for name in (*MEDIAN_FIGURES, "load_avg_1m_before", "load_avg_1m", "comparable")
                        if name in run
                    }
                    for run in scenario_runs
                ],
            }
        )
    return summary


# ---------------------------------------------------------------------------------------------- pseudonyms
def pseudonym_cost(count: int = 100_000) -> None:
    """CPU of E.164 parsing and HMAC per 100k numbers: all distinct (the worst case), and as a payload
    repeats them (every lead's number in each of its versions)."""
    import pyarrow as pa

    from cloudagent_etl.personal_data.phones import PseudonymKey, e164_array, to_e164

    key = PseudonymKey(os.environ["CLOUDAGENT_PSEUDONYM_KEY"])
    distinct = pa.array([f"98{index:08d}" for index in range(count)])
    repeated = pa.array([f"98{index % (count // 4):08d}" for index in range(count)])
    for label, numbers in (("distinct", distinct), ("each number 4 times", repeated)):
        to_e164.cache_clear()
        started = time.process_time()
        e164 = e164_array(numbers, "IN")
        parsed = time.process_time() - started
        started = time.process_time()
        key.pseudonyms(e164)
        hashed = time.process_time() - started
        scale = 100_000 / count
        print(
            f"{label:<22} E.164 {parsed * scale:6.3f} CPU-s, HMAC {hashed * scale:6.3f} CPU-s "
            f"per 100k numbers (load average {os.getloadavg()[0]:.1f})"
        )


def pseudonym_overhead(
    database: str, admin: Engine, pg_server: str, workdir: Path, count: int, rounds: int
) -> None:
    """First loads of one payload into fresh databases, with and without pseudonyms, taking turns."""
    body_path = workdir / f"pseudonyms-{count}.json"
    write_payload(body_path, synthetic_records(count, seed=7)).file.close()
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for round_index in range(rounds):
        for with_pseudonyms in (round_index % 2 == 0, round_index % 2 != 0):
            label = f"pseudonyms-{with_pseudonyms}-{round_index}"
            with scratch_database(database, admin, pg_server, workdir, label) as url:
                digest = hashlib.sha256(body_path.read_bytes()).hexdigest()
                body = landing.CallbackBody(body_path.open("rb"), body_path.stat().st_size, digest)
                payload_id = land_payload(url, body, "application/json")
                load_before = os.getloadavg()[0]
                load = run_load(url, payload_id, pseudonyms=with_pseudonyms)
                seconds[with_pseudonyms].append(load["seconds"])
                print(
                    f"{database:<10} {count:>8} records  {'with' if with_pseudonyms else 'without':<7} "
                    f"pseudonyms {load['seconds']:7.2f} s  {count / load['seconds']:>9.0f} rows/s  "
                    f"(load average {max(load_before, os.getloadavg()[0]):.1f})",
                    flush=True,
                )
    with_median, without_median = (statistics.median(seconds[flag]) for flag in (True, False))
    print(
        f"{database:<10} {count:>8} records  median with {with_median:.2f} s, "
        f"without {without_median:.2f} s: {(with_median / without_median - 1) * 100:+.1f} %"
    )


# ---------------------------------------------------------------------------------------------- breakdown
def lock_of(merge: Any) -> Callable[[Any], None]:
    """What the load's producer does before staging rows: take the locks they need (no merge in flight)."""
    return lambda rows: merge.lock(merge.unlocked(rows))


def breakdown(pg_server: str, admin: Engine, count: int = 100_000) -> dict[str, float]:
    """CPU seconds per 100k records of each step, run one after the other in this process (no overlap).

    Client: parsing, typing, staging (key hashes, the CSV of new keys and of the stage). Server (``/proc``
    of the backend): the ``COPY`` of new keys into the current table, the ``COPY`` into the stage and the
    merge statements, for a first load, a reload of it and a payload with 50 % newer rows, each on a new
    connection in a transaction of its own (committed, as the benchmark's loads are).
    """
    from cloudagent_etl import normalize
    from cloudagent_etl.databases.postgresql import BinaryCopy
    from cloudagent_etl.warehouse import load

    scale = 100_000 / count
    body = orjson.dumps(list(synthetic_records(count, seed=7)))
    newer = orjson.dumps(list(newer_records(count)))
    started = client_cpu_seconds()
    for _ in normalize.iter_record_batches(body, "application/json"):
        pass
    figures = {"client_parse": client_cpu_seconds() - started}
    started = client_cpu_seconds()
    first = list(normalize.normalize_payload(body, "application/json", timezone="Asia/Kolkata"))
    figures["client_typing"] = client_cpu_seconds() - started - figures["client_parse"]
    reloads = list(normalize.normalize_payload(newer, "application/json", timezone="Asia/Kolkata"))
    copy = BinaryCopy.write
    copy_cpu: dict[str, float] = {}

    def measured_copy(binary_copy: BinaryCopy, data: bytes) -> None:
        pid = binary_copy.conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
        before = process_cpu_seconds(pid)
        copy(binary_copy, data)
        copy_cpu[binary_copy.table] = copy_cpu.get(binary_copy.table, 0.0) + process_cpu_seconds(pid) - before

    with scratch_database("postgresql", admin, pg_server, Path(), "breakdown") as url:
        migrate(url)
        engine = create_db_engine(url)
        BinaryCopy.write = measured_copy  # type: ignore[method-assign,assignment]
        try:
            phases = (("first_load", first), ("reload_unchanged", first), ("reload_50pct_newer", reloads))
            for run, (phase, batches) in enumerate(phases, start=1):
                engine.dispose()  # each phase on a new connection, as each load of the benchmark
                copy_cpu.clear()
                lineage = {"account": "bench", "request_id": "bench", "payload_id": 1, "load_run_id": run}
                stage_cpu = 0.0
                with engine.begin() as conn:
                    pid = conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
                    before = process_cpu_seconds(pid)
                    merger = load._Merger(conn, {**lineage, "loaded_at": datetime.now(UTC)})
                    merge_rows = merger.merge_rows
                    for batch in batches:
                        client_before = client_cpu_seconds()
                        staged = load.prepare_batch(batch, merge_rows.stage, "bench", lock_of(merge_rows))
                        stage_cpu += client_cpu_seconds() - client_before
                        merger.merge(staged)
                    merger.finish()
                    total = process_cpu_seconds(pid) - before
                copies = sum(copy_cpu.values())
                figures[f"client_{phase}_stage"] = stage_cpu
                figures[f"server_{phase}_copy_new_keys"] = copy_cpu.get(load.MERGE_SPEC.current, 0.0)
                figures[f"server_{phase}_copy_stage"] = copy_cpu.get(load.MERGE_SPEC.stage, 0.0)
                figures[f"server_{phase}_merge"] = total - copies
        finally:
            BinaryCopy.write = copy  # type: ignore[method-assign]
            engine.dispose()
    return {name: value * scale for name, value in figures.items()}


# ---------------------------------------------------------------------------------------------- the peer
#: dlt's names for dial_status's key and indexed columns (it snake-cases the source field names; the
#: legs of DialStatus are not split by dlt, so its whole text stands for dial_status_last).
PEER_KEY = ("campaign_name", "data_unique_id")
PEER_INDEXES = (("campaign_name", "updated_date"), ("dial_status",), ("disposition",))
PEER_SHAPES = {"same_shape": PEER_INDEXES, "pk_only": ()}


def dlt_pipeline(url: str, shape: str, workdir: Path) -> Any:
    """The peer's pipeline into PostgreSQL at ``url`` (dataset ``peer_<shape>``); dlt is imported here only.

    dlt is installed by ``make bench-peer`` alone (into ``.venv-peer``).
    """
    import dlt

    # dlt insists on a password; the benchmark's server trusts loopback, so any one will do.
    credentials = make_url(to_sqlalchemy_url(url)).set(drivername="postgresql", password="trust")  # noqa: S106
    return dlt.pipeline(
        pipeline_name=f"peer_{shape}",
        destination=dlt.destinations.postgres(credentials=credentials.render_as_string(hide_password=False)),
        dataset_name=f"peer_{shape}",
        pipelines_dir=str(workdir / "dlt"),
    )


def dlt_merge(pipeline: Any, records: list[dict[str, Any]]) -> None:
    """dlt's fastest merge path: the records as one pyarrow table, parquet files, delete-insert."""
    import pyarrow as pa

    pipeline.run(
        pa.Table.from_pylist(records),
        table_name="dial_status_peer",
        write_disposition={"disposition": "merge", "strategy": "delete-insert"},
        primary_key=PEER_KEY,
        loader_file_format="parquet",
    )


def child_peer(url: str, shape: str, payload: str, workdir: str) -> None:
    """Run in a fresh process: dlt from the payload's bytes in memory to merged rows; time and peak RSS."""
    import dlt

    data = Path(payload).read_bytes()
    started = time.perf_counter()
    dlt_merge(dlt_pipeline(url, shape, Path(workdir)), orjson.loads(data))
    seconds = time.perf_counter() - started
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # dlt's workers, if any
    peak = max(peak_rss_mb(), children_mb)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "dlt_version": dlt.__version__}))


def prepare_peer_table(url: str, shape: str, payload: Path, workdir: Path) -> None:
    """Let dlt create its table from the first records, give it dial_status's key (and indexes), empty it."""
    pipeline = dlt_pipeline(url, shape, workdir)
    with payload.open("rb") as file:
        head = file.read(1_000_000)
    dlt_merge(pipeline, orjson.loads(head[: head.rindex(b"},") + 1] + b"]"))
    engine = create_db_engine(url)
    table = f"peer_{shape}.dial_status_peer"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {table}")
        constraints = conn.exec_driver_sql(
            f"SELECT conname FROM pg_constraint WHERE conrelid = '{table}'::regclass AND contype = 'p'"
        ).all()
        if not constraints:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD PRIMARY KEY ({', '.join(PEER_KEY)})")
        for columns in PEER_SHAPES[shape]:
            conn.exec_driver_sql(f"CREATE INDEX ON {table} ({', '.join(columns)})")
    engine.dispose()


def bench_peer(database: str, url: str, count: int, workdir: Path) -> dict[str, Any]:
    """This project's first load and dlt's fastest merge path on the same records, in the same run."""
    body = write_payload(workdir / f"payload-{count}.json", synthetic_records(count, seed=7))
    ours = _timed_load(url, land_payload(url, body, "application/json"))
    figures: dict[str, Any] = {}
    for shape in PEER_SHAPES:
        prepare_peer_table(url, shape, Path(body.file.name), workdir)
        out = subprocess.run(  # noqa: S603 - our own interpreter and module, arguments we made
            [
                sys.executable,
                "-m",
                "benchmarks.bench_load",
                "--child-peer",
                url,
                shape,
                body.file.name,
                str(workdir),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        figures[shape] = json.loads(out.stdout.strip().splitlines()[-1])
    engine = create_db_engine(url)
    with engine.connect() as conn:
        peer_rows = conn.exec_driver_sql("SELECT COUNT(*) FROM peer_same_shape.dial_status_peer").scalar_one()
    engine.dispose()
    rows_per_s = count / ours["seconds"]
    peer = figures["same_shape"]
    return {
        "database": database,
        "scenario": "first_load",
        "records": count,
        "rows_per_s": rows_per_s,
        "peak_rss_mb": ours["peak_rss_mb"],
        "peer": f"dlt {peer['dlt_version']} merge (pyarrow table, parquet, delete-insert)",
        "peer_rows": peer_rows,
        "peer_rows_per_s": count / peer["seconds"],
        "peer_peak_rss_mb": peer["peak_rss_mb"],
        "peer_pk_only_rows_per_s": count / figures["pk_only"]["seconds"],
        "peer_pk_only_peak_rss_mb": figures["pk_only"]["peak_rss_mb"],
        "ratio_to_peer": rows_per_s / (count / peer["seconds"]),
        "rss_fraction_of_peer": ours["peak_rss_mb"] / peer["peak_rss_mb"],
        "load_avg_1m": ours["load_avg_1m"],
    }


def record_peer(rows: list[dict[str, Any]]) -> None:
    """Add the peer's figures to the matching first-load rows of ``load.json`` (and keep the peer's own)."""
    PEER_RESULTS.write_text(
        json.dumps({"measured_at": datetime.now(UTC).isoformat(), "results": rows}, indent=2)
    )
    if not RESULTS.exists():
        return
    saved = json.loads(RESULTS.read_text())
    for row in saved["results"]:
        for peer in rows:
            if (row["database"], row.get("scenario"), row["records"]) == (
                peer["database"],
                peer["scenario"],
                peer["records"],
            ):
                row["peer_rows_per_s"] = peer["peer_rows_per_s"]
                row["ratio_to_peer"] = peer["ratio_to_peer"]
                row["peer_measured_at"] = datetime.now(UTC).isoformat()
    RESULTS.write_text(json.dumps(saved, indent=2))


def print_peer_row(row: dict[str, Any]) -> None:
    print(
        f"{row['records']:>9} this project {row['rows_per_s']:>8.0f} rows/s {row['peak_rss_mb']:>6.0f} MB | "
        f"{row['peer']}: same shape {row['peer_rows_per_s']:>8.0f} rows/s "
        f"{row['peer_peak_rss_mb']:>6.0f} MB, "
        f"PK only {row['peer_pk_only_rows_per_s']:>8.0f} rows/s | x{row['ratio_to_peer']:.2f} the peer at "
        f"{row['rss_fraction_of_peer']:.2f} of its memory (load {row['load_avg_1m']:.1f})",
        flush=True,
    )


def bench_own_fields(database: str, url: str, count: int, workdir: Path) -> dict[str, Any]:
    """Load ``count`` records with per-record custom fields: the time per 1,000 records."""
    body = write_payload(workdir / f"own-fields-{count}.json", records_with_own_fields(count))
    load = run_load(url, land_payload(url, body, "application/json"))
    return {
        "scenario": "own_fields",
        "database": database,
        "records": count,
        "payload_mb": body.size / 1e6,
        "seconds": load["seconds"],
        "ms_per_1k_records": 1000 * load["seconds"] / count * 1000,
        "peak_rss_mb": load["peak_rss_mb"],
        "load_avg_1m": os.getloadavg()[0],
        "counts": load["result"],
    }


def bench_form_body(database: str, url: str, workdir: Path) -> dict[str, Any]:
    """Load a ~50 MB urlencoded form body: its peak RSS."""
    records = synthetic_records(10**7, seed=7)
    body = write_payload(workdir / "form.txt", records, form=True, max_bytes=FORM_BODY_BYTES)
    load = run_load(url, land_payload(url, body, "application/x-www-form-urlencoded"))
    return {
        "scenario": "form_body",
        "database": database,
        "records": load["result"]["rows_in"],
        "payload_mb": body.size / 1e6,
        "seconds": load["seconds"],
        "peak_rss_mb": load["peak_rss_mb"],
        "peak_rss_limit_mb": FORM_PEAK_RSS_LIMIT_MB,
        "load_avg_1m": os.getloadavg()[0],
        "counts": load["result"],
    }


def bench_empty_records(database: str, url: str, workdir: Path) -> dict[str, Any]:
    """Load ``EMPTY_RECORDS`` empty records: the reject rows they make, and the time."""
    body = write_payload(workdir / "empty.json", ({} for _ in range(EMPTY_RECORDS)))
    load = run_load(url, land_payload(url, body, "application/json"))
    engine = create_db_engine(url)
    with engine.connect() as conn:
        reject_rows = conn.execute(text("SELECT COUNT(*) FROM dial_status_rejects")).scalar_one()
    engine.dispose()
    return {
        "scenario": "empty_records",
        "database": database,
        "records": EMPTY_RECORDS,
        "payload_mb": body.size / 1e6,
        "seconds": load["seconds"],
        "reject_rows": reject_rows,
        "peak_rss_mb": load["peak_rss_mb"],
        "load_avg_1m": os.getloadavg()[0],
        "counts": load["result"],
    }


@contextmanager
def scratch_database(
    database: str, admin: Engine, pg_server: str, workdir: Path, label: str
) -> Iterator[str]:
    """A new empty database of the kind, as a URL (a PostgreSQL one is dropped afterwards)."""
    if database != "postgresql":
        yield f"sqlite:///{workdir / f'bench-{label}.db'}"
        return
    name = f"bench_load_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(to_sqlalchemy_url(pg_server)).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


Scenario = Callable[..., Any]


def scaling(
    databases: list[str], sizes: list[int], run: Callable[[str, str, Scenario, Any], dict[str, Any]]
) -> list[dict[str, Any]]:
    """The scaling scenarios (see the module docstring), printed as they finish, with a verdict."""
    results: list[dict[str, Any]] = []
    print(
        f"{'scenario':<15}{'database':<11}{'records':>9}{'MB':>7}{'seconds':>9}"
        f"{'ms/1k rec':>11}{'peak RSS MB':>13}"
    )
    for database in databases:
        own = [run(database, f"own-{count}", bench_own_fields, count) for count in sizes]
        form = run(database, "form", bench_form_body, None)
        empty = run(database, "empty", bench_empty_records, None)
        for row in (*own, form, empty):
            per_1k = f"{row['ms_per_1k_records']:.0f}" if "ms_per_1k_records" in row else "-"
            print(
                f"{row['scenario']:<15}{row['database']:<11}{row['records']:>9}{row['payload_mb']:>7.0f}"
                f"{row['seconds']:>9.2f}{per_1k:>11}{row['peak_rss_mb']:>13.0f}",
                flush=True,
            )
        growth = own[-1]["ms_per_1k_records"] / own[0]["ms_per_1k_records"]
        linear = growth <= LINEAR_TOLERANCE
        under = form["peak_rss_mb"] < FORM_PEAK_RSS_LIMIT_MB
        print(
            f"  {database}: time per record x{growth:.2f} from {sizes[0]} to {sizes[-1]} records "
            f"({'linear' if linear else 'NOT LINEAR'}, tolerance x{LINEAR_TOLERANCE}); form body peak RSS "
            f"{form['peak_rss_mb']:.0f} MB ({'under' if under else 'OVER'} {FORM_PEAK_RSS_LIMIT_MB} MB); "
            f"{EMPTY_RECORDS} empty records made {empty['reject_rows']} reject row(s)"
        )
        verdict = {
            "own_fields_growth": growth,
            "linear": linear,
            "form_under_limit": under,
            "empty_records_reject_rows": empty["reject_rows"],
        }
        results.extend([*own, form, empty, {"scenario": "verdict", "database": database, **verdict}])
    return results


def main() -> None:
    global SETTLE_SECONDS  # one setting of the run, read by every timed load
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument("--scaling", action="store_true", help="run the scaling scenarios instead")
    parser.add_argument("--scaling-sizes", default="1000,10000,100000")
    parser.add_argument(
        "--large-records",
        type=int,
        default=LARGE_RECORDS,
        help="records of --scaling's large loads on PostgreSQL (0: skip them; 30-40 minutes)",
    )
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs per scenario (their median)")
    parser.add_argument(
        "--settle", type=float, default=SETTLE_SECONDS, help="seconds a load waits for a quiet machine"
    )
    parser.add_argument("--peer", action="store_true", help="this load against dlt's (make bench-peer)")
    parser.add_argument("--breakdown", action="store_true", help="CPU per 100k records of each step")
    parser.add_argument(
        "--pseudonyms",
        action="store_true",
        help="first loads with and without pseudonyms, interleaved, and the E.164 + HMAC cost per 100k",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --pseudonyms (default 3)")
    parser.add_argument("--child", nargs=2, metavar=("URL", "PAYLOAD_ID"), help=argparse.SUPPRESS)
    parser.add_argument("--child-without-pseudonyms", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-peer", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The loads need a pseudonym key; a benchmark's own, unless one is set (children inherit it).
    os.environ.setdefault("CLOUDAGENT_PSEUDONYM_KEY", "benchmark-pseudonym-key-0123456789")
    if args.child:
        child_load(args.child[0], int(args.child[1]))
        return
    if args.child_without_pseudonyms:
        child_load(args.child_without_pseudonyms[0], int(args.child_without_pseudonyms[1]), pseudonyms=False)
        return
    SETTLE_SECONDS = args.settle
    if args.child_peer:
        child_peer(*args.child_peer)
        return

    pg_server = os.environ.get("CLOUDAGENT_BENCH_PG_URL", DEFAULT_PG_URL)
    admin = create_engine(to_sqlalchemy_url(pg_server), isolation_level="AUTOCOMMIT")
    if args.pseudonyms:
        pseudonym_cost()
        with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
            for database in args.databases.split(","):
                for size in map(int, args.sizes.split(",")):
                    pseudonym_overhead(database, admin, pg_server, Path(tmp), size, args.rounds)
        admin.dispose()
        return
    if args.breakdown:
        for name, seconds in breakdown(pg_server, admin).items():
            print(f"{name:<40}{seconds:>6.2f} CPU-s per 100k records")
        admin.dispose()
        return
    databases = args.databases.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        workdir = Path(tmp)

        def run(database: str, label: str, scenario: Scenario, option: Any) -> Any:
            with scratch_database(database, admin, pg_server, workdir, label) as url:
                options = () if option is None else (option,)
                return scenario(database, url, *options, workdir)

        if args.peer:
            peer_rows = []
            for count in (int(size) for size in args.sizes.split(",")):
                peer_rows.append(run("postgresql", f"peer-{count}", bench_peer, count))
                print_peer_row(peer_rows[-1])
            admin.dispose()
            record_peer(peer_rows)
            print(f"\nwritten to {PEER_RESULTS} (and the peer's figures to {RESULTS})")
            return
        if args.scaling:
            results = scaling(databases, [int(size) for size in args.scaling_sizes.split(",")], run)
            if args.large_records and "postgresql" in databases:
                for row in run("postgresql", "large", bench, args.large_records):
                    results.append({**row, "scenario": f"large_{row['scenario']}"})
                    print_row(results[-1])
            target = SCALING_RESULTS
        else:
            results, target = [], RESULTS
            for database in databases:
                for count in (int(size) for size in args.sizes.split(",")):
                    runs = [run(database, f"{count}-{index}", bench, count) for index in range(args.repeats)]
                    for row in repeated(runs):
                        results.append(row)
                        print_row(row)
    admin.dispose()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        json.dumps({"measured_at": datetime.now(UTC).isoformat(), "results": results}, indent=2)
    )
    print(f"\nwritten to {target}")


def print_row(row: dict[str, Any]) -> None:
    header = (
        f"{'database':<11}{'scenario':<24}{'records':>9}{'seconds':>8}{'rows/s':>8}{'ref PK':>8}"
        f"{'ratio':>6}{'ref same shape':>15}{'ratio':>6}{'binary':>7}{'ratio':>6}{'RSS MB':>7}"
        f"{'CPU/100k cl+srv':>16}{'load':>5}"
        f"{'runs':>5}  (medians; load: the 1-min average, greatest of the runs)"
    )
    if not getattr(print_row, "printed", False):
        print(header)
        print_row.printed = True  # type: ignore[attr-defined]
    same_shape = row.get("reference_all_indexes_rows_per_s")
    binary = row.get("reference_all_indexes_binary_rows_per_s")
    binary_ratio = row.get("ratio_to_same_shape_binary")
    cpu = f"{row['client_cpu_s_per_100k']:.2f}+{row['server_cpu_s_per_100k']:.2f}"
    runs = row.get("runs", 1)
    flags = (
        ""
        if row["comparable"]
        else f"  NOT COMPARABLE ({row.get('not_comparable_runs', 1)} run(s) began at load "
        f"> {COMPARABLE_LOAD_AVERAGE})"
    )
    if not row.get("same_rows_every_run", True):
        flags += "  RUNS STORED DIFFERENT ROWS"
    print(
        f"{row['database']:<11}{row['scenario']:<24}{row['records']:>9}{row['seconds']:>8.1f}"
        f"{row['rows_per_s']:>8.0f}{row['reference_pk_rows_per_s']:>8.0f}{row['ratio']:>6.2f}"
        f"{(f'{same_shape:.0f}' if same_shape else '-'):>15}{row['ratio_to_same_shape']:>6.2f}"
        f"{(f'{binary:.0f}' if binary else '-'):>7}{(f'{binary_ratio:.2f}' if binary_ratio else '-'):>6}"
        f"{row['peak_rss_mb']:>7.0f}{cpu:>16}{row['load_avg_1m']:>5.1f}{runs:>5}{flags}",
        flush=True,
    )


if __name__ == "__main__":
    main()
