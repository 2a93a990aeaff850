"""The one interface every supported database implements: what the project needs that SQL does not say alike.

A :class:`Database` is chosen once from an engine (:func:`cloudagent_etl.databases.database_for`); its methods
hold everything that differs between databases: URLs and engines, which driver errors mean "not now",
statements that ignore a conflict, a transaction that will write after it reads, row and key locks, how a
UTC time is bound in raw SQL, storing a small callback in one statement, and the warehouse merge (staging,
bulk copy, upsert). Nothing outside ``cloudagent_etl.databases`` branches on the database (a structure test
fails on a new branch elsewhere), so supporting another database is one module here plus its migrations.
"""

from __future__ import annotations

import hashlib
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Column, Connection, Engine, Select, Table, select
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeEngine

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


@dataclass(frozen=True)
class ConnectionParts:
    """An Airflow-style connection's parts, from which a database URI is built."""

    conn_type: str | None
    host: str | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = None
    port: int | None = None
    extra: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class MergeSpec:
    """What a warehouse merge writes, named by the warehouse; the SQL is the database's.

    ``current`` holds one row per ``key``, the version with the greatest ``version`` column; every other
    version goes to ``superseded`` (keyed by ``key`` + ``version``). Rows arrive staged with
    ``position`` (in the payload) and ``is_latest`` (the version of its key that may become current).
    A merge holds a lock per distinct value of ``lock_columns`` until commit, so that no other load adds
    a key of it between lookup and insert.
    """

    current: str
    superseded: str
    key: tuple[str, ...]
    version: str
    row_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    lineage_columns: tuple[str, ...]
    #: Kind of each row column: ``text``, ``integer``, ``time`` (aware UTC) or ``json`` (text of an object).
    column_kinds: Mapping[str, str]
    lock_columns: tuple[str, ...]
    stage: str

    @property
    def stage_columns(self) -> tuple[str, ...]:
        return (*self.row_columns, "position", "is_latest")

    def columns_of_kind(self, kind: str) -> tuple[str, ...]:
        return tuple(column for column in self.row_columns if self.column_kinds[column] == kind)

    def lock_key(self, values: tuple[Any, ...]) -> int:
        """A signed 64-bit key naming the lock of one ``lock_columns`` value (an advisory lock's key)."""
        material = "\x00".join([f"cloudagent_etl.{self.current}", *map(str, values)])
        return int.from_bytes(hashlib.blake2b(material.encode(), digest_size=8).digest(), "big", signed=True)


@dataclass(frozen=True)
class MergeCounts:
    """What one merged batch did to the current table: keys inserted, and keys this load changed."""

    inserted: int
    updated: int


class KeyHashes:
    """The key hashes of the rows of a payload staged so far (8 bytes a row), in temporary files, one per
    range of values (their top :data:`RANGE_BITS` bits), not in memory (80 MB at 10M rows): read back one
    range at a time to count the distinct keys, or all of them to rebuild a filter of keys seen."""

    RANGE_BITS = 4

    def __init__(self) -> None:
        self.files: list[IO[bytes]] = []
        self.count = 0

    def add(self, hashes: np.ndarray) -> None:
        import numpy as np

        if not self.files:  # in the temporary directory (TMPDIR), until close()
            self.files = [
                tempfile.TemporaryFile(prefix="cloudagent-keys-")  # noqa: SIM115
                for _ in range(1 << self.RANGE_BITS)
            ]
        ranges = hashes >> np.uint64(64 - self.RANGE_BITS)
        for number, file in enumerate(self.files):
            file.write(hashes[ranges == number].tobytes())
        self.count += len(hashes)

    def ranges(self) -> Iterator[np.ndarray]:
        """The hashes added so far, one range at a time (read-only arrays)."""
        import numpy as np

        for file in self.files:
            file.seek(0)
            yield np.frombuffer(file.read(), dtype=np.uint64)

    def distinct(self) -> int:
        """How many distinct hashes were added, counted one range (~1/16 of them) in memory at a time."""
        import numpy as np

        distinct = 0
        for values in self.ranges():
            if len(values):
                ordered = np.sort(values)
                distinct += int(np.count_nonzero(ordered[1:] != ordered[:-1])) + 1
        return distinct

    def close(self) -> None:
        for file in self.files:
            file.close()
        self.files = []


