"""The warehouse merge on real SQLite and PostgreSQL: newest wins, history, rejects, counts, atomicity."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text

from cloudagent_etl.db import create_db_engine
from cloudagent_etl.landing import RequestState, callback_payloads, export_requests
from cloudagent_etl.pipeline import load_payload, load_payloads
from cloudagent_etl.warehouse.tables import dial_status, dial_status_history, dial_status_rejects, load_runs
from tests import factories
from tests.factories import land, record

WINDOW = (datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC))


def new_request(engine: Engine) -> str:
    return factories.new_request(engine, window=WINDOW).request_id


def table_rows(engine: Engine, table: Any, drop: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    columns = [column for column in table.c if column.name not in drop]
    order = [column for column in table.primary_key.columns]
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(select(*columns).order_by(*order))]


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    tables = (
        dial_status,
        dial_status_history,
        dial_status_rejects,
        load_runs,
        export_requests,
        callback_payloads,
    )
    return {table.name: table_rows(engine, table) for table in tables}


def test_newer_wins_older_only_goes_to_history_and_counts_add_up(engine: Engine) -> None:
    request_id = new_request(engine)
    first = land(engine, request_id, [record("1", "2024-05-01 10:00:00"), record("2", "2024-05-01 10:00:00")])
    result = load_payload(engine, first)
    assert (result.rows_in, result.inserted, result.updated, result.unchanged) == (2, 2, 0, 0)

    second = land(
        engine,
        request_id,
        [
            record("1", "2024-05-01 12:00:00", Disposition="Callback"),  # newer: updates
            record("2", "2024-05-01 09:00:00", Disposition="Old"),  # older: history only
            record("3", "2024-05-01 09:00:00"),  # new
            record("3", "2024-05-01 09:30:00", Attempts="2"),  # newer duplicate in the payload
            record("4", "2024-05-01 09:00:00", Attempts="many"),  # rejected
        ],
    )
    result = load_payload(engine, second)
    assert (result.rows_in, result.inserted, result.updated, result.unchanged) == (5, 1, 1, 1)
    assert (result.duplicates, result.rejected) == (1, 1)

    current = {row["record_key"]: row for row in table_rows(engine, dial_status)}
    assert current["1"]["disposition"] == "Callback"
    assert current["1"]["previous_load_run_id"] == 1
    assert current["2"]["disposition"] is None
    assert current["3"]["attempts"] == 2
    assert current["2"]["updated_at"] == datetime(2024, 5, 1, 4, 30, tzinfo=UTC)
    history = [
        (row["record_key"], row["updated_at"].hour, row["updated_at"].minute)
        for row in table_rows(engine, dial_status_history)
    ]
    assert history == [("1", 4, 30), ("1", 6, 30), ("2", 3, 30), ("2", 4, 30), ("3", 3, 30), ("3", 4, 0)]
    [reject] = table_rows(engine, dial_status_rejects)
    assert (reject["payload_id"], reject["position"], reject["reason"]) == (
        second,
        4,
        "attempts: not a count",
    )
    assert "Apikey" not in reject["raw_record"]
    assert reject["raw_record"]["DataUniqueId"] == "4"
    assert factories.state_of(engine, request_id) is RequestState.LOADED


def test_the_api_key_is_in_no_warehouse_table(engine: Engine) -> None:
    request_id = new_request(engine)
    load_payload(engine, land(engine, request_id, [record("1", "2024-05-01 10:00:00"), record("2", "bad")]))
    dump = json.dumps(
        {name: rows for name, rows in snapshot(engine).items() if name != "callback_payloads"}, default=str
    )
    assert "secret-api-key" not in dump


def test_loading_the_same_payload_twice_changes_nothing_the_second_time(engine: Engine) -> None:
    request_id = new_request(engine)
    payload = land(
        engine, request_id, [record(str(i), "2024-05-01 10:00:00") for i in range(20)] + [record("x", "")]
    )
    load_payload(engine, payload)
    before = snapshot(engine)
    again = load_payload(engine, payload)
    assert (again.inserted, again.updated, again.unchanged, again.rejected) == (0, 0, 20, 1)
    after = snapshot(engine)
    assert len(after["load_runs"]) == 2
    for name in ("dial_status", "dial_status_history", "dial_status_rejects"):
        assert after[name] == before[name]


def test_same_updated_at_with_other_values_replaces_the_version_everywhere(engine: Engine) -> None:
    request_id = new_request(engine)
    load_payload(engine, land(engine, request_id, [record("1", "2024-05-01 10:00:00", Disposition="A")]))
    result = load_payload(
        engine, land(engine, request_id, [record("1", "2024-05-01 10:00:00", Disposition="B")])
    )
    assert result.updated == 1
    assert [row["disposition"] for row in table_rows(engine, dial_status)] == ["B"]
    assert [row["disposition"] for row in table_rows(engine, dial_status_history)] == ["B"]


def _fail_on_key(engine: Engine, key: str, message: str = "injected failure") -> None:
    """A real database failure mid-load: a trigger that aborts when a given (new) key reaches dial_status."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql"
                f" AS $$ BEGIN RAISE EXCEPTION '{message}'; END $$"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER boom BEFORE INSERT ON dial_status FOR EACH ROW "
                f"WHEN (NEW.record_key = '{key}') EXECUTE FUNCTION boom()"
            )
        else:
            conn.exec_driver_sql(
                f"CREATE TRIGGER boom BEFORE INSERT ON dial_status WHEN NEW.record_key = '{key}' "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )


