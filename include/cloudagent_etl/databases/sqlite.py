"""SQLite (a file): the embedded default, for one machine.

What is particular here: one writer at a time for the whole file (a transaction that will write takes
the lock up front with ``BEGIN IMMEDIATE``; no row or advisory locks are needed), WAL mode so that readers
never wait for the writer, times stored as naive UTC text, and a warehouse merge that inserts each batch
into a ``TEMP`` stage with ``executemany`` and upserts from it (see :class:`SQLiteMerge`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Connection, Engine, Integer, Table, create_engine, event, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeEngine

from cloudagent_etl.databases.base import (
    ConnectionParts,
    Database,
    MergeCounts,
    MergeSpec,
    WarehouseMerge,
    upsert_from_stage_sql,
)
from cloudagent_etl.errors import ConfigurationError

#: How SQLAlchemy stores a UtcDateTime here; times bound in raw SQL must compare equal to stored ones.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
#: The same text written by Arrow from microseconds: its ``%S`` writes the seconds with their fraction.
ARROW_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
#: Primary result codes that mean "not now": permission, busy, locked, out of memory, read-only, I/O
#: error, full, cannot open, protocol (lock) error.
UNAVAILABLE_CODES = frozenset({3, 5, 6, 7, 8, 10, 13, 14, 15})

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


def _pragmas(synchronous: str) -> Callable[[Any, Any], None]:
    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets the receiver write while the DAG reads; busy_timeout makes writers queue, not fail.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return set_pragmas


class SQLite(Database):
    name: ClassVar[str] = "sqlite"
    url_schemes: ClassVar[Mapping[str, str]] = {"sqlite://": "sqlite://"}
    connection_types: ClassVar[tuple[str, ...]] = ("sqlite",)
    #: Queueing writers on a lock of the process is fairer and faster than letting them poll SQLite's
    #: busy handler (its back-off sleeps up to 100 ms).
    serializes_writers: ClassVar[bool] = True
    #: Only ``INTEGER PRIMARY KEY`` auto-increments.
    column_type_variants: ClassVar[Mapping[str, TypeEngine[Any]]] = {"big_int_id": Integer()}

    def create_engine(self, url: str, *, durable: bool, serving: bool, **kwargs: Any) -> Engine:
        """WAL mode with ``synchronous=NORMAL`` (a killed process loses nothing, a power cut may lose the
        last commits), or ``FULL`` when ``durable`` (the WAL is synced at every commit). A file opens at
        once: ``serving`` changes nothing."""
        parsed = make_url(url)
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _pragmas("FULL" if durable else "NORMAL"))
        return engine

    def missing(self, url: str) -> str | None:
        path = make_url(url).database
        if not path or path == ":memory:" or Path(path).exists():
            return None
        return f"no database file at {Path(path).absolute()}"

    def uri_from_connection(self, parts: ConnectionParts) -> str:
        # 'sqlite:////abs/x.db' parses to host '' and schema '/abs/x.db'; a relative path stays relative.
        path = "/".join(part for part in (parts.host, parts.schema) if part)
        if not path:
            raise ConfigurationError("the sqlite database connection has no file path")
        return f"sqlite:///{path}"

    def means_unavailable(self, driver_error: BaseException) -> bool | None:
        code = getattr(driver_error, "sqlite_errorcode", None)
        if not isinstance(code, int):
            return None
        return code & 0xFF in UNAVAILABLE_CODES

    def partial_index_options(self, where: str) -> dict[str, Any]:
        return {"sqlite_where": text(where)}

    def insert_ignoring_conflicts(self, table: Table, index_elements: list[str] | None = None) -> Insert:
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=index_elements)

    def begin_write(self, conn: Connection) -> None:
        # pysqlite would begin a deferred transaction lazily; take the write lock up front instead, so a
        # concurrent writer queues rather than failing our later upgrade from reader to writer.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    def raw_time(self, value: datetime) -> Any:
        return _time_text(value)

    def stored_time(self, value: datetime) -> datetime:
        return value.replace(tzinfo=None)

    def hold_personal_data_lock(self, conn: Connection, *, exclusive: bool) -> None:
        # One writer at a time: a transaction that has written (or began with BEGIN IMMEDIATE) holds the
        # database's write lock until it ends, and that is the lock. Nothing to take.
        return None

    def json_fields_sql(self, column: str, fields: tuple[str, ...]) -> str:
        if not fields:
            return "NULL"
        names = ", ".join("'" + name.replace("'", "''") + "'" for name in fields)
        return (
            f"(SELECT json_group_object(f.key, f.value) FROM json_each({column}) AS f "
            f"WHERE f.key IN ({names}) HAVING COUNT(*) > 0)"
        )

    def warehouse_merge(
        self, conn: Connection, spec: MergeSpec, lineage: Mapping[str, Any]
    ) -> WarehouseMerge:
        return SQLiteMerge(conn, spec, lineage)

    def lineage_names(self, engine: Engine, tables: Sequence[str]) -> tuple[str, list[str]]:
        """OpenLineage's naming spec has no SQLite entry; by its general rule (namespace = the data source,
        name = the dataset): ``sqlite://{absolute file path}`` and the table's name."""
        return f"sqlite://{Path(engine.url.database or '').resolve()}", list(tables)


