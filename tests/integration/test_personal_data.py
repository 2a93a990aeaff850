"""Erasure on request, suppression, retention and the analyst role, on real databases with deliveries made
through the real receiver (JSON, form-encoded, multipart and gzip bodies)."""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, MetaData, select, text

from cloudagent_etl import landing, pipeline
from cloudagent_etl.databases import database_for
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.forms import percent_decoded
from cloudagent_etl.personal_data.erasure import erase
from cloudagent_etl.personal_data.phones import PhoneNumberError, PseudonymKey, written_forms
from cloudagent_etl.personal_data.retention import RetentionSettings, purge
from tests.factories import new_request
from tests.fixtures.receiver import ReceiverHandle
from tests.timing import wait_until

KEY = PseudonymKey.from_env()
REGION = "IN"
PERSON = "+919876543210"
#: How the person's number is written in the deliveries: every common writing.
WRITINGS = ("9876543210", "+91 98765 43210", "098765-43210", "+91-98765-43210")
CAMPAIGNS = ("Sales", "Support", "Renewals")


def record(key: str, phone: str, updated: str, campaign: str, **fields: str) -> dict[str, str]:
    return {
        "CampaignName": campaign,
        "DataUniqueId": key,
        "PhoneNumber": phone,
        "Name": f"Customer {key}",
        "DialStatus": "answered",
        "UpdatedDate": updated,
        "City": "Pune",
        **fields,
    }


def others(campaign: str, updated: str, count: int = 3) -> list[dict[str, str]]:
    return [record(f"{campaign}-O{i}", f"91234567{i:02d}", updated, campaign) for i in range(count)]