def test_a_failure_mid_load_leaves_the_database_as_before_but_records_the_failed_load(engine: Engine) -> None:
    request_id = new_request(engine)
    load_payload(engine, land(engine, request_id, [record("0", "2024-05-01 08:00:00")]))
    records = [record(str(i), "2024-05-01 10:00:00") for i in range(30)] + [record("bad", "nope")]
    payload = land(engine, request_id, records)
    _fail_on_key(engine, "25")
    before = snapshot(engine)
    with pytest.raises(Exception, match="injected failure"):
        load_payload(engine, payload, batch_size=10)  # batches 0-9 and 10-19 merged before it fails
    after = snapshot(engine)
    [failed] = [run for run in after.pop("load_runs") if run["payload_id"] == payload]
    counts = (failed["rows_in"], failed["inserted"], failed["rejected"])
    assert (failed["status"], counts) == ("failed", (0, 0, 0))
    assert "injected failure" in failed["error"]
    before.pop("load_runs")
    assert after == before  # nothing merged, the payload still pending, the request still received


def test_an_error_that_quotes_the_api_key_is_recorded_and_raised_redacted(engine: Engine) -> None:
    request_id = new_request(engine)
    payload = land(engine, request_id, [record("1", "2024-05-01 10:00:00")])
    _fail_on_key(engine, "1", message="quota exceeded for key secret-api-key")
    with pytest.raises(RuntimeError) as raised:
        load_payload(engine, payload, secrets=["secret-api-key"])
    assert "quota exceeded for key ***" in str(raised.value)
    assert "secret-api-key" not in str(raised.value)
    assert raised.value.__suppress_context__  # a traceback does not print the original error
    [run] = table_rows(engine, load_runs)
    assert run["status"] == "failed"
    assert "quota exceeded for key ***" in run["error"]
    assert "secret-api-key" not in run["error"]


def test_an_unparseable_payload_is_a_failed_load_not_a_crash(engine: Engine) -> None:
    request_id = new_request(engine)
    payload = land(engine, request_id, b'[{"CampaignName": "Sales"}, {"trunc', "application/json")
    result = load_payloads(engine, request_id)
    assert (result.failed_payloads, result.payloads) == (1, 1)
    assert "not valid JSON" in (result.error or "")
    [run] = table_rows(engine, load_runs)
    assert (run["status"], run["payload_id"], run["rows_in"]) == ("failed", payload, 0)
    assert "not valid JSON" in run["error"]
    assert table_rows(engine, dial_status) == []
    with engine.connect() as conn:
        assert conn.scalar(select(callback_payloads.c.parse_state)) == "failed"
    assert factories.state_of(engine, request_id) is RequestState.FAILED


def test_views_summarise_per_campaign_and_ist_day(engine: Engine) -> None:
    request_id = new_request(engine)
    records = [
        record("1", "2024-05-01 23:00:00", Attempts="3"),  # IST day 2024-05-01 (17:30 UTC)
        record("2", "2024-05-01 23:30:00", DialStatus="answered -> NoAnswer", Disposition="Busy"),
    ]
    load_payload(engine, land(engine, request_id, records))
    with engine.connect() as conn:
        summary = conn.execute(
            text(
                "SELECT campaign_name, leads, attempts, answered, answer_rate FROM dial_status_daily_summary"
            )
        ).all()
        day = conn.scalar(text("SELECT day_ist FROM dial_status_daily_summary"))
        coverage = conn.execute(text("SELECT requests, received, loaded, missing FROM export_coverage")).all()
    assert [tuple(row) for row in summary] == [("Sales", 2, 4, 1, 0.5)]
    assert str(day) == "2024-05-01"
    assert [tuple(row) for row in coverage] == [(1, 1, 1, 0)]


