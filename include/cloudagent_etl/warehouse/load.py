"""Merge normalized dial-status rows into the warehouse: idempotent, newest wins, every version kept.

Semantics:

- ``dial_status`` holds one row per (``campaign_name``, ``record_key``). An incoming version replaces
  the stored one only when its ``updated_at`` is newer **or equal** and some value differs (lineage
  columns do not count); an older version never overwrites a newer one. For equal ``updated_at`` with
  different values, the later load (and, inside a payload, the later position) wins.
- ``dial_status_history`` (a view) holds every distinct version, keyed by (``campaign_name``,
  ``record_key``, ``updated_at``): a version is identified by its ``updated_at``. If the same
  ``updated_at`` arrives again with different values, the version takes the values received last, so
  history and the current row never disagree about a version; older versions are recorded even when
  they do not become current. Each version is stored once: the current one in ``dial_status``, every
  other one in ``dial_status_superseded`` (all older than their key's current row). A trigger of
  migration 0002 moves a row that a newer version replaces into ``dial_status_superseded``; the load
  upserts there the versions that did not become current.
- Rejected records go to ``dial_status_rejects`` once per (payload, position) (a reload adds nothing).
  Identical rejects of one payload (same reason, same raw record: 5M empty records, say) are one row
  whose ``occurrences`` counts them; the first :data:`MAX_TRACKED_REJECTS` distinct rejects of a payload
  are tracked for this, each later distinct one is a row of its own.
- All effects of one payload (current rows, history, rejects, its ``load_runs`` row, the payload's
  ``parse_state`` and the request's ``loaded`` state) commit in one transaction: a failure half-way
  leaves nothing behind, and the load can simply be run again.
- A payload that cannot be parsed at all (:class:`PayloadError`) rolls back whatever it merged, then
  records a ``failed`` ``load_runs`` row with the reason and ``parse_state = 'failed'``; the request
  becomes ``failed`` only when none of its payloads loaded. Nothing raises for a bad payload. Any other
  error (the database, a bug) also rolls back and records a ``failed`` ``load_runs`` row, then raises:
  the payload stays ``pending`` and the request ``received``, so a retry loads it.
- Every text that leaves the load (error, log) is redacted with the configured apiKey and the values
  found under API-key fields of the payload (:class:`~cloudagent_etl.normalize.SecretValues`).

Counts of a load (``load_runs``): per distinct key of the payload, ``inserted`` (new key), ``updated``
(existing key this load changed) or ``unchanged``; ``duplicates`` = valid records beyond one per key;
``rows_in = inserted + updated + unchanged + duplicates + rejected``.

How it is fast: the payload is parsed as a stream in batches (:mod:`cloudagent_etl.normalize`) while a
worker thread merges the previous batch, so client-side parsing and the server-side merge overlap; the
producer thread also builds each batch's stage CSV and key hashes (:func:`prepare_batch`), so the merge
thread only talks to the database. Per batch, rows go to a TEMP staging table, emptied by ``TRUNCATE``
(PostgreSQL: ``COPY`` of CSV written by pyarrow, naive UTC times with the session in UTC; SQLite:
``executemany``). On PostgreSQL one statement then looks each staged latest version up once (a lateral
index probe) and sorts it: a new key is inserted (a plain insert ordered by key; the load holds an
advisory lock on its campaign, so no other load adds the key meanwhile), a changed one is updated
through the row found, an identical one is left alone, an older one goes with the batch's earlier
versions into ``dial_status_superseded`` (a second statement, only when there are any). On SQLite one
upsert into ``dial_status`` (``previous_load_run_id``, written by it, tells inserted / updated /
rewritten apart in ``RETURNING``) and, only when some staged version did not become current, one upsert
into ``dial_status_superseded``. A first load of new keys writes ``dial_status`` alone.

Where the time goes, and the alternatives measured and not adopted: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import gc
import hashlib
import io
import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import Connection, Engine, bindparam, insert, text, update
from sqlalchemy.dialects import postgresql, sqlite

from cloudagent_etl import landing
from cloudagent_etl.errors import PayloadError
from cloudagent_etl.normalize import (
    DEFAULT_BATCH_SIZE,
    INTEGER_COLUMNS,
    KEY_COLUMNS,
    ROW_COLUMNS,
    TIME_COLUMNS,
    VALUE_COLUMNS,
    NormalizedBatch,
    SecretValues,
    normalize_payload,
)
from cloudagent_etl.settings import LoadSettings
from cloudagent_etl.warehouse.tables import LINEAGE_COLUMNS, dial_status_rejects, load_runs

log = logging.getLogger(__name__)

STAGE_TABLE = "dial_status_stage"
STAGE_COLUMNS = (*ROW_COLUMNS, "position", "is_latest")
#: How SQLAlchemy stores a UtcDateTime on SQLite; staged times must compare equal to stored ones as text.
SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
#: PostgreSQL work_mem of a load transaction: a 50k-row batch sorts in ~15 MB.
SORT_MEMORY = "64MB"
#: Distinct rejects of one payload remembered to count identical ones (16-byte digests: ~15 MB).
MAX_TRACKED_REJECTS = 100_000
#: Longest error text recorded for a failed load.
MAX_ERROR_CHARS = 2000


@dataclass
class LoadResult:
    """What a load did (summed over payloads for :func:`load_request`)."""

    rows_in: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    duplicates: int = 0
    payloads: int = 0
    failed_payloads: int = 0
    seconds: float = 0.0
    error: str | None = None

    def add(self, other: LoadResult) -> None:
        for name in ("rows_in", "inserted", "updated", "unchanged", "rejected", "duplicates", "payloads"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failed_payloads += other.failed_payloads
        self.seconds += other.seconds
        self.error = "; ".join(e for e in (self.error, other.error) if e) or None


# ---------------------------------------------------------------------------------------------- SQL
def _stage_ddl(dialect: str) -> str:
    postgres = dialect == "postgresql"
    types = {column: "TEXT" for column in STAGE_COLUMNS}
    types.update(dict.fromkeys((*INTEGER_COLUMNS, "position"), "BIGINT"))
    types.update(dict.fromkeys(TIME_COLUMNS, "TIMESTAMPTZ" if postgres else "TEXT"))
    types["extra"] = "JSONB" if postgres else "TEXT"
    types["is_latest"] = "BOOLEAN" if postgres else "INTEGER"
    columns = ", ".join(f"{column} {types[column]}" for column in STAGE_COLUMNS)
    return f"CREATE TEMP TABLE {STAGE_TABLE} ({columns})" + (" ON COMMIT DROP" if postgres else "")


def _upsert_sql(
    dialect: str, target: str, key: tuple[str, ...], where: str, *, guard: str = "", extra_set: str = ""
) -> str:
    """INSERT ... SELECT from the stage ... ON CONFLICT (key) DO UPDATE ... WHERE some value differs."""
    distinct = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    columns = (*ROW_COLUMNS, *LINEAGE_COLUMNS)
    values = ", ".join((*ROW_COLUMNS, *(f":{name}" for name in LINEAGE_COLUMNS)))
    assignments = ", ".join(f"{column} = excluded.{column}" for column in columns if column not in key)
    differs = " OR ".join(f"t.{column} {distinct} excluded.{column}" for column in VALUE_COLUMNS)
    return (
        f"INSERT INTO {target} AS t ({', '.join(columns)}) "
        f"SELECT {values} FROM {STAGE_TABLE} WHERE {where} ORDER BY {', '.join(key)} "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {assignments}{extra_set} "
        f"WHERE {guard}({differs})"
    )


_SAME_KEY = f"d.campaign_name = {STAGE_TABLE}.campaign_name AND d.record_key = {STAGE_TABLE}.record_key"


def _superseded_sql(dialect: str, *, all_latest_inserted: bool) -> str:
    """Staged versions that did not become current (after the upsert), upserted into superseded.

    Those are the batch's earlier versions of a key and a latest version older than the current row.
    When every latest version was a new key, only the earlier versions qualify (no lookup needed).
    """
    older = (
        ""
        if all_latest_inserted
        else (f" OR updated_at < (SELECT d.updated_at FROM dial_status d WHERE {_SAME_KEY})")
    )
    return _upsert_sql(
        dialect,
        "dial_status_superseded",
        ("campaign_name", "record_key", "updated_at"),
        f"NOT is_latest{older}",
    )


def _current_sql(dialect: str) -> str:
    latest = "is_latest" if dialect == "postgresql" else "is_latest = 1"
    upsert = _upsert_sql(
        dialect,
        "dial_status",
        ("campaign_name", "record_key"),
        latest,
        guard="excluded.updated_at >= t.updated_at AND ",
        extra_set=", previous_load_run_id = t.load_run_id",
    )
    if dialect == "postgresql":
        return (
            f"WITH written AS ({upsert} RETURNING t.previous_load_run_id) "
            "SELECT COUNT(*) FILTER (WHERE previous_load_run_id IS NULL), "
            "COUNT(*) FILTER (WHERE previous_load_run_id <> :load_run_id) FROM written"
        )
    return f"{upsert} RETURNING previous_load_run_id"


def _pg_merge_sql() -> str:
    """PostgreSQL: one lookup per staged latest version sorts it into new / unchanged / older / changed.

    New keys get a plain insert, ordered by key (the load holds its campaign's lock: no other load adds
    keys meanwhile). Keys that exist and changed (same or newer ``updated_at``, some value differs) are
    updated through the row the lookup found (a TID scan: no second lookup). The statement returns the
    inserted count, the updated rows (all, and those not written earlier by this load) and the positions
    of the versions older than their current row (they go to ``dial_status_superseded``).

    The lookup is a lateral subquery with ``LIMIT 1``: always an index probe per staged row, whatever the
    planner estimates for the stage (a hash join would scan all of ``dial_status`` for every batch).
    """
    key = "campaign_name, record_key"
    columns = (*ROW_COLUMNS, *LINEAGE_COLUMNS)
    values = ", ".join((*ROW_COLUMNS, *(f":{name}" for name in LINEAGE_COLUMNS)))
    differs = " OR ".join(f"d.{column} IS DISTINCT FROM s.{column}" for column in VALUE_COLUMNS)
    selected = ", ".join(f"s.{column}" for column in (*ROW_COLUMNS, "position"))
    assignments = ", ".join(
        [
            *(f"{column} = l.{column}" for column in ROW_COLUMNS if column not in KEY_COLUMNS),
            *(f"{column} = :{column}" for column in LINEAGE_COLUMNS),
            "previous_load_run_id = t.load_run_id",
        ]
    )
    return (
        f"WITH looked AS MATERIALIZED ("
        f"SELECT {selected}, d.updated_at AS current_updated_at, d.ctid AS current_row, "
        f"d.record_key IS NULL AS new, "
        f"d.record_key IS NOT NULL AND s.updated_at >= d.updated_at AND ({differs}) AS changed "
        f"FROM {STAGE_TABLE} s LEFT JOIN LATERAL (SELECT *, ctid FROM dial_status d "
        f"WHERE d.campaign_name = s.campaign_name AND d.record_key = s.record_key LIMIT 1) d ON true "
        f"WHERE s.is_latest), "
        f"inserted AS (INSERT INTO dial_status ({', '.join(columns)}) "
        f"SELECT {values} FROM looked WHERE new ORDER BY {key} RETURNING 1), "
        f"updated AS (UPDATE dial_status t SET {assignments} FROM looked l "
        f"WHERE t.ctid = ANY(ARRAY(SELECT current_row FROM looked WHERE changed)) AND l.changed "
        f"AND t.campaign_name = l.campaign_name AND t.record_key = l.record_key "
        f"RETURNING t.previous_load_run_id) "
        f"SELECT (SELECT COUNT(*) FROM inserted), "
        f"(SELECT COUNT(*) FROM updated), "
        f"(SELECT COUNT(*) FROM updated WHERE previous_load_run_id <> :load_run_id), "
        f"(SELECT COUNT(*) FROM looked WHERE changed), "
        f"(SELECT array_agg(position) FROM looked WHERE NOT new AND updated_at < current_updated_at)"
    )


def _pg_superseded_sql() -> str:
    """PostgreSQL: the batch's earlier versions and the latest ones older than their current row."""
    return _upsert_sql(
        "postgresql",
        "dial_status_superseded",
        ("campaign_name", "record_key", "updated_at"),
        "NOT is_latest OR position = ANY(:older)",
    )


