"""Poisoned and unusual callbacks, each posted through the real receiver and loaded by the pipeline, on
SQLite and PostgreSQL: the bad record is rejected (or made storable) with its reason, the rest of the
payload loads, ``load_runs`` records what happened, and the apiKey is in no table but the raw bytes and
in no log or error line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from cloudagent_etl import pipeline
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.errors import PayloadError
from cloudagent_etl.normalize import FIELD_ALIASES, MAX_STORED_VALUE_CHARS, MAX_TEXT_CHARS, field_token
from cloudagent_etl.pipeline import load_payload
from cloudagent_etl.settings import Secret
from cloudagent_etl.warehouse.tables import dial_status, dial_status_rejects, load_runs
from tests import factories
from tests.checks import assert_secret_only_in_raw_bytes
from tests.fixtures.receiver import ReceiverHandle

#: The account's apiKey: configured on the load, and in every record as CloudAgent sends it.
KEY = "ca-api-key-7f3e9b2144d0"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
UPDATED = "2024-05-01 10:00:00"
ROW_COLUMNS = ("campaign_name", "disposition", "dial_status", "dial_status_last", "extra", "load_notes")
RUN_COLUMNS = ("status", "rows_in", "inserted", "updated", "unchanged", "duplicates", "rejected", "error")
ALIAS_TOKENS = {field_token(alias) for aliases in FIELD_ALIASES.values() for alias in aliases}


def record(key: str, updated: str = UPDATED, **fields: Any) -> dict[str, Any]:
    return factories.record(key, updated, Apikey=KEY, **fields)


def body_of(records: list[Any]) -> bytes:
    return json.dumps(records).encode()


@dataclass
class Loaded:
    """What one load left behind, as plain values."""

    rows: dict[str, dict[str, Any]]
    rejects: list[tuple[int, str, int, Any]]
    runs: list[tuple[Any, ...]]
    state: str
    error: str | None = None
    payload_ids: list[int] = field(default_factory=list)


@dataclass
class Warehouse:
    """A receiver on a database of each kind, and the loads of what was posted to it."""

    receiver: ReceiverHandle
    engine: Engine
    caplog: pytest.LogCaptureFixture

    def load(self, *bodies: tuple[bytes, str], campaign: str = "Sales") -> Loaded:
        """POST each body as a callback of one new request of ``campaign``, then run the pipeline's load."""
        new = factories.new_request(self.engine, campaign)
        payload_ids = [self.receiver.deliver(new, body, content_type) for body, content_type in bodies]
        error = None
        with self.caplog.at_level(logging.DEBUG):
            try:
                pipeline.load_request(self.engine, new.request_id, api_key=Secret(KEY))
            except PayloadError as exc:
                error = str(exc)
        loaded = Loaded(
            rows=self.rows(campaign),
            rejects=self.rejects(payload_ids),
            runs=self.runs(payload_ids),
            state=factories.state_of(self.engine, new.request_id).value,
            error=error,
            payload_ids=payload_ids,
        )
        self.assert_no_secret_anywhere(error)
        return loaded

    def rows(self, campaign: str) -> dict[str, dict[str, Any]]:
        columns = [dial_status.c.record_key, *(dial_status.c[name] for name in ROW_COLUMNS)]
        with self.engine.connect() as conn:
            found = conn.execute(select(*columns).where(dial_status.c.campaign_name == campaign)).mappings()
            return {row["record_key"]: {name: row[name] for name in ROW_COLUMNS} for row in found}

    def rejects(self, payload_ids: list[int]) -> list[tuple[int, str, int, Any]]:
        table = dial_status_rejects
        with self.engine.connect() as conn:
            found = conn.execute(
                select(table.c.position, table.c.reason, table.c.occurrences, table.c.raw_record)
                .where(table.c.payload_id.in_(payload_ids))
                .order_by(table.c.payload_id, table.c.position)
            )
            return [tuple(row) for row in found]  # type: ignore[misc]

    def runs(self, payload_ids: list[int]) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(*(load_runs.c[name] for name in RUN_COLUMNS))
                .where(load_runs.c.payload_id.in_(payload_ids))
                .order_by(load_runs.c.load_run_id)
            )
            return [tuple(row) for row in found]

    def assert_no_secret_anywhere(self, error: str | None) -> None:
        assert_secret_only_in_raw_bytes(self.engine, KEY)
        assert KEY not in self.caplog.text
        assert KEY not in (error or "")
        assert KEY not in self.receiver.log()


