"""PostgreSQL (psycopg 3): the production database.

What is particular here: ``SELECT ... FOR UPDATE`` / ``FOR NO KEY UPDATE`` row locks and transaction
advisory locks instead of one writer at a time, ``INSERT ... ON CONFLICT`` with ``RETURNING`` in CTEs (a
small callback is stored in one statement), and a warehouse merge that ``COPY``-s each batch into a
``TEMP`` stage and sorts every staged version with one index probe (see :class:`PostgresMerge`).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from sqlalchemy import Connection, Engine, Table, create_engine, text
from sqlalchemy.dialects import postgresql
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

if TYPE_CHECKING:
    import pandas as pd

#: Connection extras passed on to the driver; anything else in a connection's extra is ignored.
ALLOWED_CONNECTION_EXTRAS = ("sslmode", "sslrootcert", "connect_timeout", "application_name")
#: SQLSTATE classes that mean "not now": connection (08), authorization (28, a rotated password),
#: transaction rollback such as a deadlock (40), insufficient resources such as a full disk (53),
#: operator intervention such as a shutdown (57), system errors (58).
UNAVAILABLE_CLASSES = frozenset({"08", "28", "40", "53", "57", "58"})
#: ... and single codes: insufficient privilege, read-only transaction (a standby), lock not available,
#: object in use, the database does not exist (dropped or not created yet).
UNAVAILABLE_CODES = frozenset({"42501", "25006", "55P03", "55006", "3D000"})
#: work_mem of a load transaction: a 20k-row batch sorts in ~15 MB.
SORT_MEMORY = "64MB"
AUTOCOMMIT = "AUTOCOMMIT"

#: Lock the request row, insert the payload (flagged late from the state read under the lock) and its one
#: chunk, and move the request ``requested -> received``, all in one statement. A duplicate inserts
#: nothing and returns no row (the caller then looks the stored one up: a row committed by a concurrent
#: delivery while this statement waited is not in its snapshot, but is in the next statement's).
_STORE_CALLBACK = """
WITH request AS (
    SELECT state FROM export_requests WHERE request_id = %(request_id)s FOR NO KEY UPDATE
), payload AS (
    INSERT INTO callback_payloads (request_id, unique_id, received_at, content_type, sha256, size_bytes,
                                   client_addr, headers, part_no, part_count, late)
    SELECT %(request_id)s, %(unique_id)s, %(now)s, %(content_type)s, %(sha256)s, %(size_bytes)s,
           %(client_addr)s, %(headers)s::json, %(part_no)s, %(part_count)s,
           CASE WHEN request.state = ANY(%(late_states)s) THEN 1 ELSE 0 END
    FROM request
    ON CONFLICT (request_id, sha256) DO NOTHING
    RETURNING payload_id, late
), chunk AS (
    INSERT INTO callback_payload_chunks (payload_id, seq, data)
    SELECT payload_id, 0, %(data)s FROM payload WHERE %(size_bytes)s > 0
), moved AS (
    UPDATE export_requests
    SET state = %(received_state)s, received_at = coalesce(received_at, %(now)s),
        updated_at = %(now)s, error = NULL
    WHERE request_id = %(request_id)s AND state = %(requested_state)s
      AND EXISTS (SELECT FROM payload)
)
SELECT payload_id, late FROM payload
"""
_STORED_PAYLOAD = """
SELECT payload_id, late FROM callback_payloads WHERE request_id = %(request_id)s AND sha256 = %(sha256)s
"""


class PostgreSQL(Database):
    name: ClassVar[str] = "postgresql"
    url_schemes: ClassVar[Mapping[str, str]] = {
        "postgresql+psycopg://": "postgresql+psycopg://",
        "postgresql+psycopg2://": "postgresql+psycopg://",
        "postgresql://": "postgresql+psycopg://",
        "postgres://": "postgresql+psycopg://",
    }
    connection_types: ClassVar[tuple[str, ...]] = ("postgres", "postgresql")
    stores_callback_in_one_statement: ClassVar[bool] = True
    #: JSONB is comparable, so an unchanged row can be recognised.
    column_type_variants: ClassVar[Mapping[str, TypeEngine[Any]]] = {"json_document": postgresql.JSONB()}

    def create_engine(self, url: str, *, durable: bool, serving: bool, **kwargs: Any) -> Engine:
        # ``durable`` holds already: a commit returns once its WAL is flushed (synchronous_commit on).
        if serving:
            # No pre-ping (two extra round trips per request); connecting gives up after 5 s.
            kwargs.setdefault("connect_args", {"connect_timeout": 5})
            kwargs.setdefault("pool_pre_ping", False)
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)

    def uri_from_connection(self, parts: ConnectionParts) -> str:
        userinfo = ""
        if parts.login:
            password = f":{quote(parts.password, safe='')}" if parts.password else ""
            userinfo = quote(parts.login, safe="") + password + "@"
        address = (parts.host or "localhost") + (f":{parts.port}" if parts.port else "")
        query = "&".join(
            f"{key}={quote(str(value), safe='')}"
            for key, value in (parts.extra or {}).items()
            if key in ALLOWED_CONNECTION_EXTRAS
        )
        return f"postgresql://{userinfo}{address}/{quote(parts.schema or '', safe='')}" + (
            f"?{query}" if query else ""
        )

    def means_unavailable(self, driver_error: BaseException) -> bool | None:
        sqlstate = getattr(driver_error, "sqlstate", None)
        if not isinstance(sqlstate, str):
            return None
        return sqlstate[:2] in UNAVAILABLE_CLASSES or sqlstate in UNAVAILABLE_CODES

    def partial_index_options(self, where: str) -> dict[str, Any]:
        return {"postgresql_where": text(where)}

    def insert_ignoring_conflicts(self, table: Table, index_elements: list[str] | None = None) -> Insert:
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=index_elements)

    def begin_write(self, conn: Connection) -> None:
        # READ COMMITTED: once a row lock is ours, a read sees every write the previous holder committed.
        conn.execution_options(isolation_level="READ COMMITTED")

    def store_callback_in_one_statement(
        self, engine: Engine, params: Mapping[str, Any], *, late_states: tuple[str, ...]
    ) -> tuple[int, bool, bool] | None:
        """``params``: the payload row's values, ``data`` (the body), ``now``, ``headers`` as JSON text,
        and the states ``requested_state`` / ``received_state`` the request moves between."""
        values = {**params, "late_states": list(late_states)}
        # A single statement is its own transaction, committed (and flushed, synchronous_commit being on)
        # before its result comes back: without BEGIN and COMMIT it is one round trip instead of three.
        with engine.connect().execution_options(isolation_level=AUTOCOMMIT) as conn:
            stored = conn.exec_driver_sql(_STORE_CALLBACK, values).one_or_none()
            if stored is not None:
                return int(stored.payload_id), False, bool(stored.late)
            existing = conn.exec_driver_sql(_STORED_PAYLOAD, values).one_or_none()
        if existing is None:
            return None
        return int(existing.payload_id), True, bool(existing.late)

    def hold_personal_data_lock(self, conn: Connection, *, exclusive: bool) -> None:
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        conn.execute(text(f"SELECT {function}(:key)"), {"key": PERSONAL_DATA_LOCK_KEY})

    def json_fields_sql(self, column: str, fields: tuple[str, ...]) -> str:
        if not fields:
            return "CAST(NULL AS jsonb)"
        names = ", ".join(_literal(name) for name in fields)
        return (
            f"(SELECT jsonb_object_agg(f.key, f.value) FROM jsonb_each({column}) AS f "
            f"WHERE f.key IN ({names}))"
        )

    def grant_analyst_access(self, conn: Connection, views: tuple[str, ...], role: str) -> None:
        # Roles belong to the cluster: another database of it may make the same role at the same moment.
        conn.exec_driver_sql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {_literal(role)}) THEN "
            f"CREATE ROLE {role} NOLOGIN; END IF; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
        conn.exec_driver_sql(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA public TO {role}")
        for view in views:
            conn.exec_driver_sql(f"GRANT SELECT ON {view} TO {role}")

    def warehouse_merge(
        self, conn: Connection, spec: MergeSpec, lineage: Mapping[str, Any]
    ) -> WarehouseMerge:
        return PostgresMerge(conn, spec, lineage)


#: The advisory lock loads hold shared and an erasure exclusive (a fixed key of this project's own).
PERSONAL_DATA_LOCK_KEY = int.from_bytes(
    hashlib.blake2b(b"cloudagent_etl.personal_data", digest_size=8).digest(), "big", signed=True
)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresMerge(WarehouseMerge):
    """Per batch: ``COPY`` the rows (CSV written by pyarrow, naive UTC times, the session in UTC) into a
    ``TEMP`` stage emptied by ``TRUNCATE``; one statement then looks each staged latest version up once (a
    lateral index probe) and sorts it: a new key is inserted (ordered by key; the load holds its lock
    columns' advisory lock, so no other load adds the key meanwhile), a changed one is updated through
    the row found, an identical one is left alone, an older one goes with the batch's earlier versions
    into the superseded table (a second statement, only when there are any)."""

    def __init__(self, conn: Connection, spec: MergeSpec, lineage: Mapping[str, Any]) -> None:
        super().__init__(conn, spec, lineage)
        conn.exec_driver_sql("SET LOCAL timezone = 'UTC'")
        # The merge sorts each staged batch by key: in memory, not in temp files.
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{SORT_MEMORY}'")
        # Batches of 20k rows never pay back JIT compilation (~1.3 s per statement once the merge's
        # estimate includes the cost of the nested loop it must use: see merge()).
        conn.exec_driver_sql("SET LOCAL jit = off")
        conn.exec_driver_sql(_stage_ddl(spec))
        self.params = dict(self.lineage)
        self.merge_sql = text(_merge_sql(spec))
        self.superseded_sql = text(
            upsert_from_stage_sql(
                spec,
                spec.superseded,
                (*spec.key, spec.version),
                "NOT is_latest OR position = ANY(:older)",
                distinct="IS DISTINCT FROM",
            )
        )
        self.locked: set[tuple[Any, ...]] = set()

    def stage(self, rows: pd.DataFrame) -> bytes:
        return stage_csv(rows, self.spec)

    def merge(self, rows: pd.DataFrame, staged: Any, latest: int) -> MergeCounts:
        self._lock(rows)
        self._copy(staged)
        # Without nested loops while the trigger moving replaced rows is planned: it joins its transition
        # tables, and a nested-loop plan made (and cached for the session) for a small batch would be
        # quadratic on a big one (20k replaced rows: ~70 s). The merge's lookup is lateral: a nested loop
        # anyway.
        self.conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
        inserted, rewritten, updated, changed, older = self.conn.execute(self.merge_sql, self.params).one()
        self.conn.exec_driver_sql("SET LOCAL enable_nestloop = on")
        if rewritten != changed:  # a row moved under the load (only loads write the table: a bug)
            raise RuntimeError(
                f"{self.spec.current}: {changed} changed keys looked up, {rewritten} rows updated"
            )
        if older or latest < len(rows):
            self.conn.execute(self.superseded_sql, {**self.params, "older": older or []})
        self.conn.exec_driver_sql(f"TRUNCATE {self.spec.stage}")
        return MergeCounts(inserted=inserted, updated=updated)

    def close(self) -> None:
        # Dropped on commit anyway; dropped now so that another merge may follow in the same transaction.
        self.conn.exec_driver_sql(f"DROP TABLE {self.spec.stage}")

    def _lock(self, rows: pd.DataFrame) -> None:
        """Hold each lock value's advisory lock until commit: no key of it appears between lookup and
        insert."""
        columns = list(self.spec.lock_columns)
        for values in rows[columns].drop_duplicates().itertuples(index=False, name=None):
            if values not in self.locked:
                self.conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": self.spec.lock_key(values)}
                )
                self.locked.add(values)

    def _copy(self, csv: bytes) -> None:
        driver_connection: Any = self.conn.connection.driver_connection
        with driver_connection.cursor() as cursor:
            copy_sql = (
                f"COPY {self.spec.stage} ({', '.join(self.spec.stage_columns)}) FROM STDIN (FORMAT csv)"
            )
            with cursor.copy(copy_sql) as copy:
                copy.write(csv)


def stage_csv(rows: pd.DataFrame, spec: MergeSpec) -> bytes:
    """The rows as the stage's CSV (written by pyarrow; naive UTC times, the session zone UTC)."""
    import pyarrow as pa  # the load's dependencies, never the receiver's or the triggerer's
    import pyarrow.csv as pa_csv

    naive = rows.assign(
        **{column: rows[column].dt.tz_convert(None) for column in spec.columns_of_kind("time")}
    )
    table = pa.Table.from_pandas(naive[list(spec.stage_columns)], preserve_index=False)
    buffer = io.BytesIO()
    pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False))
    return buffer.getvalue()