# ---------------------------------------------------------------------------------------------- staging
def _naive_utc(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(**{column: rows[column].dt.tz_convert(None) for column in TIME_COLUMNS})


def _stage_csv(rows: pd.DataFrame) -> bytes:
    """PostgreSQL: the rows as the stage's CSV (written by pyarrow; naive UTC times, session zone UTC)."""
    table = pa.Table.from_pandas(_naive_utc(rows)[list(STAGE_COLUMNS)], preserve_index=False)
    buffer = io.BytesIO()
    pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False))
    return buffer.getvalue()


def _copy_to_stage(conn: Connection, csv: bytes) -> None:
    """PostgreSQL: COPY the CSV of :func:`_stage_csv` into the stage."""
    driver_connection: Any = conn.connection.driver_connection
    with driver_connection.cursor() as cursor:
        copy_sql = f"COPY {STAGE_TABLE} ({', '.join(STAGE_COLUMNS)}) FROM STDIN (FORMAT csv)"
        with cursor.copy(copy_sql) as copy:
            copy.write(csv)


def _insert_to_stage(conn: Connection, rows: pd.DataFrame) -> None:
    """SQLite: executemany into the stage, times in SQLAlchemy's storage format."""
    staged = rows.assign(**{column: rows[column].dt.strftime(SQLITE_TIME_FORMAT) for column in TIME_COLUMNS})
    staged = staged[list(STAGE_COLUMNS)].astype(object)
    records = staged.where(staged.notna(), None).itertuples(index=False, name=None)
    placeholders = ", ".join("?" for _ in STAGE_COLUMNS)
    conn.exec_driver_sql(f"INSERT INTO {STAGE_TABLE} VALUES ({placeholders})", list(records))