class SQLiteMerge(WarehouseMerge):
    """Per batch: ``executemany`` into a ``TEMP`` stage, one upsert into the current table (its
    ``previous_load_run_id``, written by the upsert, tells inserted / updated / rewritten apart in
    ``RETURNING``) and, only when some staged version did not become current, one upsert into the
    superseded table. SQLite has one writer at a time, so no lock is needed between lookup and insert."""

    def __init__(self, conn: Connection, spec: MergeSpec, lineage: Mapping[str, Any]) -> None:
        super().__init__(conn, spec, lineage)
        columns = ", ".join(f"{column} {_stage_type(spec, column)}" for column in spec.stage_columns)
        conn.exec_driver_sql(f"CREATE TEMP TABLE {spec.stage} ({columns})")
        self.params = {**self.lineage, "loaded_at": _time_text(self.lineage["loaded_at"])}
        self.current_sql = text(
            upsert_from_stage_sql(
                spec,
                spec.current,
                spec.key,
                "is_latest = 1",
                distinct="IS NOT",
                guard=f"excluded.{spec.version} >= t.{spec.version} AND ",
                extra_set=", previous_load_run_id = t.load_run_id",
            )
            + " RETURNING previous_load_run_id"
        )
        self.superseded_sql = {
            every_latest_inserted: text(_superseded_sql(spec, every_latest_inserted=every_latest_inserted))
            for every_latest_inserted in (True, False)
        }

    def stage_rows(self, rows: pa.Table, key_hashes: np.ndarray) -> list[tuple[Any, ...]]:
        """The rows as the driver's tuples (in the producer thread), times as SQLite's UTC text."""
        import pyarrow as pa
        import pyarrow.compute as pc

        spec = self.spec
        times = spec.columns_of_kind("time")
        columns = [
            pc.strftime(rows.column(column).cast(pa.timestamp("us", tz="UTC")), format=ARROW_TIME_FORMAT)
            if column in times
            else rows.column(column)
            for column in spec.stage_columns
        ]
        return list(zip(*(column.to_pylist() for column in columns), strict=True))

    def merge(self, rows: pa.Table, staged: Any, latest: int) -> MergeCounts:
        spec = self.spec
        placeholders = ", ".join("?" for _ in spec.stage_columns)
        self.conn.exec_driver_sql(f"INSERT INTO {spec.stage} VALUES ({placeholders})", staged)
        previous = [row[0] for row in self.conn.execute(self.current_sql, self.params)]
        inserted = sum(run is None for run in previous)
        updated = sum(run is not None and run != self.lineage["load_run_id"] for run in previous)
        if inserted < latest or latest < rows.num_rows:
            self.conn.execute(self.superseded_sql[inserted == latest], self.params)
        self.conn.exec_driver_sql(f"DELETE FROM {spec.stage}")
        return MergeCounts(inserted=inserted, updated=updated)

    def close(self) -> None:
        self.conn.exec_driver_sql(f"DROP TABLE {self.spec.stage}")


def _time_text(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).strftime(TIME_FORMAT)


def _stage_type(spec: MergeSpec, column: str) -> str:
    if column in (*spec.columns_of_kind("integer"), "position"):
        return "BIGINT"
    if column == "is_latest":
        return "INTEGER"
    return "TEXT"


def _superseded_sql(spec: MergeSpec, *, every_latest_inserted: bool) -> str:
    """Staged versions that did not become current (after the upsert), upserted into superseded.

    Those are the batch's earlier versions of a key and a latest version older than the current row.
    When every latest version was a new key, only the earlier versions qualify (no lookup needed).
    """
    same_key = " AND ".join(f"d.{column} = {spec.stage}.{column}" for column in spec.key)
    older = (
        ""
        if every_latest_inserted
        else f" OR {spec.version} < (SELECT d.{spec.version} FROM {spec.current} d WHERE {same_key})"
    )
    return upsert_from_stage_sql(
        spec, spec.superseded, (*spec.key, spec.version), f"NOT is_latest{older}", distinct="IS NOT"
    )
