"""The database modules behind one interface, on real databases: URLs, connections, conflicts, row locks,
raw time binding, partial indexes, and which driver errors mean "not now"."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import Column, Engine, Integer, LargeBinary, MetaData, Table, Text, insert, select, text
from sqlalchemy.exc import MultipleResultsFound

from cloudagent_etl.databases import (
    DATABASES,
    ConnectionParts,
    database_for,
    database_named,
    partial_index_options,
    sqlalchemy_url,
    uri_from_connection,
)
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.errors import ConfigurationError


@pytest.mark.parametrize(
    ("uri", "name", "url"),
    [
        ("postgresql://u:p@h:5/db", "postgresql", "postgresql+psycopg://u:p@h:5/db"),
        ("postgres://u@h/db", "postgresql", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql", "postgresql+psycopg://u@h/db"),
        ("sqlite:////tmp/x.db", "sqlite", "sqlite:////tmp/x.db"),
    ],
)
def test_a_uri_names_its_database_and_gets_this_projects_driver(uri: str, name: str, url: str) -> None:
    database, sqlalchemy = sqlalchemy_url(uri)
    assert (database.name, sqlalchemy) == (name, url)


def test_an_unknown_scheme_or_connection_type_names_what_is_supported() -> None:
    with pytest.raises(ConfigurationError, match=r"postgresql:// or .*sqlite://"):
        sqlalchemy_url("mysql://u@h/db")
    with pytest.raises(ConfigurationError, match="empty"):
        sqlalchemy_url("")
    with pytest.raises(ConfigurationError, match=r"postgres, postgresql, sqlite, not 'mysql'"):
        uri_from_connection(ConnectionParts("mysql", host="h"))
    with pytest.raises(ConfigurationError, match="not supported"):
        database_named("oracle")


def test_connection_parts_become_a_uri_with_only_the_allowed_extras_and_quoted_secrets() -> None:
    parts = ConnectionParts(
        "postgres", "db.internal", "warehouse", "etl@corp", "p@ss/w:rd", 6432,
        {"sslmode": "require", "options": "-c statement_timeout=0"},
    )  # fmt: skip
    assert uri_from_connection(parts) == (
        "postgresql://etl%40corp:p%40ss%2Fw%3Ard@db.internal:6432/warehouse?sslmode=require"
    )
    assert uri_from_connection(ConnectionParts("sqlite", "", "/abs/x.db")) == "sqlite:////abs/x.db"
    with pytest.raises(ConfigurationError, match="no file path"):
        uri_from_connection(ConnectionParts("sqlite"))


def test_each_database_covers_only_its_own_partial_index_option() -> None:
    options = partial_index_options("state = 'x'")
    assert sorted(options) == sorted(f"{database.name}_where" for database in DATABASES)


def _scratch_table(engine: Engine) -> Table:
    table = Table("scratch", MetaData(), Column("key", Text, primary_key=True), Column("n", Integer))
    table.create(engine)
    return table


def test_an_insert_ignoring_conflicts_keeps_the_first_row(engine: Engine) -> None:
    table = _scratch_table(engine)
    statement = database_for(engine).insert_ignoring_conflicts(table)
    with engine.begin() as conn:
        conn.execute(statement, [{"key": "a", "n": 1}, {"key": "a", "n": 2}, {"key": "b", "n": 3}])
    with engine.connect() as conn:
        assert conn.execute(select(table.c.key, table.c.n).order_by(table.c.key)).all() == [
            ("a", 1),
            ("b", 3),
        ]


def test_a_locked_row_makes_a_second_writer_wait_until_the_first_commits(db_url: str) -> None:
    """What the rate limiter relies on: the second admission sees the first one's committed write."""
    engines = [create_db_engine(db_url) for _ in range(2)]
    table = _scratch_table(engines[0])
    database = database_for(engines[0])
    order: list[str] = []
    first_holds = threading.Event()

    def first() -> None:
        with engines[0].connect() as conn:
            database.begin_write(conn)
            database.lock_row(conn, table, table.c.key, "account")
            first_holds.set()
            time.sleep(0.5)  # holding the lock: the second writer must be waiting now
            conn.execute(insert(table).values(key="call-1", n=1))
            order.append("first commits")
            conn.commit()

    thread = threading.Thread(target=first)
    thread.start()
    assert first_holds.wait(30)
    with engines[1].connect() as conn:
        database.begin_write(conn)
        database.lock_row(conn, table, table.c.key, "account")
        order.append("second locked")
        seen = conn.execute(select(table.c.key).where(table.c.key == "call-1")).scalar_one_or_none()
        conn.commit()
    thread.join(30)
    assert not thread.is_alive()
    for engine in engines:
        engine.dispose()
    assert order == ["first commits", "second locked"]
    assert seen == "call-1"


def test_read_bytes_gives_every_byte_value_back_none_without_a_row_and_refuses_two(engine: Engine) -> None:
    """On PostgreSQL the value comes in binary, not as hex text: every byte, a NUL and a high one too."""
    table = Table(
        "blobs",
        MetaData(),
        Column("key", Integer, primary_key=True),
        Column("data", LargeBinary),
        Column("g", Integer),
    )
    table.create(engine)
    every_byte = bytes(range(256)) * 4097  # over 1 MB
    with engine.begin() as conn:
        conn.execute(insert(table), [{"key": 1, "data": every_byte, "g": 1}, {"key": 2, "data": b"", "g": 1}])
        conn.execute(insert(table), [{"key": 3, "data": None, "g": 2}])
    database = database_for(engine)
    with engine.connect() as conn:
        assert database.read_bytes(conn, select(table.c.data).where(table.c.key == 1)) == every_byte
        assert database.read_bytes(conn, select(table.c.data).where(table.c.key == 2)) == b""
        assert database.read_bytes(conn, select(table.c.data).where(table.c.key == 3)) is None
        assert database.read_bytes(conn, select(table.c.data).where(table.c.key == 4)) is None
        with pytest.raises(MultipleResultsFound):
            database.read_bytes(conn, select(table.c.data).where(table.c.g == 1))