# ---------------------------------------------------------------------------------------------- merge
@dataclass(frozen=True)
class StagedBatch:
    """A normalized batch made ready to merge, in the producer thread: no Python work is left to the merge.

    ``stage`` is the CSV of the rows (PostgreSQL) or the rows themselves (SQLite); ``key_hashes`` hash
    each row's key (distinct keys are counted at the end of the payload).
    """

    rows: pd.DataFrame
    rejects: pd.DataFrame
    records_in: int
    latest: int
    key_hashes: np.ndarray | None
    stage: bytes | None


def prepare_batch(batch: NormalizedBatch, dialect: str) -> StagedBatch:
    """The client-side work of merging ``batch``: key hashes and, on PostgreSQL, the stage's CSV."""
    if batch.rows.empty:
        return StagedBatch(batch.rows, batch.rejects, batch.records_in, 0, None, None)
    keys = batch.rows[["campaign_name", "record_key"]]
    hashes = pd.util.hash_pandas_object(keys, index=False).to_numpy()
    latest = int(batch.rows["is_latest"].sum())
    csv = _stage_csv(batch.rows) if dialect == "postgresql" else None
    return StagedBatch(batch.rows, batch.rejects, batch.records_in, latest, hashes, csv)


def campaign_lock_key(campaign: str) -> int:
    """The transaction advisory lock a load of ``campaign`` holds on PostgreSQL (a signed 64-bit key)."""
    digest = hashlib.blake2b(f"cloudagent_etl.dial_status\x00{campaign}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass
class _Merger:
    """Merges batches of one payload into the warehouse, on ``conn``, inside the caller's transaction."""

    conn: Connection
    lineage: dict[str, Any]
    inserted: int = 0
    updated: int = 0
    rejected: int = 0
    records_in: int = 0
    key_hashes: list[np.ndarray] = field(default_factory=list)
    #: Digest of (reason, raw record) -> position of the reject row that stands for it.
    reject_rows: dict[bytes, int] = field(default_factory=dict)
    #: Position of a tracked reject row -> identical rejects so far, and as last written.
    occurrences: dict[int, int] = field(default_factory=dict)
    written_occurrences: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dialect = self.conn.dialect.name
        if self.dialect == "postgresql":
            self.conn.exec_driver_sql("SET LOCAL timezone = 'UTC'")
            # The merge sorts each staged batch by key: in memory, not in temp files.
            self.conn.exec_driver_sql(f"SET LOCAL work_mem = '{SORT_MEMORY}'")
            # Batches of 20k rows never pay back JIT compilation (~1.3 s per statement once the merge's
            # estimate includes the cost of the nested loop it must use: see _merge_postgresql).
            self.conn.exec_driver_sql("SET LOCAL jit = off")
        self.conn.exec_driver_sql(_stage_ddl(self.dialect))
        self.params = {**self.lineage, "loaded_at": _bind_time(self.conn, self.lineage["loaded_at"])}
        self.locked: set[str] = set()
        if self.dialect == "postgresql":
            self.merge_sql = text(_pg_merge_sql())
            self.pg_superseded_sql = text(_pg_superseded_sql())
        else:
            self.current_sql = text(_current_sql(self.dialect))
            self.superseded_sql = {
                inserted: text(_superseded_sql(self.dialect, all_latest_inserted=inserted))
                for inserted in (True, False)
            }

    def merge(self, batch: StagedBatch) -> None:
        self.records_in += batch.records_in
        self.rejected += len(batch.rejects)
        if not batch.rejects.empty:
            self._reject(batch.rejects)
        if batch.rows.empty:
            return
        assert batch.key_hashes is not None
        self.key_hashes.append(batch.key_hashes)
        if self.dialect == "postgresql":
            self._merge_postgresql(batch)
        else:
            self._merge_sqlite(batch)

    def _lock_campaigns(self, rows: pd.DataFrame) -> None:
        """Hold each campaign's advisory lock until commit: no key of it appears between lookup and insert."""
        for campaign in rows["campaign_name"].unique().tolist():
            if campaign not in self.locked:
                self.conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": campaign_lock_key(campaign)}
                )
                self.locked.add(campaign)

    def _merge_postgresql(self, batch: StagedBatch) -> None:
        assert batch.stage is not None
        self._lock_campaigns(batch.rows)
        _copy_to_stage(self.conn, batch.stage)
        # Without nested loops while dial_status_keep_replaced is planned: it joins its transition tables,
        # and a nested-loop plan made (and cached for the session) for a small batch would be quadratic
        # on a big one (20k replaced rows: ~70 s). The merge's lookup is lateral: a nested loop anyway.
        self.conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
        inserted, rewritten, updated, changed, older = self.conn.execute(self.merge_sql, self.params).one()
        self.conn.exec_driver_sql("SET LOCAL enable_nestloop = on")
        if rewritten != changed:  # a row moved under the load (only loads write dial_status: a bug)
            raise RuntimeError(f"dial_status: {changed} changed keys looked up, {rewritten} rows updated")
        self.inserted += inserted
        self.updated += updated
        if older or batch.latest < len(batch.rows):
            self.conn.execute(self.pg_superseded_sql, {**self.params, "older": older or []})
        self.conn.exec_driver_sql(f"TRUNCATE {STAGE_TABLE}")

    def _merge_sqlite(self, batch: StagedBatch) -> None:
        _insert_to_stage(self.conn, batch.rows)
        previous = [row[0] for row in self.conn.execute(self.current_sql, self.params)]
        inserted = sum(run is None for run in previous)
        self.inserted += inserted
        self.updated += sum(run is not None and run != self.lineage["load_run_id"] for run in previous)
        if inserted < batch.latest or batch.latest < len(batch.rows):
            self.conn.execute(self.superseded_sql[inserted == batch.latest], self.params)
        self.conn.exec_driver_sql(f"DELETE FROM {STAGE_TABLE}")

    def _reject(self, rejects: pd.DataFrame) -> None:
        """Store the batch's rejects; one identical to an earlier one of the payload only counts."""
        new: list[tuple[int, str, str]] = []
        for position, reason, raw_record in rejects.itertuples(index=False, name=None):
            digest = hashlib.blake2b(f"{reason}\x00{raw_record}".encode(), digest_size=16).digest()
            first = self.reject_rows.get(digest)
            if first is not None:
                self.occurrences[first] += 1
                continue
            if len(self.reject_rows) < MAX_TRACKED_REJECTS:
                self.reject_rows[digest] = int(position)
                self.occurrences[int(position)] = 1
            new.append((int(position), reason, raw_record))
        if not new:
            return
        rows = [
            {
                "payload_id": self.lineage["payload_id"],
                "position": position,
                "request_id": self.lineage["request_id"],
                "load_run_id": self.lineage["load_run_id"],
                "reason": reason,
                "raw_record": orjson.loads(raw_record),
                "occurrences": self.occurrences.get(position, 1),
                "rejected_at": self.lineage["loaded_at"],
            }
            for position, reason, raw_record in new
        ]
        self.written_occurrences.update((row["position"], row["occurrences"]) for row in rows)
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        statement = dialect_insert(dial_status_rejects).on_conflict_do_nothing(
            index_elements=["payload_id", "position"]
        )
        self.conn.execute(statement, rows)

    def _count_later_identical_rejects(self) -> None:
        """Set ``occurrences`` of reject rows whose identical records came in later batches."""
        changed = [
            {"reject_payload": self.lineage["payload_id"], "reject_position": position, "count": count}
            for position, count in self.occurrences.items()
            if self.written_occurrences.get(position) != count
        ]
        if changed:
            self.conn.execute(
                update(dial_status_rejects)
                .where(
                    dial_status_rejects.c.payload_id == bindparam("reject_payload"),
                    dial_status_rejects.c.position == bindparam("reject_position"),
                )
                .values(occurrences=bindparam("count")),
                changed,
            )

    def finish(self) -> LoadResult:
        self._count_later_identical_rejects()
        if self.dialect == "sqlite":  # PostgreSQL drops it on commit
            self.conn.exec_driver_sql(f"DROP TABLE {STAGE_TABLE}")
        distinct = _distinct_count(self.key_hashes)
        return LoadResult(
            rows_in=self.records_in,
            inserted=self.inserted,
            updated=self.updated,
            unchanged=distinct - self.inserted - self.updated,
            rejected=self.rejected,
            duplicates=self.records_in - self.rejected - distinct,
            payloads=1,
        )