class WarehouseMerge(ABC):
    """One payload's merge into the warehouse, on one connection, inside the caller's transaction.

    :meth:`stage` is the client-side work of a batch and runs in the load's producer thread, batch after
    batch in payload order (it must not touch the connection); :meth:`merge` runs in the merge thread;
    :meth:`lock` runs in the producer thread while no merge is in flight, before the first batch with
    a lock value :meth:`unlocked` names is staged; :meth:`distinct_keys` and :meth:`close` once at the end.
    """

    def __init__(self, conn: Connection, spec: MergeSpec, lineage: Mapping[str, Any]) -> None:
        self.conn = conn
        self.spec = spec
        self.lineage = dict(lineage)
        #: The key hashes of the batches staged so far (those of the batch being staged come after).
        self.key_hashes = KeyHashes()

    def unlocked(self, rows: pa.Table) -> list[tuple[Any, ...]]:
        """The lock values (of ``lock_columns``) of ``rows`` whose lock this merge does not hold yet (none
        where the database has one writer at a time)."""
        return []

    def lock(self, values: list[tuple[Any, ...]]) -> None:
        """Take the locks of ``values`` (see :meth:`unlocked`), on the connection."""
        raise NotImplementedError(f"{type(self).__name__} names locks to take and must take them")

    def stage(self, rows: pa.Table, key_hashes: np.ndarray) -> Any:
        """The rows as this database stages them (:meth:`stage_rows`); their key hashes are kept after."""
        staged = self.stage_rows(rows, key_hashes)
        self.key_hashes.add(key_hashes)
        return staged

    @abstractmethod
    def stage_rows(self, rows: pa.Table, key_hashes: np.ndarray) -> Any:
        """The rows as this database stages them (e.g. a binary COPY's bytes); never touches the connection.

        ``key_hashes`` hash each row's key (within its account)."""

    def distinct_keys(self) -> int:
        """How many distinct keys the staged batches had (rejected rows are never staged)."""
        distinct = self.key_hashes.distinct()
        self.key_hashes.close()
        return distinct

    @abstractmethod
    def merge(self, rows: pa.Table, staged: Any, latest: int) -> MergeCounts:
        """Merge one batch (``latest`` of its rows have ``is_latest``) and return its counts."""

    @abstractmethod
    def close(self) -> None:
        """Leave nothing of the merge behind in the session (its stage)."""