def deliver(receiver: ReceiverHandle, new: landing.NewExportRequest, records: list[Any], shape: str) -> int:
    """POST ``records`` as CloudAgent would, in one of the body shapes; the stored payload's id."""
    document = json.dumps({"uniqueId": "U-1", "records": records}).encode()
    headers: dict[str, str] = {}
    if shape == "json":
        body, content_type = json.dumps(records).encode(), "application/json"
    elif shape == "form":
        body = urllib.parse.urlencode({"uniqueId": "U-1", "data": document.decode()}).encode()
        content_type = "application/x-www-form-urlencoded"
    elif shape == "multipart":
        body = (
            b'--B0undary\r\nContent-Disposition: form-data; name="data"\r\n\r\n'
            + document
            + b"\r\n--B0undary--\r\n"
        )
        content_type = "multipart/form-data; boundary=B0undary"
    else:
        body, content_type = gzip.compress(json.dumps(records).encode()), "application/json"
        headers["Content-Encoding"] = "gzip"
    response = httpx.post(
        receiver.callback_url(new),
        content=body,
        headers={"Content-Type": content_type, **headers},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return int(response.json()["payload_id"])


def land_everything(receiver: ReceiverHandle, engine: Engine) -> dict[str, landing.NewExportRequest]:
    """The person in three campaigns, in every body shape, in history (two versions) and in the rejects."""
    requests = {campaign: new_request(engine, campaign) for campaign in CAMPAIGNS}
    later = new_request(
        engine, "Sales", window=(datetime(2025, 6, 2, 22, tzinfo=UTC), datetime(2025, 6, 3, 22, tzinfo=UTC))
    )
    requests["Sales-later"] = later
    deliver(
        receiver,
        requests["Sales"],
        [record("P", WRITINGS[0], "2025-06-02 10:00:00", "Sales"), *others("Sales", "2025-06-02 10:00:00")],
        "json",
    )
    deliver(
        receiver,
        later,
        [record("P", WRITINGS[1], "2025-06-03 11:00:00", "Sales"), *others("Sales", "2025-06-03 11:00:00")],
        "form",
    )
    deliver(receiver, requests["Support"], [
        record("P", WRITINGS[2], "2025-06-02 10:00:00", "Support"),
        record("P-bad", WRITINGS[3], "not a time", "Support"),  # rejected: its raw record holds the number
        record("O-bad", "9123456799", "not a time", "Support"),  # another person's reject: stays
        *others("Support", "2025-06-02 10:00:00"),
    ], "multipart")  # fmt: skip
    deliver(receiver, requests["Renewals"], [
        record("P", WRITINGS[3], "2025-06-02 10:00:00", "Renewals"),
        *others("Renewals", "2025-06-02 10:00:00"),
    ], "gzip")  # fmt: skip
    for new in requests.values():
        pipeline.load_request(engine, new.request_id, pseudonym_key=KEY)
    return requests


def every_table(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    reflected = MetaData()
    reflected.reflect(engine)
    with engine.connect() as conn:
        return {
            str(name): [
                {str(column): value for column, value in row._mapping.items()}
                for row in conn.execute(select(table))
            ]
            for name, table in reflected.tables.items()
        }


def _text(value: Any) -> str:
    if isinstance(value, bytes | memoryview):
        raw = bytes(value)
        return "\n".join((raw.decode("utf-8", "replace"), percent_decoded(raw).decode("utf-8", "replace")))
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def traces_of_person(engine: Engine) -> list[str]:
    """Where any writing of the person's number appears: any column of any table, and every raw body decoded
    (form bodies percent-decoded; gzip bodies were decoded when they landed)."""
    forms = [*written_forms(PERSON), *WRITINGS, "+91+98765+43210", "%2B91%2098765%2043210"]
    found = []
    for table, rows in every_table(engine).items():
        for row in rows:
            for column, value in row.items():
                shown = _text(value)
                found += [f"{table}.{column}: {form}" for form in forms if form in shown]
    with engine.connect() as conn:
        for payload_id in landing.payload_ids_with_bodies(conn):
            body = _text(b"".join(landing.iter_payload_body(conn, payload_id)))
            found += [f"body of payload {payload_id}: {form}" for form in forms if form in body]
    return found


def digests(engine: Engine, tables: tuple[str, ...], *, without: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """Per table, a digest of each row (the columns ``without`` left out)."""
    everything = every_table(engine)
    return {
        table: {
            hashlib.sha256(
                orjson.dumps(
                    {column: value for column, value in row.items() if column not in without},
                    default=str,
                    option=orjson.OPT_SORT_KEYS,
                )
            ).hexdigest()
            for row in everything[table]
        }
        for table in tables
    }


def rejects_point_at_their_records(engine: Engine) -> None:
    """Each reject's position is that of its record in its payload's (possibly rewritten) body."""
    from cloudagent_etl.normalize import iter_records

    with engine.connect() as conn:
        rejects = conn.execute(text("SELECT payload_id, position, raw_record FROM dial_status_rejects")).all()
        for payload_id, position, raw_record in rejects:
            content_type = conn.execute(
                text("SELECT content_type FROM callback_payloads WHERE payload_id = :p"), {"p": payload_id}
            ).scalar_one()
            records = list(iter_records(b"".join(landing.iter_payload_body(conn, payload_id)), content_type))
            stored = raw_record if isinstance(raw_record, dict) else json.loads(raw_record)
            assert records[position]["DataUniqueId"] == stored["DataUniqueId"]


@pytest.fixture
def receiver_engine(receiver: ReceiverHandle) -> Iterator[Engine]:
    engine = create_db_engine(receiver.db_url)
    yield engine
    engine.dispose()


WAREHOUSE = ("dial_status", "dial_status_superseded", "dial_status_rejects")


def test_an_erasure_removes_the_person_everywhere_and_keeps_them_out_of_later_loads(
    receiver: ReceiverHandle,
    receiver_engine: Engine,
) -> None:
    engine = receiver_engine
    requests = land_everything(receiver, engine)
    assert traces_of_person(engine), "the scan found nothing before the erasure: it proves nothing"
    everything_before = digests(engine, tuple(every_table(engine)))

    dry = erase(engine, "+91 98765 43210", key=KEY, region=REGION, dry_run=True)
    assert dict(dry.counts) == {
        "raw_bodies": 5,
        "dial_status": 3,
        "dial_status_superseded": 1,
        "dial_status_rejects": 1,
    }
    assert digests(engine, tuple(every_table(engine))) == everything_before, "a dry run changed something"

    with engine.connect() as conn:  # the rows of everyone else, before
        # A reject's position follows its record in the rewritten body (checked below): not compared.
        others_before = digests(engine, WAREHOUSE, without=("position",))
        theirs = {
            table: len(
                conn.execute(
                    text(f"SELECT 1 FROM {table} WHERE phone_pseudonym = :p"), {"p": KEY.pseudonym(PERSON)}
                ).all()
            )
            for table in ("dial_status", "dial_status_superseded")
        }
    assert theirs == {"dial_status": 3, "dial_status_superseded": 1}

    report = erase(
        engine, "098765-43210", key=KEY, region=REGION, requested_by="dpo@example.com", reason="ticket 42"
    )
    assert dict(report.counts) == dict(dry.counts)
    assert report.receipt_id is not None
    assert traces_of_person(engine) == []
    after = digests(engine, WAREHOUSE, without=("position",))
    rejects_point_at_their_records(engine)
    for table in WAREHOUSE:  # everyone else's rows are exactly as they were
        assert after[table] <= others_before[table], table
        assert len(others_before[table]) - len(after[table]) == dry.counts[table], table
    with engine.connect() as conn:
        receipt = conn.execute(
            text("SELECT phone_pseudonym, requested_by, reason FROM erasure_receipts")
        ).one()
        suppressed = conn.execute(text("SELECT phone_pseudonym, receipt_id FROM suppressed_pseudonyms")).one()
    assert tuple(receipt) == (KEY.pseudonym(PERSON), "dpo@example.com", "ticket 42")
    assert tuple(suppressed) == (KEY.pseudonym(PERSON), report.receipt_id)

    again = erase(engine, "9876543210", key=KEY, region=REGION)
    assert (again.removed, again.receipt_id, again.earlier_receipt_id) == (0, None, report.receipt_id)

    # A reprocess of every window reproduces the warehouse minus the person.
    warehouse_before = digests(engine, WAREHOUSE)
    for new in requests.values():
        pipeline.load_request(engine, new.request_id, pseudonym_key=KEY)
    assert digests(engine, WAREHOUSE) == warehouse_before

    # A late callback holding the person: everything else loads, the person is kept out and counted, and
    # the landed copy is rewritten without them.
    late = [
        record("P", "+91 98765 43210", "2025-06-03 12:00:00", "Sales"),
        record("New", "9123456788", "2025-06-03 12:00:00", "Sales"),
    ]
    payload_id = deliver(receiver, requests["Sales-later"], late, "json")
    counts = pipeline.load_payload(engine, payload_id, pseudonym_key=KEY)
    assert (counts.inserted, counts.erased, counts.rejected) == (1, 1, 1)
    assert traces_of_person(engine) == []
    with engine.connect() as conn:
        note = conn.execute(
            text("SELECT body_rewrite_note FROM callback_payloads WHERE payload_id = :p"), {"p": payload_id}
        ).scalar_one()
        erased_rejects = conn.execute(
            text("SELECT COUNT(*) FROM dial_status_rejects WHERE payload_id = :p"), {"p": payload_id}
        ).scalar_one()
    assert "1 record(s) removed (erased on request" in note
    assert erased_rejects == 0  # counted, never stored: a reject row would hold the person


def test_a_number_that_cannot_be_read_is_refused_and_changes_nothing(
    receiver: ReceiverHandle, receiver_engine: Engine
) -> None:
    engine = receiver_engine
    land_everything(receiver, engine)
    before = digests(engine, tuple(every_table(engine)))
    for bad in ("12", "not a number", "", "+999 1234"):
        with pytest.raises(PhoneNumberError, match="cannot be read as a phone number in region IN") as raised:
            erase(engine, bad, key=KEY, region=REGION)
        assert bad.strip() == "" or bad not in str(raised.value)
    assert digests(engine, tuple(every_table(engine))) == before


def test_an_erasure_that_fails_half_way_leaves_nothing_half_erased(
    receiver: ReceiverHandle, receiver_engine: Engine, db_kind: str
) -> None:
    engine = receiver_engine
    land_everything(receiver, engine)
    before = digests(engine, tuple(every_table(engine)))
    with engine.begin() as conn:  # the receipt, written last, fails
        if db_kind == "postgres":
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON erasure_receipts "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON erasure_receipts "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
    with pytest.raises(Exception, match="disk full"):
        erase(engine, PERSON, key=KEY, region=REGION)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "DROP TRIGGER refuse" + (" ON erasure_receipts" if db_kind == "postgres" else "")
        )
    assert digests(engine, tuple(every_table(engine))) == before
    assert traces_of_person(engine)


def test_an_erasure_waits_for_a_running_load_and_then_removes_what_it_wrote(
    receiver: ReceiverHandle, receiver_engine: Engine, db_kind: str
) -> None:
    """A load holds the personal-data lock until it commits; without the lock the erasure would run past the
    load's uncommitted row and the person would stay in dial_status."""
    engine = receiver_engine
    database = database_for(engine)
    land_everything(receiver, engine)
    with database.write_transaction(engine) as load:  # a load, mid-way: it has written, holds the lock
        load.execute(
            text(
                "INSERT INTO load_runs (account, request_id, payload_id, status, started_at, finished_at, "
                "rows_in, inserted, updated, unchanged, duplicates, rejected, seconds) "
                "VALUES ('test_user', 'r', 1, 'loaded', :t, :t, 0, 0, 0, 0, 0, 0, 0)"
            ),
            {"t": database.stored_time(datetime.now(UTC))},
        )
        database.hold_personal_data_lock(load, exclusive=False)
        load.execute(
            text(
                "INSERT INTO dial_status (account, campaign_name, record_key, phone_number, phone_e164, "
                "phone_pseudonym, updated_at, request_id, payload_id, load_run_id, loaded_at) "
                "VALUES ('test_user', 'Sales', 'racing', '919876543210', :e164, :pseudonym, :t, 'r', 1, 1, "
                ":t)"
            ),
            {
                "e164": PERSON,
                "pseudonym": KEY.pseudonym(PERSON),
                "t": database.stored_time(datetime.now(UTC)),
            },
        )
        result: dict[str, Any] = {}
        eraser = threading.Thread(
            target=lambda: result.update(report=erase(engine, PERSON, key=KEY, region=REGION))
        )
        eraser.start()
        if db_kind == "postgres":  # the erasure is seen waiting on the lock
            with engine.connect() as probe:
                wait_until(
                    "the erasure waits on the personal-data lock",
                    lambda: (
                        probe.execute(
                            text(
                                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                                "AND database = "
                                "(SELECT oid FROM pg_database WHERE datname = current_database())"
                            )
                        ).scalar_one()
                        == 1
                    ),
                )
        assert eraser.is_alive()
    eraser.join()
    assert result["report"].counts["dial_status"] == 4
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT COUNT(*) FROM dial_status WHERE record_key = 'racing'")).scalar_one()
            == 0
        )


def test_retention_purges_what_is_older_than_the_setting_and_a_reprocess_names_the_purge(
    receiver: ReceiverHandle,
    receiver_engine: Engine,
) -> None:
    engine = receiver_engine
    requests = land_everything(receiver, engine)
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)  # the clock of the purge
    old, recent = requests["Support"].request_id, requests["Sales"].request_id
    database = database_for(engine)
    with engine.begin() as conn:  # the Support delivery and its rejects 31 days old, everything else 29
        for request_id, age in (
            (old, 31),
            *((r.request_id, 29) for k, r in requests.items() if k != "Support"),
        ):
            at = database.stored_time(now - timedelta(days=age))
            conn.execute(
                text("UPDATE callback_payloads SET received_at = :at WHERE request_id = :r"),
                {"at": at, "r": request_id},
            )
            conn.execute(
                text("UPDATE dial_status_rejects SET rejected_at = :at WHERE request_id = :r"),
                {"at": at, "r": request_id},
            )
    settings = RetentionSettings.from_env({"CLOUDAGENT_RAW_RETENTION_DAYS": "30"})
    rows_before = digests(engine, ("dial_status", "dial_status_superseded"))

    dry = purge(engine, settings, now=now, dry_run=True)
    assert (dry.bodies, dry.reject_raw_records, dry.superseded_versions) == (1, 2, 0)
    report = purge(engine, settings, now=now)
    assert (report.bodies, report.reject_raw_records) == (1, 2)
    assert purge(engine, settings, now=now).bodies == 0  # nothing left to purge

    with engine.connect() as conn:
        payloads = conn.execute(
            text(
                "SELECT request_id, body_purged_at IS NOT NULL, purge_setting, size_bytes > 0, "
                "(SELECT COUNT(*) FROM callback_payload_chunks c WHERE c.payload_id = p.payload_id) "
                "FROM callback_payloads p"
            )
        ).all()
        rejects = (
            conn.execute(text("SELECT raw_purged_at IS NOT NULL FROM dial_status_rejects")).scalars().all()
        )
        coverage = conn.execute(
            text("SELECT loaded FROM export_coverage WHERE campaign_name = 'Support'")
        ).scalar_one()
    by_request = {row[0]: tuple(row[1:]) for row in payloads}
    assert [bool(by_request[old][0]), *by_request[old][1:]] == [
        True,
        "CLOUDAGENT_RAW_RETENTION_DAYS=30",
        True,
        0,
    ]
    assert all(not purged and chunks > 0 for r, (purged, _s, _z, chunks) in by_request.items() if r != old)
    assert [bool(purged) for purged in rejects] == [True, True]
    assert coverage == 1  # the window still counts as loaded
    assert digests(engine, ("dial_status", "dial_status_superseded")) == rows_before

    with pytest.raises(
        pipeline.RawDataPurged, match=r"purged on 2026-03-01 under CLOUDAGENT_RAW_RETENTION_DAYS=30"
    ):
        pipeline.load_request(engine, old, pseudonym_key=KEY)
    assert pipeline.load_request(engine, recent, pseudonym_key=KEY)["rows_in"] == 4
    assert landing.require_export_request(engine, old).state.value == "loaded"

    history = RetentionSettings.from_env({"CLOUDAGENT_HISTORY_RETENTION_DAYS": "1"})
    # The earlier Sales version of the person and of the three others.
    assert purge(engine, history, now=datetime.now(UTC) + timedelta(days=2)).superseded_versions == 4