@pytest.fixture
def warehouse(receiver: ReceiverHandle, caplog: pytest.LogCaptureFixture) -> Iterator[Warehouse]:
    engine = create_db_engine(receiver.db_url)
    yield Warehouse(receiver, engine, caplog)
    engine.dispose()


def loaded_run(records: int, inserted: int, rejected: int = 0) -> tuple[Any, ...]:
    return ("loaded", records, inserted, 0, 0, 0, rejected, None)


def row(
    disposition: str | None = None, *, extra: Any = None, notes: str | None = None, **values: Any
) -> dict:
    return {
        "campaign_name": "Sales",
        "disposition": disposition,
        "dial_status": "answered",
        "dial_status_last": "answered",
        "extra": extra,
        "load_notes": notes,
        **values,
    }


def raw(key: str, updated: str = UPDATED, **fields: Any) -> dict[str, Any]:
    """A reject's raw record: the record without its API-key field."""
    return {name: value for name, value in record(key, updated, **fields).items() if name != "Apikey"}


# ---------------------------------------------------------------------------------- single records
def test_nul_characters_are_removed_and_noted_and_the_record_loads(warehouse: Warehouse) -> None:
    records = [record("1"), record("2", Disposition="Call\u0000back", Note="x\u0000y")]
    loaded = warehouse.load((body_of(records), JSON))
    assert loaded.rows == {
        "1": row(),
        "2": row(
            "Callback",
            extra={"Note": "xy"},
            notes="disposition: NUL characters removed; extra: NUL characters removed",
        ),
    }
    assert (loaded.rejects, loaded.runs, loaded.state) == ([], [loaded_run(2, 2)], "loaded")


def test_values_too_long_for_an_index_are_cut_into_extra_or_reject_a_key(warehouse: Warehouse) -> None:
    disposition, dial = "D" * 100_000, "S" * 10_000_000
    records = [
        record("1"),
        record("2", Disposition=disposition),
        record("3", DialStatus=dial),
        record("K" * 100_000),
    ]
    loaded = warehouse.load((body_of(records), JSON))
    cut = f"cut to {MAX_TEXT_CHARS} characters, the whole value is in extra"
    assert loaded.rows == {
        "1": row(),
        "2": row("D" * MAX_TEXT_CHARS, extra={"Disposition": disposition}, notes=f"disposition: {cut}"),
        "3": row(
            dial_status="S" * MAX_TEXT_CHARS,
            dial_status_last="S" * MAX_TEXT_CHARS,
            extra={"DialStatus": dial[:MAX_STORED_VALUE_CHARS]},
            notes=f"dial_status: {cut}; extra: values cut to {MAX_STORED_VALUE_CHARS} characters",
        ),
    }
    assert loaded.rejects == [
        (3, "record_key: the lead id is longer than 200 characters", 1, raw("K" * 100_000))
    ]
    assert loaded.runs == [loaded_run(4, 3, rejected=1)]


@pytest.mark.parametrize(
    ("updated", "reason"),
    [
        ("0001-01-01 00:00:00", "updated_at: before 2000-01-01 00:00:00 UTC"),
        ("0000-01-01 00:00:00", "updated_at: before 2000-01-01 00:00:00 UTC"),
        (
            "9999-12-31 23:59:59",
            "updated_at: later than the latest time allowed (the load's start + tolerance)",
        ),
        ("2026-02-30 10:00:00", "updated_at: not a time %Y-%m-%d %H:%M:%S"),
    ],
    ids=["year-1", "year-0", "year-9999", "feb-30"],
)
def test_dates_that_are_not_dates_reject_their_record(
    warehouse: Warehouse, updated: str, reason: str
) -> None:
    loaded = warehouse.load((body_of([record("1"), record("2", updated)]), JSON))
    assert loaded.rows == {"1": row()}  # and a typed read of every row works (year 0 never stored)
    assert loaded.rejects == [(1, reason, 1, raw("2", updated))]
    assert loaded.runs == [loaded_run(2, 1, rejected=1)]


def test_a_far_future_date_does_not_pin_a_lead_against_its_real_update(warehouse: Warehouse) -> None:
    first = body_of([record("1", "9999-12-31 23:59:59", Disposition="bogus")])
    real = body_of([record("1", "2024-05-02 10:00:00", Disposition="Interested")])
    loaded = warehouse.load((first, JSON), (real, JSON))
    assert loaded.rows == {"1": row("Interested")}
    assert [run[:3] for run in loaded.runs] == [("loaded", 1, 0), ("loaded", 1, 1)]