# ------------------------------------------------------------------------------------ properties
KEYS = ("k1", "k2", "k3")
TIMES = ("2024-05-01 10:00:00", "2024-05-01 11:00:00", "2024-05-01 12:00:00")
record_strategy = st.builds(
    lambda key, when, disposition: record(key, when, Disposition=disposition),
    st.sampled_from(KEYS),
    st.sampled_from(TIMES),
    st.sampled_from(("A", "B", "")),
)
payloads_strategy = st.lists(st.lists(record_strategy, min_size=1, max_size=6), min_size=1, max_size=4)


def expected_state(payloads: list[list[dict[str, str]]]) -> tuple[dict[str, tuple], dict[tuple, str | None]]:
    """Independent model: per key the last-seen row of the greatest updated_at; per version the last seen."""
    current: dict[str, tuple[str, str | None]] = {}
    versions: dict[tuple[str, str], str | None] = {}
    for payload in payloads:
        for rec in payload:
            disposition = rec["Disposition"] or None
            versions[(rec["DataUniqueId"], rec["UpdatedDate"])] = disposition
            stored = current.get(rec["DataUniqueId"])
            if stored is None or rec["UpdatedDate"] >= stored[0]:
                current[rec["DataUniqueId"]] = (rec["UpdatedDate"], disposition)
    return current, versions


def ist_text(value: datetime) -> str:
    return (
        value.astimezone(UTC).replace(tzinfo=None) + (datetime(1, 1, 1, 5, 30) - datetime(1, 1, 1))
    ).strftime("%Y-%m-%d %H:%M:%S")


@pytest.mark.parametrize("batch_size", [2, 1000])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=payloads_strategy)
def test_final_state_is_the_latest_version_per_key(
    db_url: str, batch_size: int, payloads: list[list[dict[str, str]]]
) -> None:
    engine = create_db_engine(db_url)
    try:
        with engine.begin() as conn:
            for table in ("dial_status", "dial_status_superseded"):
                conn.exec_driver_sql(f"DELETE FROM {table}")
        request_id = new_request(engine)
        for index, payload in enumerate(payloads):
            body = json.dumps([{**rec, "Nonce": str(index)} for rec in payload]).encode()
            load_payload(engine, land(engine, request_id, body), batch_size=batch_size)
        current, versions = expected_state(payloads)
        got_current = {
            row["record_key"]: (ist_text(row["updated_at"]), row["disposition"])
            for row in table_rows(engine, dial_status)
        }
        got_versions = {
            (row["record_key"], ist_text(row["updated_at"])): row["disposition"]
            for row in table_rows(engine, dial_status_history)
        }
        assert got_current == current
        assert got_versions == versions
        assert len(table_rows(engine, dial_status_history)) == len(versions)
    finally:
        engine.dispose()


def test_sqlite_and_postgresql_give_identical_rows(sqlite_url: str, pg_url: str) -> None:
    payloads = [
        [
            record(str(i), f"2024-05-0{1 + i % 3} 1{i % 10}:00:00", City=f"c{i}", Name=f"n{i}")
            for i in range(40)
        ],
        [
            record(str(i), "2024-05-02 10:00:00", Disposition="D", Duration="00:01:05")
            for i in range(0, 40, 3)
        ],
        [
            record("x", "bad"),
            {
                "CampaignName": "Sales",
                "PhoneNumber": "09876543210",
                "CreatedDate": "2024-05-01 01:00:00",
                "UpdatedDate": "2024-05-01 02:00:00",
            },
        ],
    ]
    results = {}
    for url in (sqlite_url, pg_url):
        engine = create_db_engine(url)
        request_id = new_request(engine)
        for payload in payloads:
            load_payload(engine, land(engine, request_id, payload))
        lineage = ("loaded_at", "request_id", "rejected_at")
        results[url] = {
            table.name: table_rows(engine, table, drop=lineage)
            for table in (dial_status, dial_status_history, dial_status_rejects)
        }
        results[url]["counts"] = [
            {
                k: v
                for k, v in row.items()
                if k in ("rows_in", "inserted", "updated", "unchanged", "duplicates", "rejected")
            }
            for row in table_rows(engine, load_runs)
        ]
        engine.dispose()
    assert results[sqlite_url] == results[pg_url]
    assert len(results[pg_url]["dial_status"]) == 41


