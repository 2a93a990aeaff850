"""The warehouse on its own, on real databases: a merge inside its caller's transaction, failed loads, the
counts type, and what it reads back for the page (the pipeline's whole load is ``integration/``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, insert, select

from cloudagent_etl import warehouse
from cloudagent_etl.errors import PayloadError
from cloudagent_etl.normalize import SecretValues
from cloudagent_etl.personal_data.phones import PseudonymKey
from cloudagent_etl.settings import LoadSettings
from cloudagent_etl.warehouse.tables import dial_status, dial_status_rejects, load_runs
from tests.factories import record

STARTED = datetime(2024, 5, 3, tzinfo=UTC)


@dataclass(frozen=True)
class Payload:
    """A payload as the warehouse sees it (landing's LandedPayload has the same shape)."""

    payload_id: int = 7
    request_id: str = "request-1"
    account: str = "acme"
    content_type: str | None = "application/json"
    timezone: str = "Asia/Kolkata"
    campaign_name: str = "Sales"


def merge(conn, records: list[dict] | bytes, payload: Payload = Payload()) -> warehouse.LoadCounts:
    body = records if isinstance(records, bytes) else json.dumps(records).encode()
    return warehouse.merge_payload(
        conn,
        payload,
        io.BytesIO(body),
        started=STARTED,
        secrets=SecretValues(),
        settings=LoadSettings(),
        pseudonym_key=PseudonymKey.from_env(),
    )


def count(engine: Engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_a_merge_writes_rows_rejects_and_its_load_run_in_the_callers_transaction(engine: Engine) -> None:
    records = [record("1", "2024-05-01 10:00:00"), record("1", "2024-05-01 11:00:00"), record("2", "bad")]
    with engine.connect() as conn:
        counts = merge(conn, records)
        conn.rollback()  # the caller decides: nothing stays
    assert (count(engine, dial_status), count(engine, dial_status_rejects), count(engine, load_runs)) == (
        0,
        0,
        0,
    )
    assert (counts.rows_in, counts.inserted, counts.duplicates, counts.rejected, counts.payloads) == (
        3,
        1,
        1,
        1,
        1,
    )

    with engine.begin() as conn:
        merge(conn, records)
    with engine.connect() as conn:
        run = conn.execute(select(load_runs)).one()
        current = conn.execute(select(dial_status.c.record_key, dial_status.c.load_run_id)).one()
    assert (run.status, run.payload_id, run.request_id, run.rows_in, run.rejected) == (
        "loaded", 7, "request-1", 3, 1,
    )  # fmt: skip
    assert current == ("1", run.load_run_id)


def test_an_unparseable_body_raises_and_its_failure_is_recorded_on_its_own(engine: Engine) -> None:
    with pytest.raises(PayloadError, match="not valid JSON"), engine.begin() as conn:
        merge(conn, b"[{not json")
    assert count(engine, load_runs) == 0  # rolled back with the merge
    counts = warehouse.record_failed_load(engine, Payload(), "x" * 3000, started=STARTED, seconds=0.5)
    with engine.connect() as conn:
        run = conn.execute(select(load_runs)).one()
    assert (run.status, run.started_at, len(run.error)) == ("failed", STARTED, len(counts.error or ""))
    assert run.error.endswith("... [1000 more chars]")
    assert (counts.payloads, counts.failed_payloads, counts.loads) == (1, 1, 0)


def _open_key_hash_files() -> int:
    """Files this process holds open that a merge made to keep key hashes (unlinked: "(deleted)")."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is closed by then
            found += "cloudagent-keys-" in os.readlink(f"/proc/self/fd/{fd}")
    return found


def test_a_load_that_fails_after_its_first_batches_leaves_no_key_hash_file_open(engine: Engine) -> None:
    """Batches of two records: three are staged (their key hashes kept in temporary files) before the body
    turns out not to be JSON; the load fails, and the files are closed with it."""
    good = [record(str(index), "2024-05-01 10:00:00") for index in range(6)]
    body = json.dumps(good).encode()[:-1] + b", {not json"
    before = _open_key_hash_files()
    with pytest.raises(PayloadError, match="not valid JSON"), engine.begin() as conn:
        warehouse.merge_payload(
            conn,
            Payload(),
            io.BytesIO(body),
            started=STARTED,
            secrets=SecretValues(),
            settings=LoadSettings(),
            pseudonym_key=PseudonymKey.from_env(),
            batch_size=2,
        )
    assert _open_key_hash_files() == before
    with engine.begin() as conn:  # and the same records load in full when the body is whole
        counts = merge(conn, good)
    assert (counts.inserted, counts.rows_in) == (6, 6)
    assert _open_key_hash_files() == before


def test_records_of_another_campaign_than_the_exports_are_rejected(engine: Engine) -> None:
    with engine.begin() as conn:
        counts = merge(conn, [record("1", "2024-05-01 10:00:00", CampaignName="Other")])
    assert (counts.inserted, counts.rejected) == (0, 1)


def test_load_counts_add_up_and_keep_the_last_load_and_every_error() -> None:
    first = warehouse.LoadCounts(payloads=1, rows_in=3, inserted=2, seconds=1.0, last_loaded_at=STARTED)
    failed = warehouse.LoadCounts(payloads=1, failed_payloads=1, error="payload 2: not JSON", seconds=0.5)
    later = warehouse.LoadCounts(
        payloads=1, rows_in=1, updated=1, error="x", last_loaded_at=STARTED + timedelta(1)
    )
    total = first + failed + later
    assert (total.payloads, total.failed_payloads, total.loads, total.rows_in) == (3, 1, 2, 4)
    assert (total.inserted, total.updated, total.seconds) == (2, 1, 1.5)
    assert (total.error, total.last_loaded_at) == ("payload 2: not JSON; x", STARTED + timedelta(1))


def test_what_the_page_reads_back_are_the_load_runs_and_rejects_of_each_request(engine: Engine) -> None:
    with engine.begin() as conn:
        merge(conn, [record("1", "2024-05-01 10:00:00"), record("2", "bad"), record("3", "bad")])
        merge(conn, [record("1", "2024-05-01 12:00:00")], Payload(payload_id=8))
        merge(conn, [record("9", "2024-05-01 10:00:00")], Payload(payload_id=9, request_id="request-2"))
    warehouse.record_failed_load(engine, Payload(payload_id=10), "broken", started=STARTED, seconds=1.0)

    counts = warehouse.load_counts_by_request(engine, ["request-1", "request-2", "never-loaded"])
    assert sorted(counts) == ["request-1", "request-2"]
    mine = counts["request-1"]
    assert (mine.payloads, mine.failed_payloads, mine.rows_in) == (3, 1, 4)
    assert (mine.inserted, mine.updated, mine.rejected) == (1, 1, 2)
    assert mine.last_loaded_at is not None
    (rejects,) = warehouse.reject_counts(engine, ["request-1", "request-2"])
    assert (rejects.request_id, rejects.records) == ("request-1", 2)
    assert "updated_at" in rejects.reason
    assert warehouse.key_problems(engine, ["Sales"]) == []


def test_key_problems_name_empty_keys(engine: Engine) -> None:
    row = {
        "account": "acme", "campaign_name": "Sales", "record_key": "", "updated_at": STARTED,
        "request_id": "r", "payload_id": 1, "load_run_id": 1, "loaded_at": STARTED,
    }  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(dial_status).values(row))
    assert warehouse.key_problems(engine, ["Sales"]) == [
        "dial_status has 1 rows with an empty account, campaign_name or record_key"
    ]


def test_two_accounts_with_a_campaign_of_one_name_keep_their_rows_and_their_locks_apart(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        merge(conn, [record("1", "2024-05-01 10:00:00", Disposition="acme's")])
        merge(conn, [record("1", "2024-05-01 10:00:00", Disposition="globex's")], Payload(account="globex"))
    with engine.connect() as conn:
        rows = conn.execute(
            select(dial_status.c.account, dial_status.c.disposition).order_by("account")
        ).all()
        runs = conn.execute(select(load_runs.c.account).order_by(load_runs.c.load_run_id)).scalars().all()
    assert rows == [("acme", "acme's"), ("globex", "globex's")]
    assert runs == ["acme", "globex"]
    lock = warehouse.MERGE_SPEC.lock_key
    assert lock(("acme", "Sales")) != lock(("globex", "Sales")) == lock(("globex", "Sales"))