class Database(ABC):
    """Everything the project does differently on one database (see the module docstring)."""

    #: SQLAlchemy's dialect name (``engine.dialect.name``).
    name: ClassVar[str]
    #: URL prefixes this database accepts, and the SQLAlchemy driver URL prefix each becomes.
    url_schemes: ClassVar[Mapping[str, str]]
    #: Airflow connection types that hold this database.
    connection_types: ClassVar[tuple[str, ...]]
    #: Only one transaction may write at a time: writers in one process queue on a lock of their own.
    serializes_writers: ClassVar[bool] = False
    #: A small callback body is stored by :meth:`store_callback_in_one_statement`.
    stores_callback_in_one_statement: ClassVar[bool] = False
    #: Column types that differ here from the portable ones, by name (see ``sqltypes``).
    column_type_variants: ClassVar[Mapping[str, TypeEngine[Any]]] = {}

    # ---------------------------------------------------------------------------------------- engines
    def sqlalchemy_url(self, uri: str) -> str | None:
        """``uri`` as a SQLAlchemy URL with this project's driver, or None when it is not this database's."""
        for prefix, driver_prefix in self.url_schemes.items():
            if uri.startswith(prefix):
                return driver_prefix + uri[len(prefix) :]
        return None

    @abstractmethod
    def create_engine(self, url: str, *, durable: bool, serving: bool, **kwargs: Any) -> Engine:
        """An engine for ``url`` (``durable``, ``serving``: see ``db.create_db_engine``)."""

    def missing(self, url: str) -> str | None:
        """Why there is nothing at ``url`` to open without creating it (a file database's absent file), or
        None (a server database: connecting says what is wrong)."""
        return None

    @abstractmethod
    def uri_from_connection(self, parts: ConnectionParts) -> str:
        """The database URI of a connection's parts."""

    @abstractmethod
    def means_unavailable(self, driver_error: BaseException) -> bool | None:
        """Whether this driver's error means "not now" (None: not an error of this driver)."""

    @abstractmethod
    def partial_index_options(self, where: str) -> dict[str, Any]:
        """The ``Index`` options that make an index cover only the rows matching ``where`` (SQL)."""

    # ---------------------------------------------------------------------------------------- writing
    @abstractmethod
    def insert_ignoring_conflicts(self, table: Table, index_elements: list[str] | None = None) -> Insert:
        """``INSERT`` into ``table`` that inserts nothing where a row with the same key exists."""

    @abstractmethod
    def begin_write(self, conn: Connection) -> None:
        """Begin a transaction on ``conn`` that will write after it reads (its reads see the last commits)."""

    @contextmanager
    def write_transaction(self, engine: Engine) -> Iterator[Connection]:
        """A transaction begun by :meth:`begin_write`, committed at the end (rolled back on error)."""
        with engine.connect() as conn:
            self.begin_write(conn)
            yield conn
            conn.commit()

    def lock_row(self, conn: Connection, table: Table, key: Column[Any], value: Any) -> None:
        """Insert the row ``key = value`` unless it exists, and hold it locked until the transaction ends.

        Call it first in a transaction begun by :meth:`begin_write`.
        """
        conn.execute(self.insert_ignoring_conflicts(table), {key.name: value})
        conn.execute(select(key).where(key == value).with_for_update())

    def raw_time(self, value: datetime) -> Any:
        """An aware UTC time as a raw SQL statement binds it, to compare equal to stored ones."""
        return value

    def stored_time(self, value: datetime) -> datetime:
        """An aware UTC time as the ``UtcDateTime`` column type hands it to the driver."""
        return value

    def store_callback_in_one_statement(
        self, engine: Engine, params: Mapping[str, Any], *, late_states: tuple[str, ...]
    ) -> tuple[int, bool, bool] | None:
        """Store a body of at most one chunk in one statement: (payload id, duplicate, late), or None when
        its request does not exist. Only where :attr:`stores_callback_in_one_statement`."""
        raise NotImplementedError(f"{self.name} stores a callback in steps")

    # ---------------------------------------------------------------------------------- personal data
    @abstractmethod
    def hold_personal_data_lock(self, conn: Connection, *, exclusive: bool) -> None:
        """Hold the lock loads take shared and an erasure exclusive, until the transaction ends: an erasure
        never interleaves with a load. Where writers are serialized (:attr:`serializes_writers`), the
        database's own write lock is that lock: call it once the transaction has written."""

    @abstractmethod
    def json_fields_sql(self, column: str, fields: tuple[str, ...]) -> str:
        """SQL of the JSON object ``column`` holding only the keys ``fields`` (NULL when none is there)."""

    def read_bytes(self, conn: Connection, statement: Select[Any]) -> bytes | None:
        """The one binary value ``statement`` selects (None without a row; more than one row is an error)."""
        value = conn.execute(statement).scalar_one_or_none()
        return None if value is None else bytes(value)

    def replace_view(self, conn: Connection, name: str, select_sql: str) -> None:
        """Make the view ``name`` (again) as ``select_sql``, its columns unchanged. Here: drop and create
        (views that depend on it are not enforced); a database that enforces them replaces it in place."""
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE VIEW {name} AS {select_sql}")

    def grant_analyst_access(self, conn: Connection, views: tuple[str, ...], role: str) -> None:
        """Let ``role`` (made if missing, no login) read ``views`` and nothing else of the schema; where the
        database has no roles, nothing."""
        return None

    # ---------------------------------------------------------------------------------------- warehouse
    @abstractmethod
    def warehouse_merge(
        self, conn: Connection, spec: MergeSpec, lineage: Mapping[str, Any]
    ) -> WarehouseMerge:
        """Start one payload's merge on ``conn`` (session settings, stage)."""

    # ---------------------------------------------------------------------------------------- lineage, dbt
    @abstractmethod
    def lineage_names(self, engine: Engine, tables: Sequence[str]) -> tuple[str, list[str]]:
        """The OpenLineage namespace of this database and the names of ``tables`` in it (its naming spec)."""

    def dbt_profile_env(self, url: str) -> dict[str, str] | None:
        """The variables ``dbt/profiles.yml`` reads to reach this database; None where the dbt models do not
        run (their SQL is PostgreSQL's)."""
        return None


def upsert_from_stage_sql(
    spec: MergeSpec,
    target: str,
    key: tuple[str, ...],
    where: str,
    *,
    distinct: str,
    guard: str = "",
    extra_set: str = "",
) -> str:
    """INSERT ... SELECT from the stage ... ON CONFLICT (key) DO UPDATE ... WHERE some value differs.

    ``distinct`` is the database's null-safe "differs" operator; lineage columns are bound parameters.
    """
    columns = (*spec.row_columns, *spec.lineage_columns)
    values = ", ".join((*spec.row_columns, *(f":{name}" for name in spec.lineage_columns)))
    assignments = ", ".join(f"{column} = excluded.{column}" for column in columns if column not in key)
    differs = " OR ".join(f"t.{column} {distinct} excluded.{column}" for column in spec.value_columns)
    return (
        f"INSERT INTO {target} AS t ({', '.join(columns)}) "
        f"SELECT {values} FROM {spec.stage} WHERE {where} ORDER BY {', '.join(key)} "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {assignments}{extra_set} "
        f"WHERE {guard}({differs})"
    )