def test_a_field_nested_300_levels_deep_rejects_only_its_record(warehouse: Warehouse) -> None:
    deep = json.loads("[" * 300 + '"x"' + "]" * 300)
    loaded = warehouse.load((body_of([record("1"), record("2", Note=deep), record("3")]), JSON))
    assert loaded.rows == {"1": row(), "3": row()}
    [(position, reason, occurrences, _raw)] = loaded.rejects
    assert (position, reason, occurrences) == (1, "Note: nested deeper than 32 levels", 1)
    assert loaded.runs == [loaded_run(3, 2, rejected=1)]


def test_a_depth_bomb_fails_its_payload_with_a_reason_and_the_other_payload_loads(
    warehouse: Warehouse,
) -> None:
    loaded = warehouse.load((b"[" * 200_000, JSON), (body_of([record("1")]), JSON))
    assert loaded.rows == {"1": row()}
    bomb, _ = loaded.payload_ids
    assert loaded.runs == [
        ("failed", 0, 0, 0, 0, 0, 0, f"payload {bomb}: payload is nested deeper than 1024 levels"),
        loaded_run(1, 1),
    ]
    assert (loaded.state, loaded.error) == ("loaded", None)


def test_a_payload_that_is_only_a_depth_bomb_fails_the_request_with_the_reason(warehouse: Warehouse) -> None:
    loaded = warehouse.load((b'{"data": ' + b"[" * 200_000, JSON))
    assert loaded.state == "failed"
    assert "nested deeper than 1024 levels" in (loaded.error or "")
    assert [run[0] for run in loaded.runs] == ["failed"]


def test_records_of_another_campaign_cannot_change_its_rows(warehouse: Warehouse) -> None:
    support = factories.record("2", UPDATED, CampaignName="Support", Disposition="theirs", Apikey=KEY)
    warehouse.load((body_of([support]), JSON), campaign="Support")
    newer = dict(support, UpdatedDate="2024-05-03 10:00:00", Disposition="overwritten")
    loaded = warehouse.load((body_of([record("1"), newer]), JSON))
    assert loaded.rows == {"1": row()}
    assert warehouse.rows("Support") == {"2": row("theirs", campaign_name="Support")}
    expected_raw = {name: value for name, value in newer.items() if name != "Apikey"}
    reason = "campaign_name: not the campaign of the export request ('Sales')"
    assert loaded.rejects == [(1, reason, 1, expected_raw)]


# ---------------------------------------------------------------------------------- the apiKey
def test_the_api_key_is_removed_at_any_depth_and_its_value_wherever_it_appears(warehouse: Warehouse) -> None:
    records: list[Any] = [
        record("1", Meta={"apiKey": KEY, "list": [KEY, {"API_KEY": KEY, "ok": 1}]}),
        record("2", Comment=f"the key is {KEY}", Disposition=KEY),
        ["not an object", {"Apikey": KEY}, KEY],
        record("3", Attempts="many", Note=f"{KEY}!"),
    ]
    loaded = warehouse.load((body_of(records), JSON))
    assert loaded.rows == {
        "1": row(extra={"Meta": '{"list":["***",{"ok":1}]}'}, notes="extra: API key value replaced by ***"),
        "2": row(
            "***",
            extra={"Comment": "the key is ***"},
            notes="disposition: API key value replaced by ***; extra: API key value replaced by ***",
        ),
    }
    assert loaded.rejects == [
        (2, "record is not a JSON object", 1, ["not an object", {}, "***"]),
        (3, "attempts: not a count", 1, raw("3", Attempts="many", Note="***!")),
    ]


def test_a_body_that_is_not_json_fails_without_quoting_the_api_key(warehouse: Warehouse) -> None:
    broken = f'[{{"CampaignName": "Sales", "Apikey": "{KEY}" "DataUniqueId": "1"}}]'.encode()
    loaded = warehouse.load((broken, JSON))
    [payload] = loaded.payload_ids
    assert loaded.state == "failed"
    assert loaded.runs == [
        (
            "failed",
            0,
            0,
            0,
            0,
            0,
            0,
            f"payload {payload}: payload is not valid JSON: parse error: after key and value, inside map, "
            "I expect ',' or '}'",
        )
    ]
    assert "not valid JSON" in (loaded.error or "")