@pytest.mark.parametrize("db_kind", ["postgres"], indirect=True)
def test_the_analyst_role_reads_the_views_and_nothing_that_holds_a_number(
    receiver: ReceiverHandle, receiver_engine: Engine
) -> None:
    engine = receiver_engine
    land_everything(receiver, engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("SET ROLE cloudagent_analyst")
        rows = conn.execute(
            text(
                "SELECT phone_pseudonym, phone_last4, customer_name_masked, custom_fields "
                "FROM analyst_dial_status WHERE lead_id = 'P' ORDER BY campaign_name"
            )
        ).all()
        assert rows == [(KEY.pseudonym(PERSON), "*3210", "C***", None)] * 3
        assert (
            conn.execute(text("SELECT COUNT(*) FROM analyst_dial_status_history")).scalar_one() == 16
        )  # 12 current rows, 4 superseded
        assert conn.execute(text("SELECT COUNT(*) FROM dial_status_daily_summary")).scalar_one() > 0
        conn.rollback()
        for table in (
            "dial_status",
            "dial_status_superseded",
            "dial_status_history",
            "dial_status_rejects",
            "callback_payloads",
            "callback_payload_chunks",
            "export_requests",
            "erasure_receipts",
        ):
            conn.exec_driver_sql("SET ROLE cloudagent_analyst")
            with pytest.raises(Exception, match="permission denied"):
                conn.execute(text(f"SELECT * FROM {table} LIMIT 1"))
            conn.rollback()


def test_the_allow_list_passes_only_its_custom_fields_and_views_built_on_it_keep_working(
    receiver: ReceiverHandle, receiver_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A view over the analyst view (dbt's staging model is one) does not stop the allow-list from changing:
    PostgreSQL refuses to drop a view another depends on, so the analyst views are replaced in place."""
    from cloudagent_etl.personal_data.analyst import analyst_fields, create_analyst_views

    engine = receiver_engine
    land_everything(receiver, engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE VIEW downstream_model AS SELECT lead_id, custom_fields FROM analyst_dial_status"
        )
    monkeypatch.setenv("CLOUDAGENT_ANALYST_FIELDS", "City, Missing")
    try:
        with engine.begin() as conn:
            create_analyst_views(conn, analyst_fields())
        with engine.connect() as conn:
            values = conn.execute(text("SELECT custom_fields FROM analyst_dial_status")).scalars().all()
            downstream = conn.execute(text("SELECT custom_fields FROM downstream_model")).scalars().all()
        parsed = [value if isinstance(value, dict) else json.loads(value) for value in values]
        assert parsed
        assert all(value == {"City": "Pune"} for value in parsed)
        assert [value if isinstance(value, dict) else json.loads(value) for value in downstream] == parsed
        with engine.begin() as conn:
            create_analyst_views(conn, ())
        with engine.connect() as conn:
            assert set(conn.execute(text("SELECT custom_fields FROM downstream_model")).scalars()) == {None}
    finally:  # the session's database outlives the test
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP VIEW downstream_model")
            create_analyst_views(conn, ())


def test_the_commands_erase_purge_and_rebuild_pseudonyms(
    receiver: ReceiverHandle,
    receiver_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cloudagent_etl.cli import main

    engine = receiver_engine
    land_everything(receiver, engine)
    monkeypatch.setenv("CLOUDAGENT_DB_URL", receiver.db_url)
    with engine.begin() as conn:  # rows as migration 0008 leaves those loaded before it
        conn.execute(text("UPDATE dial_status SET phone_e164 = NULL, phone_pseudonym = NULL"))
    assert main(["pseudonyms", "rebuild"]) == 0
    assert "pseudonyms rebuilt (dial_status: 12, dial_status_superseded: 4)" in capsys.readouterr().out
    with engine.connect() as conn:
        rebuilt = conn.execute(
            text("SELECT COUNT(*) FROM dial_status WHERE phone_pseudonym = :p"), {"p": KEY.pseudonym(PERSON)}
        ).scalar_one()
    assert rebuilt == 3

    assert main(["erase", "--phone", "12"]) == 2
    assert "cannot be read as a phone number" in capsys.readouterr().err
    assert main(["erase", "--phone", "+91 98765 43210", "--dry-run"]) == 0
    assert "dry run, nothing changed; would remove raw_bodies: 5" in capsys.readouterr().out
    assert main(["erase", "--phone", "+91 98765 43210", "--requested-by", "dpo", "--reason", "ticket 9"]) == 0
    out = capsys.readouterr().out
    assert f"pseudonym {KEY.pseudonym(PERSON)}: erased raw_bodies: 5" in out
    assert PERSON not in out

    # A new key would let the erased person back in: refused until the operator accepts it.
    monkeypatch.setenv("CLOUDAGENT_PSEUDONYM_KEY", "a-brand-new-pseudonym-key-after-a-leak")
    assert main(["pseudonyms", "rebuild"]) == 2
    assert "1 people erased on request are kept out of loads" in capsys.readouterr().err
    assert main(["pseudonyms", "rebuild", "--accept-unsuppressed"]) == 0
    capsys.readouterr()

    assert main(["purge", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would purge 0 raw bodies")
    monkeypatch.delenv("CLOUDAGENT_PSEUDONYM_KEY")
    assert main(["erase", "--phone", "9123456700"]) == 2
    assert "no pseudonym key: set CLOUDAGENT_PSEUDONYM_KEY" in capsys.readouterr().err
