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
- :func:`merge_payload` works inside its caller's transaction: the pipeline commits the merged rows,
  the payload's ``load_runs`` row and landing's record of the outcome together (a failure half-way
  leaves nothing behind, and the load can simply be run again); a failed load is recorded by
  :func:`record_failed_load` in a transaction of its own.

Counts of a load (``load_runs``): per distinct key of the payload, ``inserted`` (new key), ``updated``
(existing key this load changed) or ``unchanged``; ``duplicates`` = valid records beyond one per key;
``rows_in = inserted + updated + unchanged + duplicates + rejected``.

How it is fast: the payload is parsed as a stream in batches (:mod:`cloudagent_etl.normalize`) while a
worker thread merges the previous batch, so client-side parsing and the server-side merge overlap; the
producer thread also does each batch's client-side staging work (:func:`prepare_batch`: the database's
staged form, e.g. binary ``COPY`` data), so the merge thread only talks to the database. How
a batch is staged and merged is the database's (:meth:`Database.warehouse_merge
<cloudagent_etl.databases.Database.warehouse_merge>`, described by :data:`MERGE_SPEC`); a first load of
new keys writes ``dial_status`` alone (on PostgreSQL by a ``COPY`` straight into it). The producer takes
the load's locks (account and campaign) before it stages the first batch that needs them, so that the
database knows, while staging, which keys cannot exist yet.

Batch boundaries are visible in stored rows: a key with two versions in one batch is inserted once (the
older version goes to the superseded table), while the same two versions in two batches are an insert
and an update (``previous_load_run_id`` then names this very load). The batch size is therefore part of
what a load stores, and is kept at :data:`DEFAULT_BATCH_SIZE` for every batch.

Where the time goes, and the alternatives measured and not adopted: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import gc
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import IO, Any, Protocol

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, Engine, bindparam, insert, select, update

from cloudagent_etl.databases import MergeSpec, database_for
from cloudagent_etl.normalize import (
    DEFAULT_BATCH_SIZE,
    VALUE_COLUMNS,
    NormalizedBatch,
    SecretValues,
    normalize_payload,
)
from cloudagent_etl.personal_data.phones import DEFAULT_PHONE_REGION, PseudonymKey
from cloudagent_etl.settings import LoadSettings
from cloudagent_etl.warehouse.tables import (
    LINEAGE_COLUMNS,
    VERSION_COLUMN_KINDS,
    WAREHOUSE_KEY,
    dial_status_rejects,
    load_runs,
)
from cloudagent_etl.warehouse.tables import (
    suppressed_pseudonyms as suppressed_pseudonyms_table,
)

#: What the merge writes, for the database module that writes it. A load holds the lock of its account
#: and campaign: no other load adds a key of theirs between lookup and insert.
MERGE_SPEC = MergeSpec(
    current="dial_status",
    superseded="dial_status_superseded",
    key=WAREHOUSE_KEY,
    version="updated_at",
    row_columns=tuple(VERSION_COLUMN_KINDS),
    value_columns=VALUE_COLUMNS,
    lineage_columns=LINEAGE_COLUMNS,
    column_kinds=VERSION_COLUMN_KINDS,
    lock_columns=("account", "campaign_name"),
    stage="dial_status_stage",
)
#: Distinct rejects of one payload remembered to count identical ones (16-byte digests: ~15 MB).
MAX_TRACKED_REJECTS = 100_000
#: Longest error text recorded for a failed load.
MAX_ERROR_CHARS = 2000


@dataclass
class LoadCounts:
    """What loads did: one payload's load, or added up over payloads (a request, a cell of the page).

    ``payloads`` counts loads of payloads, ``failed_payloads`` those that failed; the record counts are
    those of the loads that succeeded, as in ``load_runs``.
    """

    payloads: int = 0
    failed_payloads: int = 0
    rows_in: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    rejected: int = 0
    erased: int = 0
    seconds: float = 0.0
    error: str | None = None
    last_loaded_at: datetime | None = None

    def __add__(self, other: LoadCounts) -> LoadCounts:
        summed = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name not in ("error", "last_loaded_at")
        }
        last = [moment for moment in (self.last_loaded_at, other.last_loaded_at) if moment is not None]
        error = "; ".join(e for e in (self.error, other.error) if e) or None
        return LoadCounts(**summed, error=error, last_loaded_at=max(last) if last else None)

    @property
    def loads(self) -> int:
        """Loads that succeeded."""
        return self.payloads - self.failed_payloads


class PayloadToLoad(Protocol):
    """What the load needs to know of a landed payload besides its bytes (landing's ``LandedPayload``)."""

    @property
    def payload_id(self) -> int: ...
    @property
    def account(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def timezone(self) -> str: ...
    @property
    def campaign_name(self) -> str: ...


@dataclass(frozen=True)
class StagedBatch:
    """A normalized batch made ready to merge, in the producer thread: no Python work is left to the merge.

    ``staged`` is the database's staged form of the rows (:meth:`WarehouseMerge.stage`).
    """

    rows: pa.Table
    rejects: pd.DataFrame
    records_in: int
    erased: int
    latest: int
    staged: Any


def prepare_batch(
    batch: NormalizedBatch,
    stage: Callable[[pa.Table, np.ndarray], Any],
    account: str,
    lock: Callable[[pa.Table], None] | None = None,
) -> StagedBatch:
    """The client-side work of merging ``batch``: the rows under ``account`` and the database's staged form
    of them (``stage``: :meth:`WarehouseMerge.stage`, given normalize's key hashes: keys within one
    account), after ``lock`` took the locks of the rows' lock values the load does not hold yet."""
    if not batch.rows.num_rows:
        return StagedBatch(batch.rows, batch.rejects, batch.records_in, batch.erased, 0, None)
    rows = batch.rows.append_column(
        "account", pa.repeat(pa.scalar(account, pa.string()), batch.rows.num_rows)
    )
    if lock is not None:
        lock(rows)
    latest = int(pc.sum(rows.column("is_latest")).as_py() or 0)
    staged = stage(rows, batch.key_hashes)
    return StagedBatch(rows, batch.rejects, batch.records_in, batch.erased, latest, staged)


@dataclass
class _Merger:
    """Merges batches of one payload into the warehouse, on ``conn``, inside the caller's transaction:
    the database merges the rows, this keeps the counts and writes the rejects."""

    conn: Connection
    lineage: dict[str, Any]
    inserted: int = 0
    updated: int = 0
    rejected: int = 0
    erased: int = 0
    records_in: int = 0
    #: Digest of (reason, raw record) -> position of the reject row that stands for it.
    reject_rows: dict[bytes, int] = field(default_factory=dict)
    #: Position of a tracked reject row -> identical rejects so far, and as last written.
    occurrences: dict[int, int] = field(default_factory=dict)
    written_occurrences: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        database = database_for(self.conn)
        self.merge_rows = database.warehouse_merge(self.conn, MERGE_SPEC, self.lineage)
        self.insert_rejects = database.insert_ignoring_conflicts(
            dial_status_rejects, index_elements=["payload_id", "position"]
        )

    def merge(self, batch: StagedBatch) -> None:
        self.records_in += batch.records_in
        self.rejected += len(batch.rejects) + batch.erased
        self.erased += batch.erased
        if not batch.rejects.empty:
            self._reject(batch.rejects)
        if not batch.rows.num_rows:
            return
        counts = self.merge_rows.merge(batch.rows, batch.staged, batch.latest)
        self.inserted += counts.inserted
        self.updated += counts.updated

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
                "account": self.lineage["account"],
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
        self.conn.execute(self.insert_rejects, rows)

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

    def finish(self) -> LoadCounts:
        self._count_later_identical_rejects()
        distinct = self.merge_rows.distinct_keys()
        self.merge_rows.close()
        return LoadCounts(
            payloads=1,
            rows_in=self.records_in,
            inserted=self.inserted,
            updated=self.updated,
            unchanged=distinct - self.inserted - self.updated,
            rejected=self.rejected,
            erased=self.erased,
            duplicates=self.records_in - self.rejected - distinct,
        )


def merge_batches(
    conn: Connection, batches: Iterable[NormalizedBatch], lineage: dict[str, Any]
) -> LoadCounts:
    """Merge ``batches`` (one payload) inside ``conn``'s transaction; parsing overlaps the merge.

    ``lineage`` holds ``account``, ``request_id``, ``payload_id``, ``load_run_id`` and ``loaded_at`` (aware
    UTC); ``account`` is written into every row and reject.
    The worker thread is the only user of ``conn`` until every batch is merged.
    """
    merger = _Merger(conn, lineage)
    merge_rows = merger.merge_rows
    pending: Future[None] | None = None

    def lock(rows: pa.Table) -> None:
        """Take the locks the rows need, on the connection: after the merge in flight (a new lock value
        is rare after the first batch: one payload is one account's campaign)."""
        nonlocal pending
        if unlocked := merge_rows.unlocked(rows):
            if pending is not None:
                pending.result()
                pending = None
            merge_rows.lock(unlocked)

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge") as pool:
            for batch in batches:
                staged = prepare_batch(batch, merge_rows.stage, lineage["account"], lock)
                if pending is not None:
                    pending.result()
                pending = pool.submit(merger.merge, staged)
            if pending is not None:
                pending.result()
        return merger.finish()
    finally:
        merge_rows.key_hashes.close()  # its temporary files, also when the load fails


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
def merge_payload(
    conn: Connection,
    payload: PayloadToLoad,
    body: IO[bytes],
    *,
    started: datetime,
    secrets: SecretValues,
    settings: LoadSettings,
    pseudonym_key: PseudonymKey,
    phone_region: str = DEFAULT_PHONE_REGION,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> LoadCounts:
    """Normalize and merge one payload's ``body`` inside ``conn``'s transaction, with its ``load_runs`` row.

    Times are read in the payload's export time zone and must lie within ``settings``' bounds around
    ``started`` (the load's start, aware UTC); only records of the export's campaign are merged;
    ``secrets`` are redacted wherever they appear (values learned from the payload are added to it).
    Every row gets its number's E.164 form and pseudonym under ``pseudonym_key``; the records of people
    erased on request are kept out, counted in ``erased``. The load holds the personal-data lock (shared)
    from before it reads the suppression list until it commits: an erasure waits for it, and it for an
    erasure. Raises ``PayloadError`` when the body cannot be parsed.
    """
    clock = time.perf_counter()
    load_run_id = _start_run(conn, payload, started)
    database_for(conn).hold_personal_data_lock(conn, exclusive=False)
    suppressed = suppressed_pseudonyms(conn)
    with _gc_paused():
        batches = normalize_payload(
            body,
            payload.content_type,
            timezone=payload.timezone,
            campaign=payload.campaign_name,
            secrets=secrets,
            time_bounds=settings.time_bounds(started),
            batch_size=batch_size,
            pseudonym_key=pseudonym_key,
            phone_region=phone_region,
            suppressed=suppressed,
        )
        lineage = {
            "account": payload.account,
            "request_id": payload.request_id,
            "payload_id": payload.payload_id,
            "load_run_id": load_run_id,
            "loaded_at": started,
        }
        counts = merge_batches(conn, batches, lineage)
    counts.seconds = time.perf_counter() - clock
    counts.last_loaded_at = _finish_run(conn, load_run_id, counts, "loaded")
    return counts


def renumber_rejects(conn: Connection, payload_id: int, removed_positions: list[int]) -> None:
    """The payload's body lost the records at ``removed_positions``: its rejects take their new positions
    (each kept record moves up by the removed ones before it), so a reload finds them where they are."""
    if not removed_positions:
        return
    removed = np.asarray(sorted(removed_positions))
    positions = sorted(
        conn.scalars(
            select(dial_status_rejects.c.position).where(dial_status_rejects.c.payload_id == payload_id)
        )
    )
    for position in positions:  # ascending: each moves into a place already left
        shift = int(np.searchsorted(removed, position))
        if shift:
            conn.execute(
                update(dial_status_rejects)
                .where(
                    dial_status_rejects.c.payload_id == payload_id, dial_status_rejects.c.position == position
                )
                .values(position=position - shift)
            )


def suppressed_pseudonyms(conn: Connection) -> frozenset[str]:
    """Pseudonyms of the people erased on request (read under the personal-data lock)."""
    return frozenset(conn.scalars(select(suppressed_pseudonyms_table.c.phone_pseudonym)))


def record_failed_load(
    engine: Engine, payload: PayloadToLoad, error: str, *, started: datetime, seconds: float
) -> LoadCounts:
    """Record a ``failed`` load run of ``payload`` (its own transaction, the load's having rolled back)."""
    if len(error) > MAX_ERROR_CHARS:
        error = error[:MAX_ERROR_CHARS] + f"... [{len(error) - MAX_ERROR_CHARS} more chars]"
    counts = LoadCounts(payloads=1, failed_payloads=1, error=error, seconds=seconds)
    with engine.begin() as conn:
        _finish_run(conn, _start_run(conn, payload, started), counts, "failed")
    return counts


def _start_run(conn: Connection, payload: PayloadToLoad, started: datetime) -> int:
    counts = dict.fromkeys(("rows_in", "inserted", "updated", "unchanged", "duplicates", "rejected"), 0)
    values = {
        "account": payload.account,
        "request_id": payload.request_id,
        "payload_id": payload.payload_id,
        "started_at": started,
        **counts,
        "status": "loaded",
        "finished_at": started,
        "seconds": 0.0,
    }
    return int(conn.execute(insert(load_runs).values(values).returning(load_runs.c.load_run_id)).scalar_one())


def _finish_run(conn: Connection, load_run_id: int, counts: LoadCounts, status: str) -> datetime:
    finished = datetime.now(UTC)
    conn.execute(
        update(load_runs)
        .where(load_runs.c.load_run_id == load_run_id)
        .values(
            status=status,
            finished_at=finished,
            rows_in=counts.rows_in,
            inserted=counts.inserted,
            updated=counts.updated,
            unchanged=counts.unchanged,
            duplicates=counts.duplicates,
            rejected=counts.rejected,
            erased=counts.erased,
            seconds=counts.seconds,
            error=counts.error,
        )
    )
    return finished