def _stage_ddl(spec: MergeSpec) -> str:
    types = dict.fromkeys(spec.stage_columns, "TEXT")
    types.update(dict.fromkeys((*spec.columns_of_kind("integer"), "position"), "BIGINT"))
    types.update(dict.fromkeys(spec.columns_of_kind("time"), "TIMESTAMPTZ"))
    types.update(dict.fromkeys(spec.columns_of_kind("json"), "JSONB"))
    types["is_latest"] = "BOOLEAN"
    columns = ", ".join(f"{column} {types[column]}" for column in spec.stage_columns)
    return f"CREATE TEMP TABLE {spec.stage} ({columns}) ON COMMIT DROP"


def _merge_sql(spec: MergeSpec) -> str:
    """One lookup per staged latest version sorts it into new / unchanged / older / changed.

    New keys get a plain insert, ordered by key. Keys that exist and changed (same or newer version, some
    value differs) are updated through the row the lookup found (a TID scan: no second lookup). The
    statement returns the inserted count, the updated rows (all, and those not written earlier by this
    load) and the positions of the versions older than their current row (they go to the superseded
    table).

    The lookup is a lateral subquery with ``LIMIT 1``: always an index probe per staged row, whatever the
    planner estimates for the stage (a hash join would scan the whole current table for every batch).
    """
    key = ", ".join(spec.key)
    version = spec.version
    columns = (*spec.row_columns, *spec.lineage_columns)
    values = ", ".join((*spec.row_columns, *(f":{name}" for name in spec.lineage_columns)))
    differs = " OR ".join(f"d.{column} IS DISTINCT FROM s.{column}" for column in spec.value_columns)
    selected = ", ".join(f"s.{column}" for column in (*spec.row_columns, "position"))
    same_key = " AND ".join(f"d.{column} = s.{column}" for column in spec.key)
    target_key = " AND ".join(f"t.{column} = l.{column}" for column in spec.key)
    probe = spec.key[-1]  # NULL exactly when the lateral lookup found no row
    assignments = ", ".join(
        [
            *(f"{column} = l.{column}" for column in spec.row_columns if column not in spec.key),
            *(f"{column} = :{column}" for column in spec.lineage_columns),
            "previous_load_run_id = t.load_run_id",
        ]
    )
    return (
        f"WITH looked AS MATERIALIZED ("
        f"SELECT {selected}, d.{version} AS current_version, d.ctid AS current_row, "
        f"d.{probe} IS NULL AS new, "
        f"d.{probe} IS NOT NULL AND s.{version} >= d.{version} AND ({differs}) AS changed "
        f"FROM {spec.stage} s LEFT JOIN LATERAL (SELECT *, ctid FROM {spec.current} d "
        f"WHERE {same_key} LIMIT 1) d ON true "
        f"WHERE s.is_latest), "
        f"inserted AS (INSERT INTO {spec.current} ({', '.join(columns)}) "
        f"SELECT {values} FROM looked WHERE new ORDER BY {key} RETURNING 1), "
        f"updated AS (UPDATE {spec.current} t SET {assignments} FROM looked l "
        f"WHERE t.ctid = ANY(ARRAY(SELECT current_row FROM looked WHERE changed)) AND l.changed "
        f"AND {target_key} "
        f"RETURNING t.previous_load_run_id) "
        f"SELECT (SELECT COUNT(*) FROM inserted), "
        f"(SELECT COUNT(*) FROM updated), "
        f"(SELECT COUNT(*) FROM updated WHERE previous_load_run_id <> :load_run_id), "
        f"(SELECT COUNT(*) FROM looked WHERE changed), "
        f"(SELECT array_agg(position) FROM looked WHERE NOT new AND {version} < current_version)"
    )
