"""Engine settings and the one rule for "the database cannot do it now", on real databases."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from cloudagent_etl.db import create_db_engine, is_unavailable
from cloudagent_etl.receiver.app import _engine_for
from cloudagent_etl.settings import ReceiverSettings


def _synchronous(engine_url: str, **options: bool) -> int:
    engine = create_db_engine(engine_url, **options)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())
    finally:
        engine.dispose()


def test_sqlite_is_normal_by_default_and_full_when_durable_as_for_the_receiver(
    sqlite_url: str, tmp_path: Path
) -> None:
    assert _synchronous(sqlite_url) == 1  # NORMAL
    assert _synchronous(sqlite_url, durable=True) == 2  # FULL
    receiver = _engine_for(ReceiverSettings(database_url=sqlite_url, spool_dir=tmp_path))
    try:
        with receiver.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2
    finally:
        receiver.dispose()


def _error_of(engine_url: str, statement: str, **connect_args: object) -> SQLAlchemyError:
    engine = create_engine(engine_url, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            try:
                conn.execute(text(statement))
            except SQLAlchemyError as exc:
                return exc
        raise AssertionError(f"{statement!r} did not fail")
    finally:
        engine.dispose()


def test_sqlite_errors_that_mean_not_now_and_those_that_mean_wrong(sqlite_url: str) -> None:
    path = make_url(sqlite_url).database
    read_only = f"sqlite:///file:{path}?mode=ro&uri=true"
    assert is_unavailable(_error_of(read_only, "DELETE FROM export_requests"))  # SQLITE_READONLY
    assert not is_unavailable(_error_of(sqlite_url, "SELECT * FROM no_such_table"))  # our mistake
    locked = sqlite3.connect(path)
    locked.execute("BEGIN IMMEDIATE")
    try:
        busy = _error_of(sqlite_url, "DELETE FROM export_requests", timeout=0.05)
    finally:
        locked.rollback()
        locked.close()
    assert is_unavailable(busy)  # SQLITE_BUSY


@pytest.mark.postgres
def test_postgres_errors_that_mean_not_now_and_those_that_mean_wrong(pg_url: str) -> None:
    assert not is_unavailable(_error_of(pg_url, "SELECT * FROM no_such_table"))
    assert not is_unavailable(_error_of(pg_url, "SELECT 1/0"))
    read_only = {"options": "-c default_transaction_read_only=on"}  # as on a standby
    assert is_unavailable(_error_of(pg_url, "DELETE FROM export_requests", **read_only))
    assert is_unavailable(_error_of(pg_url, "SELECT pg_terminate_backend(pg_backend_pid())"))
    unreachable = make_url(pg_url).set(port=1)
    with pytest.raises(DBAPIError) as refused:
        create_engine(unreachable).connect()
    assert is_unavailable(refused.value)