def test_simulator_ground_truth_equals_dial_status(engine: Engine) -> None:
    from cloudagent_etl.simulator.data import generate_records

    truth = generate_records("Sales", *WINDOW, seed=3, records_per_day=60)
    assert truth, "the simulator generated no record: the comparison below would prove nothing"
    request_id = new_request(engine)
    load_payload(engine, land(engine, request_id, {"uniqueId": "u1", "data": truth}))
    got = {row["record_key"]: row for row in table_rows(engine, dial_status)}
    assert set(got) == {sent["DataUniqueId"] for sent in truth}
    for sent in truth:
        row = got[sent["DataUniqueId"]]
        assert row["phone_number_raw"] == sent["PhoneNumber"]
        assert row["dial_status"] == (sent["DialStatus"] or None)
        assert row["attempts"] == int(sent["Attempts"])
        assert row["ucid"] == (None if sent["UCID"] == "None" else sent["UCID"])
        assert ist_text(row["updated_at"]) == sent["UpdatedDate"]
        assert row["extra"] == {key: sent[key] for key in ("City", "LoanAmount")}


varied_record_strategy = st.builds(
    lambda key, when, disposition, name: record(key, when, Disposition=disposition, Name=name),
    st.sampled_from(("k1", "k2", "k3", "k4")),
    st.sampled_from(TIMES),
    st.sampled_from(("A", "B", "")),
    st.sampled_from(("n1", "n2")),
)


def merged_state(engine: Engine) -> dict[str, Any]:
    """Every stored version and load count, with load runs as their order (ids differ per database)."""
    with engine.connect() as conn:
        ids = conn.scalars(select(load_runs.c.load_run_id).order_by(load_runs.c.load_run_id))
        runs = {run: index for index, run in enumerate(ids)}
    lineage = ("loaded_at", "request_id", "payload_id", "load_run_id", "previous_load_run_id")
    state: dict[str, Any] = {}
    for table in (dial_status, dial_status_history):
        rows = table_rows(engine, table)
        state[table.name] = [
            {
                **{k: v for k, v in row.items() if k not in lineage},
                "run": runs[row["load_run_id"]],
                "previous_run": runs.get(row.get("previous_load_run_id")),
            }
            for row in rows
        ]
    counts = ("rows_in", "inserted", "updated", "unchanged", "duplicates", "rejected")
    state["load_runs"] = [{k: row[k] for k in counts} for row in table_rows(engine, load_runs)]
    return state


@pytest.mark.parametrize("batch_size", [2, 1000])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=st.lists(st.lists(varied_record_strategy, min_size=1, max_size=8), min_size=1, max_size=4))
def test_postgresql_merge_stores_what_the_sqlite_merge_stores(
    sqlite_url: str, pg_url: str, batch_size: int, payloads: list[list[dict[str, str]]]
) -> None:
    """The two databases merge with different statements: on any payloads they store the same rows."""
    states = []
    for url in (sqlite_url, pg_url):
        engine = create_db_engine(url)
        try:
            with engine.begin() as conn:
                for table in ("dial_status", "dial_status_superseded", "load_runs"):
                    conn.exec_driver_sql(f"DELETE FROM {table}")
            request_id = new_request(engine)
            payload_ids = [land(engine, request_id, payload) for payload in payloads]
            for payload_id in [*payload_ids, payload_ids[0]]:  # the first one again: a reload
                load_payload(engine, payload_id, batch_size=batch_size)
            states.append(merged_state(engine))
        finally:
            engine.dispose()
    assert states[0] == states[1]


@pytest.mark.postgres
def test_postgresql_merge_probes_each_staged_key_through_the_primary_key(pg_url: str) -> None:
    """On a table without statistics the planner sees a tie between the primary key and the index on
    (account, campaign_name, updated_at); that index would read every row of the campaign per probe."""
    from cloudagent_etl.databases.postgresql import PostgresMerge
    from cloudagent_etl.warehouse.load import MERGE_SPEC

    engine = create_db_engine(pg_url)
    try:
        with engine.begin() as conn:
            lineage = {"account": "a", "request_id": "r", "payload_id": 1, "load_run_id": 1}
            merge = PostgresMerge(conn, MERGE_SPEC, {**lineage, "loaded_at": datetime.now(UTC)})
            plan = "\n".join(
                row[0] for row in conn.execute(text(f"EXPLAIN {merge.merge_sql.text}"), merge.params)
            )
            conn.rollback()
    finally:
        engine.dispose()
    probe = next(line for line in plan.splitlines() if f"on {MERGE_SPEC.current} d" in line)
    assert "pk_dial_status" in probe, plan