def _distinct_count(hashes: list[np.ndarray]) -> int:
    """Distinct values of the arrays, sorted in place in one copy (8 bytes per row: 80 MB at 10M rows)."""
    if not hashes:
        return 0
    values = np.concatenate(hashes)
    hashes.clear()
    values.sort()
    return int(np.count_nonzero(values[1:] != values[:-1])) + 1


def merge_batches(
    conn: Connection, batches: Iterable[NormalizedBatch], lineage: dict[str, Any]
) -> LoadResult:
    """Merge ``batches`` (one payload) inside ``conn``'s transaction; parsing overlaps the merge.

    ``lineage`` holds ``request_id``, ``payload_id``, ``load_run_id`` and ``loaded_at`` (aware UTC).
    The worker thread is the only user of ``conn`` until every batch is merged.
    """
    merger = _Merger(conn, lineage)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge") as pool:
        pending: Future[None] | None = None
        for batch in batches:
            staged = prepare_batch(batch, merger.dialect)
            if pending is not None:
                pending.result()
            pending = pool.submit(merger.merge, staged)
        if pending is not None:
            pending.result()
    return merger.finish()


def _bind_time(conn: Connection, value: datetime) -> Any:
    """``loaded_at`` as the raw statements bind it: aware on PostgreSQL, SQLAlchemy's text on SQLite."""
    utc = value.astimezone(UTC)
    return utc if conn.dialect.name == "postgresql" else utc.replace(tzinfo=None).strftime(SQLITE_TIME_FORMAT)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: parsing makes millions of short-lived dicts and no cycles (2.5x faster)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ---------------------------------------------------------------------------------------------- loads