# ---------------------------------------------------------------------------------- cost
def test_records_with_their_own_custom_fields_keep_each_in_extra(warehouse: Warehouse) -> None:
    records = [record(str(i), **{f"Upload_{i}_{j}": f"v{j}" for j in range(25)}) for i in range(300)]
    loaded = warehouse.load((body_of(records), JSON))
    assert loaded.rows == {
        str(i): row(extra={f"Upload_{i}_{j}": f"v{j}" for j in range(25)}) for i in range(300)
    }
    assert loaded.runs == [loaded_run(300, 300)]


def test_identical_rejects_are_stored_once_with_their_count(warehouse: Warehouse) -> None:
    records: list[Any] = [{}] * 30_000  # more than one batch
    records[12_345] = record("1")
    records[20_001] = {"CampaignName": "Sales"}
    loaded = warehouse.load((body_of(records), JSON))
    no_key = "updated_at: missing; record_key: no lead id, and no phone number + created time"
    no_campaign = f"campaign_name: missing; {no_key}"
    assert loaded.rejects == [(0, no_campaign, 29_998, {}), (20_001, no_key, 1, {"CampaignName": "Sales"})]
    assert loaded.rows == {"1": row()}
    assert loaded.runs == [loaded_run(30_000, 1, rejected=29_999)]
    [payload] = loaded.payload_ids
    again = load_payload(warehouse.engine, payload)  # a reload changes no count
    assert (again.rejected, again.unchanged) == (29_999, 1)
    assert warehouse.rejects([payload]) == loaded.rejects


# ---------------------------------------------------------------------------------- shapes
def test_no_data_found_without_records_is_an_empty_load(warehouse: Warehouse) -> None:
    notice = {"status": "success", "message": "No data found", "uniqueId": "U-7"}
    loaded = warehouse.load((json.dumps(notice).encode(), JSON))
    assert (loaded.rows, loaded.rejects, loaded.runs, loaded.state) == ({}, [], [loaded_run(0, 0)], "loaded")


def test_a_utf8_byte_order_mark_before_the_json_is_accepted(warehouse: Warehouse) -> None:
    loaded = warehouse.load((b"\xef\xbb\xbf" + body_of([record("1")]), "application/json; charset=utf-8"))
    assert (loaded.rows, loaded.runs) == ({"1": row()}, [loaded_run(1, 1)])


def test_every_data_field_of_a_form_body_is_loaded(warehouse: Warehouse) -> None:
    body = urlencode(
        [
            ("data", json.dumps([record("1")])),
            ("uniqueId", "U-1"),
            ("data", json.dumps({"data": [record("2")]})),
        ]
    ).encode()
    loaded = warehouse.load((body, FORM))
    assert (loaded.rows, loaded.runs) == ({"1": row(), "2": row()}, [loaded_run(2, 2)])


def test_every_data_part_of_a_multipart_body_is_loaded(warehouse: Warehouse) -> None:
    parts = [json.dumps([record("1"), record("2")]), json.dumps({"records": [record("3")]})]
    body = b"".join(
        b'--XyZ\r\nContent-Disposition: form-data; name="data"\r\n\r\n' + part.encode() + b"\r\n"
        for part in parts
    )
    loaded = warehouse.load((body + b"--XyZ--\r\n", "multipart/form-data; boundary=XyZ"))
    assert loaded.rows == {"1": row(), "2": row(), "3": row()}
    assert loaded.runs == [loaded_run(3, 3)]


def test_a_form_body_with_too_many_fields_fails_loudly(warehouse: Warehouse) -> None:
    body = b"&".join([b"f=1"] * 1001 + [b"data=" + quote_from_bytes(body_of([record("1")])).encode()])
    loaded = warehouse.load((body, FORM))
    assert (loaded.rows, loaded.state) == ({}, "failed")
    [payload] = loaded.payload_ids
    assert loaded.runs == [
        ("failed", 0, 0, 0, 0, 0, 0, f"payload {payload}: form payload has more than 1000 fields")
    ]


def test_an_export_delivered_in_several_posts_loads_every_part(warehouse: Warehouse) -> None:
    loaded = warehouse.load((body_of([record("1")]), JSON), (body_of([record("2"), record("3")]), JSON))
    assert loaded.rows == {"1": row(), "2": row(), "3": row()}
    assert loaded.runs == [loaded_run(1, 1), loaded_run(2, 2)]