def test_a_raw_time_compares_equal_to_the_stored_one(engine: Engine) -> None:
    from cloudagent_etl.sqltypes import UtcDateTime

    table = Table("times", MetaData(), Column("at", UtcDateTime, primary_key=True))
    table.create(engine)
    moment = datetime(2025, 6, 1, 22, 0, 0, 123456, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(table).values(at=moment))
    raw = database_for(engine).raw_time(moment)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM times WHERE at = :at"), {"at": raw}).scalar_one() == 1
        assert conn.execute(select(table.c.at)).scalar_one() == moment


def test_only_a_driver_error_of_its_own_database_gets_a_verdict() -> None:
    class PgError(Exception):
        sqlstate = "57P01"  # admin shutdown: not now

    class SqliteError(Exception):
        sqlite_errorcode = 19  # constraint: the statement itself is wrong

    postgresql, sqlite = database_named("postgresql"), database_named("sqlite")
    assert (postgresql.means_unavailable(PgError()), sqlite.means_unavailable(PgError())) == (True, None)
    assert (sqlite.means_unavailable(SqliteError()), postgresql.means_unavailable(SqliteError())) == (
        False,
        None,
    )


def test_sqlite_stages_times_as_the_text_it_stores_them_as() -> None:
    """The SQLite stage writes times with Arrow, the stored ones are written with strftime: the same text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from cloudagent_etl.databases.sqlite import ARROW_TIME_FORMAT, TIME_FORMAT

    moments = [
        datetime(2024, 5, 1, 6, 30, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 59, 123456, tzinfo=UTC),
    ]
    arrow = pc.strftime(pa.array(moments, pa.timestamp("us", tz="UTC")), format=ARROW_TIME_FORMAT)
    assert arrow.to_pylist() == [moment.replace(tzinfo=None).strftime(TIME_FORMAT) for moment in moments]


def test_the_filter_of_keys_seen_never_misses_a_key_as_it_grows_and_rarely_takes_a_new_one_for_seen() -> None:
    """A key added before is always "seen" (a first load would otherwise COPY a second row of it); a new
    key is taken for seen rarely (it then only takes the slower stage)."""
    import numpy as np

    from cloudagent_etl.databases.base import KeyHashes
    from cloudagent_etl.databases.postgresql import _SeenKeys

    rng = np.random.default_rng(7)
    earlier = KeyHashes()
    seen = _SeenKeys(max_bits=1 << 24, earlier=earlier, first_bits=1 << 10)

    def stage(hashes: np.ndarray) -> np.ndarray:
        """As the merge stages a batch: the filter first, then the batch's hashes kept."""
        new: np.ndarray = seen.add(hashes)
        earlier.add(hashes)
        return new

    batches = [rng.integers(0, 2**64, size=20_000, dtype=np.uint64) for _ in range(10)]
    for batch in batches:
        new = stage(np.concatenate([batch[:5], batch]))  # five keys twice in one batch
        assert new[:10].all()  # both copies new: a batch's own duplicates are normalize's
        assert new.mean() > 0.98
    assert seen.bits == 1 << 23  # grew from 2^10 to keep 27 bits a key: 200k keys, 5.4M bits
    for batch in batches:
        assert not stage(batch).any()
    assert seen.bits == 1 << 24  # and doubled again (400k hashes), rebuilt from those kept
    fresh = rng.integers(0, 2**64, size=100_000, dtype=np.uint64)
    assert stage(fresh).mean() > 0.98
    earlier.close()
    # A batch added to the filter but not kept among the earlier hashes would be lost when it doubles.
    unkept = _SeenKeys(max_bits=1 << 24, earlier=KeyHashes(), first_bits=1 << 10)
    unkept.add(batches[0][:10])
    with pytest.raises(RuntimeError, match="10 added to the filter"):
        unkept.add(batches[1])


def test_key_hashes_kept_on_disk_count_distinct_keys_exactly_and_give_back_what_was_added() -> None:
    """Kept in one temporary file per range of values, the hashes count exactly (duplicates within and
    across batches, both ends of the range of values) and read back as the very set added."""
    import numpy as np

    from cloudagent_etl.databases.base import KeyHashes

    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**64, size=40_000, dtype=np.uint64)
    batches = [keys[start : start + 10_000] for start in range(0, 40_000, 10_000)]
    batches += [keys[::7].copy(), np.repeat(keys[:5], 3), np.array([2**64 - 1, 0, 0], dtype=np.uint64)]
    hashes = KeyHashes()
    assert hashes.distinct() == 0
    assert list(hashes.ranges()) == []
    for batch in batches:
        hashes.add(batch)
    added = np.concatenate(batches)
    assert hashes.count == len(added)
    assert len(hashes.files) == 16
    assert all(len(values) for values in hashes.ranges())
    assert np.array_equal(np.sort(np.concatenate(list(hashes.ranges()))), np.sort(added))
    assert hashes.distinct() == len(np.unique(added)) == 40_002
    hashes.close()
    assert hashes.files == []