def load_payload(
    engine: Engine,
    payload_id: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    secrets: Iterable[str | None] = (),
    settings: LoadSettings | None = None,
) -> LoadResult:
    """Normalize and merge one landed payload in one transaction (see the module docstring).

    Times are read in the time zone recorded on the payload's export request and must lie within
    ``settings``' bounds; only records of the request's campaign are merged. ``secrets`` (the configured
    apiKey) are redacted wherever they appear.
    """
    settings = settings or LoadSettings()
    secret_values = SecretValues(secrets)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    with engine.connect() as conn:
        payload = landing.landed_payload(conn, payload_id)
    run = {"request_id": payload.request_id, "payload_id": payload_id, "started_at": started}
    try:
        with _gc_paused(), engine.connect() as reader, engine.begin() as conn:
            load_run_id = _start_run(conn, run)
            body = landing.open_payload_body(reader, payload_id)
            batches = normalize_payload(
                body,
                payload.content_type,
                timezone=payload.timezone,
                campaign=payload.campaign_name,
                secrets=secret_values,
                time_bounds=settings.time_bounds(started),
                batch_size=batch_size,
            )
            lineage = {"request_id": payload.request_id, "payload_id": payload_id, "load_run_id": load_run_id}
            result = merge_batches(conn, batches, {**lineage, "loaded_at": started})
            result.seconds = time.perf_counter() - clock
            _finish_run(conn, load_run_id, result, "loaded")
            landing.mark_payload_loaded(conn, payload_id)
            landing.mark_loaded(conn, payload.request_id)
    except PayloadError as exc:
        error = secret_values.redact(f"payload {payload_id}: {exc}")
        result = _failed(engine, run, error, clock)
        with engine.begin() as conn:
            landing.mark_payload_failed(conn, payload_id)
    except Exception as exc:
        error = secret_values.redact(f"payload {payload_id}: {type(exc).__name__}: {exc}")
        try:
            _failed(engine, run, error, clock)
        except Exception:  # the database itself is gone: the original error says more
            log.error("could not record the failed load of payload %s", payload_id)
        if _shows_secret(exc, secret_values):
            raise RuntimeError(error[:MAX_ERROR_CHARS]) from None
        raise
    return result