# ---------------------------------------------------------------------------------- property
#: Poison that rejects its record, with a word its reason must contain.
REJECTING: dict[str, tuple[dict[str, Any], str]] = {
    "feb-30": ({"UpdatedDate": "2024-02-30 10:00:00"}, "updated_at: not a time"),
    "year-0": ({"UpdatedDate": "0000-01-01 00:00:00"}, "updated_at: before"),
    "year-1": ({"CreatedDate": "0001-01-01 00:00:00"}, "created_at: before"),
    "year-9999": ({"UpdatedDate": "9999-12-31 23:59:59"}, "updated_at: later than"),
    "hour-24": ({"StartTime": "2024-05-01 24:00:00"}, "call_started_at: not a time"),
    "other-campaign": ({"CampaignName": "Support"}, "campaign_name: not the campaign"),
    "long-key": ({"DataUniqueId": "K" * 201}, "record_key: the lead id is longer"),
    "deep": ({"Tree": json.loads("[" * 40 + "]" * 40)}, "Tree: nested deeper"),
    "no-update": ({"UpdatedDate": ""}, "updated_at: missing"),
    "bad-count": ({"Attempts": "many"}, "attempts: not a count"),
    "long-call": ({"Duration": "999999:59:59"}, "call_duration_s: more than"),
}
#: Poison that is made storable: the record loads, with a note.
CLEANED: dict[str, tuple[dict[str, Any], str | None]] = {
    "nul": ({"Disposition": "Inter\u0000ested"}, "Interested"),
    "long-text": ({"Disposition": "L" * 600}, "L" * MAX_TEXT_CHARS),
    "key-in-value": ({"Disposition": f"see {KEY}"}, "see ***"),
    "key-nested": ({"Meta": {"apiKey": KEY, "copy": KEY}}, None),
}
field_names = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
).filter(lambda name: field_token(name) not in ALIAS_TOKENS and "apikey" not in field_token(name))
values = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
kinds = st.lists(
    st.one_of(
        st.tuples(st.just("valid"), st.dictionaries(field_names, values, max_size=3), values),
        st.tuples(st.sampled_from(sorted(REJECTING)), st.just({}), st.just("")),
        st.tuples(st.sampled_from(sorted(CLEANED)), st.just({}), st.just("")),
        st.tuples(st.just("not-an-object"), st.just({}), st.just("")),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=kinds)
def test_valid_records_always_load_and_poisoned_ones_are_rejected_or_cleaned(
    engine: Engine, plan: list[tuple[str, dict[str, str], str]]
) -> None:
    request = factories.new_request(engine, "Sales")
    prefix = request.request_id[:8]
    records: list[Any] = []
    expected_rows: dict[str, tuple[str | None, bool]] = {}  # key -> (disposition, has a note)
    expected_rejects: dict[int, str] = {}
    for position, (kind, custom, text) in enumerate(plan):
        key = f"{prefix}-{position}"
        if kind == "valid":
            records.append(record(key, Disposition=f"D:{text}", **custom))
            expected_rows[key] = (f"D:{text}", False)
        elif kind == "not-an-object":
            records.append([key, {"Apikey": KEY}])
            expected_rejects[position] = "record is not a JSON object"
        elif kind in REJECTING:
            fields, reason = REJECTING[kind]
            records.append(record(key, Nonce=key, **fields))  # distinct: identical rejects count as one
            expected_rejects[position] = reason
        else:
            fields, disposition = CLEANED[kind]
            records.append(record(key, **fields))
            expected_rows[key] = (disposition, True)
    payload = factories.land(engine, request.request_id, body_of(records))
    result = load_payload(engine, payload, secrets=[KEY])

    with engine.connect() as conn:
        stored = conn.execute(
            select(dial_status.c.record_key, dial_status.c.disposition, dial_status.c.load_notes).where(
                dial_status.c.payload_id == payload
            )
        ).all()
        rejected = conn.execute(
            select(dial_status_rejects.c.position, dial_status_rejects.c.reason).where(
                dial_status_rejects.c.payload_id == payload, dial_status_rejects.c.occurrences == 1
            )
        ).all()
    assert {key: (disposition, notes is not None) for key, disposition, notes in stored} == expected_rows
    assert {position for position, _ in rejected} == set(expected_rejects)
    for position, reason in rejected:
        assert expected_rejects[position] in reason, (plan[position][0], reason)
    assert (result.rows_in, result.inserted, result.rejected) == (
        len(plan),
        len(expected_rows),
        len(rejected),
    )
    assert_secret_only_in_raw_bytes(engine, KEY)