def _shows_secret(exc: BaseException, secrets: SecretValues) -> bool:
    """Whether the message of ``exc`` or of an exception it chains holds one of ``secrets``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if secrets.redact(str(current)) != str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _failed(engine: Engine, run: dict[str, Any], error: str, clock: float) -> LoadResult:
    """Record a ``failed`` load run (its own transaction) and return its result."""
    if len(error) > MAX_ERROR_CHARS:
        error = error[:MAX_ERROR_CHARS] + f"... [{len(error) - MAX_ERROR_CHARS} more chars]"
    result = LoadResult(payloads=1, failed_payloads=1, error=error)
    result.seconds = time.perf_counter() - clock
    with engine.begin() as conn:
        _finish_run(conn, _start_run(conn, run), result, "failed")
    return result


def load_payloads(
    engine: Engine,
    request_id: str,
    *,
    secrets: Iterable[str | None] = (),
    settings: LoadSettings | None = None,
) -> LoadResult:
    """Load every payload landed for the request, oldest first, each in its own transaction.

    The request becomes ``loaded`` with its first good payload; when every payload failed to parse it
    becomes ``failed`` with the reasons (unless it was loaded or expired) and the result carries ``error``.
    A payload that lands while this runs is loaded too: the payloads are listed again after each pass,
    and one stored after the request became ``loaded`` is at worst flagged late by the receiver.
    """
    secrets = tuple(secrets)
    total = LoadResult()
    seen: set[int] = set()
    while True:
        with engine.connect() as conn:
            pending = [p for p in landing.received_payload_ids(conn, request_id) if p not in seen]
        if not pending:
            break
        for payload_id in pending:
            total.add(load_payload(engine, payload_id, secrets=secrets, settings=settings))
            seen.add(payload_id)
    if not seen:
        raise PayloadError(f"no callback payload has landed for request {request_id}")
    if total.failed_payloads == total.payloads:
        landing.mark_load_failed(engine, request_id, total.error or "no payload could be parsed")
    return total


def _start_run(conn: Connection, run: dict[str, Any]) -> int:
    counts = dict.fromkeys(("rows_in", "inserted", "updated", "unchanged", "duplicates", "rejected"), 0)
    values = {**run, **counts, "status": "loaded", "finished_at": run["started_at"], "seconds": 0.0}
    return int(conn.execute(insert(load_runs).values(values).returning(load_runs.c.load_run_id)).scalar_one())


def _finish_run(conn: Connection, load_run_id: int, result: LoadResult, status: str) -> None:
    conn.execute(
        update(load_runs)
        .where(load_runs.c.load_run_id == load_run_id)
        .values(
            status=status,
            finished_at=datetime.now(UTC),
            rows_in=result.rows_in,
            inserted=result.inserted,
            updated=result.updated,
            unchanged=result.unchanged,
            duplicates=result.duplicates,
            rejected=result.rejected,
            seconds=result.seconds,
            error=result.error,
        )
    )
