"""Golden tests: hand-written payloads through every normalization rule, with exactly the expected rows."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudagent_etl import normalize
from cloudagent_etl.errors import PayloadError
from cloudagent_etl.normalize import (
    FIELD_ALIASES,
    ROW_COLUMNS,
    NormalizedBatch,
    field_token,
    iter_records,
    normalize_payload,
)
from cloudagent_etl.normalize.columns import MAX_COLUMNAR_EXTRA_FIELDS

IST = "Asia/Kolkata"
BIG_ID = "9007199254740993"  # 2^53 + 1: a float would turn it into ...992
BIGGER_ID = 123456789012345678901234567890


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def normalize_one(body: bytes | io.BytesIO, content_type: str | None = "application/json") -> NormalizedBatch:
    batches = list(normalize_payload(body, content_type, timezone=IST))
    assert len(batches) == 1
    return batches[0]


def rows_of(batch: NormalizedBatch) -> list[dict[str, Any]]:
    """Rows as plain Python values (None for NULL, datetimes in UTC) for exact comparison."""
    assert batch.rows.schema.field("updated_at").type == pa.timestamp("us", tz="UTC")
    return batch.rows.to_pylist()


def column_of(batch: NormalizedBatch, name: str) -> list[Any]:
    return batch.rows.column(name).to_pylist()


def row(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(ROW_COLUMNS)
    base.update(position=0, is_latest=True)
    base.update(values)
    return base


FULL_RECORD = {
    "CampaignName": "Sales",
    "PhoneNumber": "98765 43210",
    "Name": "Asha Rao",
    "Status": "Success",
    "DialStatus": "NoAnswer -> user_disconnected -> answered",
    "Disposition": "Interested",
    "Attempts": "3",
    "AgentID": "A7",
    "AgentName": "Ravi",
    "UCID": BIG_ID,
    "monitorUCID": BIGGER_ID,  # a JSON number above 2^64: must stay exact text
    "StartTime": "2024-05-01 10:11:12",
    "EndTime": "2024-05-01 10:13:12",
    "Duration": "00:02:00",
    "Skill": "sales",
    "Priority": "1",
    "CreatedDate": "2024-04-30 23:59:59",
    "UpdatedDate": "2024-05-01 10:13:15",
    "DataUniqueId": "202405010000001",
    "Apikey": "KK-secret-key",
    "UserName": "demo_user",
    "LoanAmount": "250000",
}

FULL_ROW = row(
    campaign_name="Sales",
    record_key="202405010000001",
    phone_number="919876543210",
    phone_number_raw="98765 43210",
    phone_e164="+919876543210",
    customer_name="Asha Rao",
    lead_status="Success",
    dial_status="NoAnswer -> user_disconnected -> answered",
    dial_status_first="NoAnswer",
    dial_status_last="answered",
    disposition="Interested",
    attempts=3,
    agent_id="A7",
    agent_name="Ravi",
    ucid=BIG_ID,
    monitor_ucid=str(BIGGER_ID),
    call_started_at=utc("2024-05-01 04:41:12"),
    call_ended_at=utc("2024-05-01 04:43:12"),
    call_duration_s=120,
    skill="sales",
    priority="1",
    created_at=utc("2024-04-30 18:29:59"),
    updated_at=utc("2024-05-01 04:43:15"),
    extra='{"LoanAmount":"250000","UserName":"demo_user"}',
)


def test_a_full_record_maps_every_field_with_its_type() -> None:
    batch = normalize_one(json.dumps([FULL_RECORD]).replace(f'"{BIGGER_ID}"', str(BIGGER_ID)).encode())
    assert rows_of(batch) == [FULL_ROW]
    assert batch.rejects.empty
    assert batch.records_in == 1


def test_ids_above_2_53_survive_as_json_numbers_and_as_text() -> None:
    body = (
        b'[{"CampaignName":"S","DataUniqueId":9007199254740993,"UCID":9007199254740993,'
        b'"UpdatedDate":"2024-05-01 00:00:00"}]'
    )
    [only] = rows_of(normalize_one(body))
    assert only["record_key"] == only["ucid"] == BIG_ID


@pytest.mark.parametrize(
    ("variant", "transform"),
    [
        ("PascalCase", lambda name: name),
        ("camelCase", lambda name: name[0].lower() + name[1:]),
        ("snake_case", lambda name: "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")),
        ("UPPER", str.upper),
    ],
)
def test_every_alias_maps_in_every_case_variant(variant: str, transform: Any) -> None:
    assert {"lead_id", "phone_number_raw", "attempts", "updated_at"} <= set(FIELD_ALIASES), FIELD_ALIASES
    assert all(FIELD_ALIASES.values()), "a column without any alias: nothing of it would be checked"
    for column, aliases in FIELD_ALIASES.items():
        for alias in aliases:
            record = {"CampaignName": "S", "DataUniqueId": "k1", "UpdatedDate": "2024-05-01 00:00:00"}
            value = {"attempts": "2", "call_duration_s": "7"}.get(column, "2024-01-02 05:30:00")
            if column not in (
                "attempts",
                "call_duration_s",
                "call_started_at",
                "call_ended_at",
                "created_at",
                "updated_at",
            ):
                value = f"v-{alias}"
            record = {
                k: v for k, v in record.items() if field_token(k) not in {field_token(a) for a in aliases}
            }
            record[transform(alias)] = value
            [only] = rows_of(normalize_one(json.dumps([record]).encode()))
            target = "record_key" if column == "lead_id" else column
            expected: Any = value
            if column in ("attempts", "call_duration_s"):
                expected = int(value)
            elif column in ("call_started_at", "call_ended_at", "created_at", "updated_at"):
                expected = utc("2024-01-02 00:00:00")
            assert only[target] == expected, (variant, alias)
            assert only["extra"] is None, (variant, alias)


@pytest.mark.parametrize("marker", ["", "None", "null", "NA", " none ", "NULL", "\tnUlL\r\n", "   "])
def test_null_markers_become_null(marker: str) -> None:
    record = dict(FULL_RECORD, Name=marker, Skill=marker, Duration=marker, Attempts=marker, StartTime=marker)
    [only] = rows_of(normalize_one(json.dumps([record]).encode()))
    assert only["customer_name"] is only["skill"] is only["call_duration_s"] is None
    assert only["attempts"] is only["call_started_at"] is None


@pytest.mark.parametrize("text", ["n/a", "NaN", "nul", "none of it", "\u00a0null", "\u000bnull", "0"])
def test_text_that_only_resembles_a_null_marker_is_kept(text: str) -> None:
    """The blanks around a marker are ASCII ones; a no-break space or a vertical tab is text."""
    [only] = rows_of(normalize_one(json.dumps([dict(FULL_RECORD, Name=text, Skill=text)]).encode()))
    assert only["customer_name"] == only["skill"] == text


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("9876543210", "919876543210"),
        ("919876543210", "919876543210"),
        ("+91 98765-43210", "919876543210"),
        ("09876543210", "919876543210"),
        ("12345", "12345"),
        ("None", None),
    ],
)
def test_phone_numbers_are_canonical_digits_with_91(raw: str, canonical: str | None) -> None:
    [only] = rows_of(normalize_one(json.dumps([dict(FULL_RECORD, PhoneNumber=raw)]).encode()))
    assert only["phone_number"] == canonical
    assert only["phone_number_raw"] == (None if raw == "None" else raw)


@pytest.mark.parametrize(("duration", "seconds"), [("01:02:03", 3723), ("100:00:00", 360000), ("45", 45)])
def test_durations_become_seconds(duration: str, seconds: int) -> None:
    [only] = rows_of(normalize_one(json.dumps([dict(FULL_RECORD, Duration=duration)]).encode()))
    assert only["call_duration_s"] == seconds


def test_single_leg_dial_status_is_its_own_first_and_last_leg() -> None:
    [only] = rows_of(normalize_one(json.dumps([dict(FULL_RECORD, DialStatus="answered")]).encode()))
    assert (only["dial_status"], only["dial_status_first"], only["dial_status_last"]) == ("answered",) * 3


def test_the_time_zone_is_a_setting() -> None:
    [batch] = normalize_payload(json.dumps([FULL_RECORD]).encode(), None, timezone="UTC")
    assert rows_of(batch)[0]["updated_at"] == utc("2024-05-01 10:13:15")


def test_missing_lead_id_gives_a_stable_hash_of_campaign_phone_and_created_time() -> None:
    record = {k: v for k, v in FULL_RECORD.items() if k != "DataUniqueId"}
    [only] = rows_of(normalize_one(json.dumps([record]).encode()))
    material = b"Sales\x1f919876543210\x1f2024-04-30T18:29:59Z"
    assert only["record_key"] == "sha256:" + hashlib.sha256(material).hexdigest()[:32]
    again = dict(record, PhoneNumber="+919876543210", Name="changed")
    assert rows_of(normalize_one(json.dumps([again]).encode()))[0]["record_key"] == only["record_key"]


def test_api_key_fields_are_dropped_in_every_spelling_everywhere() -> None:
    secret = "KK-secret-key"
    records = [
        dict(FULL_RECORD, apiKey=secret, api_key=secret, API_KEY=secret),
        dict(FULL_RECORD, DataUniqueId="bad", Attempts="many", apiKey=secret),
    ]
    batch = normalize_one(json.dumps(records).encode())
    assert secret not in json.dumps(rows_of(batch), default=str) + batch.rejects.to_json()
    assert len(batch.rows) == 1
    assert len(batch.rejects) == 1


def test_rejects_carry_position_every_reason_and_the_raw_record_without_the_key() -> None:
    good = dict(FULL_RECORD)
    records = [
        good,
        dict(FULL_RECORD, CampaignName="", DataUniqueId="x1"),
        dict(FULL_RECORD, DataUniqueId="x2", Attempts="three", UpdatedDate="yesterday"),
        dict(FULL_RECORD, DataUniqueId="x3", Duration="2 min", StartTime="2024-13-01 00:00:00"),
        {k: v for k, v in FULL_RECORD.items() if k not in ("DataUniqueId", "CreatedDate")},
        {k: v for k, v in FULL_RECORD.items() if k != "UpdatedDate"},
        ["not", "an", "object"],
    ]
    batch = normalize_one(json.dumps(records).encode())
    assert column_of(batch, "position") == [0]
    rejects = batch.rejects.to_dict("records")
    assert [(r["position"], r["reason"]) for r in rejects] == [
        (1, "campaign_name: missing"),
        (2, "updated_at: not a time %Y-%m-%d %H:%M:%S; attempts: not a count"),
        (3, "call_started_at: not a time %Y-%m-%d %H:%M:%S; call_duration_s: not HH:MM:SS"),
        (4, "record_key: no lead id, and no phone number + created time"),
        (5, "updated_at: missing"),
        (6, "record is not a JSON object"),
    ]
    raw = json.loads(rejects[1]["raw_record"])
    assert raw == {k: str(v) for k, v in records[2].items() if k != "Apikey"}  # values as text, exactly
    assert json.loads(rejects[5]["raw_record"]) == ["not", "an", "object"]


def test_in_payload_duplicates_keep_the_latest_updated_at_and_drop_repeats_of_a_version() -> None:
    v1 = dict(FULL_RECORD, UpdatedDate="2024-05-01 10:00:00", Disposition="first")
    v3 = dict(FULL_RECORD, UpdatedDate="2024-05-01 12:00:00", Disposition="third")
    v2 = dict(FULL_RECORD, UpdatedDate="2024-05-01 11:00:00", Disposition="second")
    v2_again = dict(v2, Disposition="second, as sent again")
    batch = normalize_one(json.dumps([v1, v3, v2, v2_again]).encode())
    got = [(r["position"], r["disposition"], r["is_latest"]) for r in rows_of(batch)]
    assert got == [(0, "first", False), (1, "third", True), (3, "second, as sent again", False)]
    assert_key_hashes_are_the_rows(batch)


def test_a_batch_of_distinct_keys_is_latest_throughout_and_hashes_its_keys() -> None:
    records = [dict(FULL_RECORD, DataUniqueId=f"lead-{n}", Disposition=str(n)) for n in (3, 1, 2)]
    records.append(dict(FULL_RECORD, DataUniqueId="lead-1", CampaignName="Other"))  # another campaign's lead
    batch = normalize_one(json.dumps(records).encode())
    assert [(r["position"], r["campaign_name"], r["record_key"], r["is_latest"]) for r in rows_of(batch)] == [
        (0, FULL_RECORD["CampaignName"], "lead-3", True),
        (1, FULL_RECORD["CampaignName"], "lead-1", True),
        (2, FULL_RECORD["CampaignName"], "lead-2", True),
        (3, "Other", "lead-1", True),
    ]
    assert_key_hashes_are_the_rows(batch)


def assert_key_hashes_are_the_rows(batch: NormalizedBatch) -> None:
    """The hashes normalize gives the load are those of the rows' keys, row by row."""
    keys = batch.rows.select(["campaign_name", "record_key"]).to_pandas()
    expected = pd.util.hash_pandas_object(keys, index=False).to_numpy()
    assert batch.key_hashes.dtype == np.uint64
    assert batch.key_hashes.tolist() == expected.tolist()
    assert len(set(expected.tolist())) == len(keys.drop_duplicates())


def test_unknown_fields_go_to_extra_per_row_and_shadowed_aliases_too() -> None:
    records = [
        dict(FULL_RECORD, City="Pune"),
        {
            **{k: v for k, v in FULL_RECORD.items() if k not in ("LoanAmount", "UserName")},
            "DataUniqueId": "b",
        },
        dict(
            {k: v for k, v in FULL_RECORD.items() if k not in ("LoanAmount", "UserName")},
            DataUniqueId="c",
            phone="1",
        ),
    ]
    extras = [r["extra"] for r in rows_of(normalize_one(json.dumps(records).encode()))]
    assert extras == ['{"City":"Pune","LoanAmount":"250000","UserName":"demo_user"}', None, '{"phone":"1"}']


def _records_body(records: list[Any]) -> str:
    return json.dumps(records)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (_records_body([FULL_RECORD]).encode(), "application/json"),
        (json.dumps({"uniqueId": "u1", "data": [FULL_RECORD]}).encode(), "application/json"),
        (json.dumps({"status": "ok", "records": [FULL_RECORD]}).encode(), None),
        (json.dumps({"details": [FULL_RECORD]}).encode(), "text/plain"),
        (json.dumps({"Data": _records_body([FULL_RECORD])}).encode(), "application/json"),
        (urlencode({"data": _records_body([FULL_RECORD])}).encode(), "application/x-www-form-urlencoded"),
        (
            urlencode({"data": json.dumps({"data": [FULL_RECORD]})}).encode(),
            "application/x-www-form-urlencoded; charset=utf-8",
        ),
    ],
    ids=[
        "array",
        "object-data",
        "object-records",
        "object-details",
        "object-Data-string",
        "form",
        "form-object",
    ],
)
def test_every_documented_shape_gives_the_same_rows(body: bytes, content_type: str | None) -> None:
    expected = dict(FULL_ROW, monitor_ucid=str(BIGGER_ID))
    [only] = rows_of(normalize_one(io.BytesIO(body), content_type))
    assert only == expected


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", "application/json", "payload is empty"),
        (b"<html>nope</html>", "application/json", "neither a JSON array nor a JSON object"),
        (b'[{"a": "1"}, {"a": ', "application/json", "not valid JSON"),
        (b'{"status": "ok"}', "application/json", "no records under"),
        (b'{"data": 5}', "application/json", "holds a number"),
        (b"other=1", "application/x-www-form-urlencoded", "no 'data' field"),
    ],
)
def test_unparseable_payloads_raise_payload_error(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        list(normalize_payload(body, content_type, timezone=IST))


def test_an_empty_array_is_an_empty_payload_not_an_error() -> None:
    assert list(normalize_payload(b"[]", "application/json", timezone=IST)) == []


def test_batches_stream_with_payload_positions() -> None:
    records = [dict(FULL_RECORD, DataUniqueId=str(i)) for i in range(5)]
    batches = list(normalize_payload(_records_body(records).encode(), None, timezone=IST, batch_size=2))
    assert [column_of(b, "position") for b in batches] == [[0, 1], [2, 3], [4]]
    assert list(iter_records(io.BytesIO(_records_body(records).encode()), None)) == records


def _multipart(data: str, boundary: str = "b0undary") -> tuple[bytes, str]:
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="uniqueId"\r\n\r\nu1\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="data"\r\n'
        "Content-Type: application/json\r\n\r\n"
        f"{data}\r\n"
        f"--{boundary}--\r\n"
    )
    return body.encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    "data",
    [_records_body([FULL_RECORD]), json.dumps({"data": [FULL_RECORD]})],
    ids=["array", "object"],
)
def test_a_multipart_form_body_gives_the_rows_of_its_data_field(data: str) -> None:
    body, content_type = _multipart(data)
    [only] = rows_of(normalize_one(io.BytesIO(body), content_type))
    assert only == dict(FULL_ROW, monitor_ucid=str(BIGGER_ID))


def test_a_multipart_form_body_without_a_data_field_is_a_payload_error() -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\n1\r\n--b--\r\n'
    with pytest.raises(PayloadError, match="no 'data' field"):
        list(normalize_payload(body, "multipart/form-data; boundary=b", timezone=IST))


def test_array_slices_cut_only_between_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny slices: record boundaries inside strings and nested values must not split a record."""
    monkeypatch.setattr(normalize.parsing, "SLICE_BYTES", 7)
    records: list[Any] = [
        dict(FULL_RECORD, DataUniqueId=str(i), Note='x},{"y": "}, {', Legs=[{"a": 1}, {"b": 2}])
        for i in range(6)
    ]
    records[2]["LoanAmount"] = 2500.50  # a fraction: must keep its exact text, not a float's
    records[4]["Big"] = BIGGER_ID
    records.insert(3, "not an object")
    body = json.dumps(records, indent=1).replace("2500.5,", "2500.50,").encode()
    assert list(iter_records(io.BytesIO(body), "application/json")) == [
        *records[:2],
        dict(records[2], LoanAmount=Decimal("2500.50")),
        *records[3:],
    ]
    batch = normalize_one(body)
    extra = dict(zip(column_of(batch, "position"), map(json.loads, column_of(batch, "extra")), strict=True))
    assert extra[2]["LoanAmount"] == "2500.50"
    assert extra[5]["Big"] == str(BIGGER_ID)
    assert list(batch.rejects["position"]) == [3]


def test_a_truncated_array_raises_after_the_records_before_the_damage() -> None:
    body = _records_body([dict(FULL_RECORD, DataUniqueId=str(i)) for i in range(3)]).encode()[:-40]
    records = iter_records(io.BytesIO(body), "application/json")
    with pytest.raises(PayloadError, match="not valid JSON"):
        list(records)


@pytest.mark.parametrize(
    "cities",
    [["Zürich", "São Paulo", "東京"], ['Say "hi"', "back\\slash", "tab\there"], ["Pune", None, "Delhi"]],
    ids=["unicode", "escapes", "null"],
)
def test_extra_is_the_sorted_json_of_the_unknown_fields_whichever_way_it_is_built(
    cities: list[str | None],
) -> None:
    records = [dict(FULL_RECORD, DataUniqueId=str(i), City=city) for i, city in enumerate(cities)]
    expected = [
        json.dumps(
            {"City": city, "LoanAmount": "250000", "UserName": "demo_user"},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for city in cities
    ]
    assert [r["extra"] for r in rows_of(normalize_one(json.dumps(records).encode()))] == expected


# ------------------------------------------------------------------------------- poisoned and unusual
KEY = "KK-secret-key"  # the account's apiKey, as CloudAgent puts it in every record (FULL_RECORD's)
BOUNDS = (utc("2000-01-01 00:00:00"), utc("2026-01-01 00:00:00"))


def normalize_with_rules(
    records: list[Any] | bytes, content_type: str = "application/json", **rules: Any
) -> NormalizedBatch:
    """One batch, with the load's rules: campaign Sales, fixed time bounds, the apiKey configured."""
    body = records if isinstance(records, bytes) else json.dumps(records).encode()
    options: dict[str, Any] = {
        "campaign": "Sales",
        "time_bounds": BOUNDS,
        "secrets": normalize.SecretValues([KEY]),
        **rules,
    }
    [batch] = normalize_payload(body, content_type, timezone=IST, **options)
    return batch


def rejects_of(batch: NormalizedBatch) -> list[tuple[int, str]]:
    return [(r["position"], r["reason"]) for r in batch.rejects.to_dict("records")]


def good(key: str, **fields: Any) -> dict[str, Any]:
    return dict(FULL_RECORD, DataUniqueId=key, **fields)


def test_nul_characters_are_removed_from_values_and_names_and_noted() -> None:
    records = [good("1"), good("2", Disposition="Inter\x00ested", Note="a\x00b", **{"Cu\x00stom": "x"})]
    rows = {row["record_key"]: row for row in rows_of(normalize_with_rules(records))}
    assert rows["1"]["load_notes"] is None
    assert rows["2"]["disposition"] == "Interested"
    assert json.loads(rows["2"]["extra"]) == {
        "Custom": "x",
        "LoanAmount": "250000",
        "Note": "ab",
        "UserName": "demo_user",
    }
    assert rows["2"]["load_notes"] == "disposition: NUL characters removed; extra: NUL characters removed"


def test_a_long_value_is_cut_in_its_column_and_kept_whole_in_extra() -> None:
    disposition = "D" * 100_000
    records = [good("1"), good("2", Disposition=disposition, DialStatus="x -> " + "y" * 600)]
    [_, long] = rows_of(normalize_with_rules(records))
    assert long["disposition"] == "D" * normalize.MAX_TEXT_CHARS
    assert long["dial_status"] == ("x -> " + "y" * 600)[: normalize.MAX_TEXT_CHARS]
    assert (long["dial_status_first"], long["dial_status_last"]) == ("x", "y" * normalize.MAX_TEXT_CHARS)
    extra = json.loads(long["extra"])
    assert extra["Disposition"] == disposition
    assert extra["DialStatus"] == "x -> " + "y" * 600
    assert long["load_notes"] == (
        "dial_status: cut to 500 characters, the whole value is in extra; "
        "disposition: cut to 500 characters, the whole value is in extra"
    )


def test_a_value_over_the_storable_size_is_cut_in_extra_too() -> None:
    huge = "S" * (normalize.MAX_STORED_VALUE_CHARS + 10)
    [row] = rows_of(normalize_with_rules([good("1", DialStatus=huge, Blob=huge)]))
    extra = json.loads(row["extra"])
    assert extra["DialStatus"] == extra["Blob"] == huge[: normalize.MAX_STORED_VALUE_CHARS]
    assert row["load_notes"].endswith(f"extra: values cut to {normalize.MAX_STORED_VALUE_CHARS} characters")


def test_keys_longer_than_the_index_allows_reject_their_record() -> None:
    records = [good("1"), good("x" * 100_000), dict(good("3"), CampaignName="C" * 201)]
    batch = normalize_with_rules(records, campaign=None)
    assert column_of(batch, "record_key") == ["1"]
    assert rejects_of(batch) == [
        (1, "record_key: the lead id is longer than 200 characters"),
        (2, "campaign_name is longer than 200 characters"),
    ]


@pytest.mark.parametrize(
    ("updated", "reason"),
    [
        ("2024-02-30 10:00:00", "updated_at: not a time %Y-%m-%d %H:%M:%S"),
        ("2025-02-29 10:00:00", "updated_at: not a time %Y-%m-%d %H:%M:%S"),
        ("2024-05-01 24:00:00", "updated_at: not a time %Y-%m-%d %H:%M:%S"),
        ("2024-05-01 10:00:60", "updated_at: not a time %Y-%m-%d %H:%M:%S"),
        ("0000-01-01 00:00:00", "updated_at: before 2000-01-01 00:00:00 UTC"),
        ("0001-01-01 00:00:00", "updated_at: before 2000-01-01 00:00:00 UTC"),
        ("1999-12-31 23:59:59", "updated_at: before 2000-01-01 00:00:00 UTC"),
        (
            "9999-12-31 23:59:59",
            "updated_at: later than the latest time allowed (the load's start + tolerance)",
        ),
        (
            "2026-01-01 05:30:01",
            "updated_at: later than the latest time allowed (the load's start + tolerance)",
        ),
    ],
)
def test_dates_that_are_not_dates_or_out_of_bounds_reject_their_record(updated: str, reason: str) -> None:
    batch = normalize_with_rules([good("1"), good("2", UpdatedDate=updated)])
    assert column_of(batch, "record_key") == ["1"]
    assert rejects_of(batch) == [(1, reason)]


def test_valid_dates_at_the_bounds_and_leap_days_load() -> None:
    records = [
        good("leap", UpdatedDate="2024-02-29 23:59:59"),
        good("first", UpdatedDate="2000-01-01 05:30:00"),  # 2000-01-01 00:00 UTC
        good("last", UpdatedDate="2026-01-01 05:30:00"),
        good("unpadded", UpdatedDate="2024-5-1 9:05:07"),
    ]
    rows = {row["record_key"]: row["updated_at"] for row in rows_of(normalize_with_rules(records))}
    assert rows == {
        "leap": utc("2024-02-29 18:29:59"),
        "first": utc("2000-01-01 00:00:00"),
        "last": utc("2026-01-01 00:00:00"),
        "unpadded": utc("2024-05-01 03:35:07"),
    }


def test_every_time_column_is_bounded_and_the_duration_fits_its_column() -> None:
    records = [
        good("1", CreatedDate="0001-01-01 00:00:00"),
        good("2", StartTime="2024-02-30 10:00:00"),
        good("3", Duration="999999:00:00"),
        good("4", Duration="596523:14:07"),  # 2^31 - 1 seconds: the largest that fits
    ]
    batch = normalize_with_rules(records)
    assert rejects_of(batch) == [
        (0, "created_at: before 2000-01-01 00:00:00 UTC"),
        (1, "call_started_at: not a time %Y-%m-%d %H:%M:%S"),
        (2, "call_duration_s: more than 2147483647 seconds"),
    ]
    assert column_of(batch, "call_duration_s") == [2**31 - 1]


def test_a_record_of_another_campaign_is_rejected() -> None:
    batch = normalize_with_rules([good("1"), dict(good("2"), CampaignName="Support")])
    assert column_of(batch, "record_key") == ["1"]
    assert rejects_of(batch) == [(1, "campaign_name: not the campaign of the export request ('Sales')")]


def test_a_value_nested_too_deep_rejects_its_record_and_the_raw_record_is_cut() -> None:
    deep: Any = "bottom"
    for _ in range(300):
        deep = [deep]
    records = [good("1"), good("2", Note=deep), [[[[deep]]]]]
    batch = normalize_with_rules(records)
    assert column_of(batch, "record_key") == ["1"]
    assert rejects_of(batch) == [
        (1, "Note: nested deeper than 32 levels"),
        (2, "record is not a JSON object"),
    ]
    note = json.loads(json.loads(batch.rejects["raw_record"][0])["Note"])
    for _ in range(normalize.MAX_VALUE_DEPTH):
        [note] = note
    assert note == "(nested deeper than 32 levels: not kept)"


def test_nesting_within_the_limit_is_kept_as_json_text() -> None:
    nested: Any = {"leaf": "v"}
    for _ in range(normalize.MAX_VALUE_DEPTH - 1):
        nested = {"in": nested}
    [row] = rows_of(normalize_with_rules([good("1", Tree=nested)]))
    assert json.loads(json.loads(row["extra"])["Tree"]) == nested


def test_a_depth_bomb_as_the_whole_document_fails_fast_before_any_parser_sees_it() -> None:
    for body in (b"[" * 100_000, b'{"data": ' + b"[" * 100_000, b'[{"a": 1}, ' + b"[" * 5000):
        with pytest.raises(PayloadError, match="nested deeper than 1024 levels"):
            list(iter_records(body, "application/json"))


def test_the_depth_guard_ignores_brackets_inside_strings_and_escaped_quotes() -> None:
    tricky = '[[[ \\" [[[ \\\\' + "[" * 3000  # an escaped quote, an escaped backslash, then brackets
    body = json.dumps({"data": [good("1", Note=tricky)]}).encode()
    guard = normalize.parsing._DepthGuard(io.BytesIO(body))
    assert json.loads(guard.read()) == {"data": [good("1", Note=tricky)]}
    [row] = rows_of(normalize_with_rules(body))
    assert json.loads(row["extra"])["Note"] == tricky


def test_the_api_key_is_removed_at_any_depth_and_its_value_wherever_it_appears() -> None:
    records = [
        good("1", Meta={"apiKey": KEY, "list": [KEY, {"API_KEY": "x", "ok": f"is {KEY}"}]}),
        good("2", Comment=f"my key is {KEY}", Disposition=f"{KEY}!", **{f"f-{KEY}": "name leak"}),
        good("3", Attempts="many", Note=KEY),
        ["a list record", {"apikey": KEY}, KEY],
    ]
    batch = normalize_with_rules(records)
    assert KEY not in json.dumps(rows_of(batch), default=str) + batch.rejects.to_json()
    rows = {row["record_key"]: row for row in rows_of(batch)}
    assert json.loads(json.loads(rows["1"]["extra"])["Meta"]) == {"list": ["***", {"ok": "is ***"}]}
    assert rows["2"]["disposition"] == "***!"
    assert json.loads(rows["2"]["extra"])["Comment"] == "my key is ***"
    assert json.loads(rows["2"]["extra"])["f-***"] == "name leak"
    assert rows["2"]["load_notes"] == (
        "disposition: API key value replaced by ***; extra: API key value replaced by ***"
    )
    raws = [json.loads(raw) for raw in batch.rejects["raw_record"]]
    assert raws[0]["Note"] == "***"
    assert raws[1] == ["a list record", {}, "***"]


def test_a_value_after_an_api_key_name_in_a_list_is_redacted_in_any_shape_unconfigured() -> None:
    """Name-value pairs written as lists: the item after a key-like name is the key, wherever the list is."""
    value = "listed-key-0123456789abcdef"
    records = [
        ["Apikey", value],
        ["x", ["api_key", {"nested": value}], "tail"],
        [[["API-KEY", 12345678901234567890]]],
        good("1", Pairs=["apiKey", value, "Note", "kept"]),
        value,
    ]
    secrets = normalize.SecretValues()
    batch = normalize_with_rules(records, secrets=secrets)
    assert value not in json.dumps(rows_of(batch), default=str) + batch.rejects.to_json()
    assert "12345678901234567890" not in batch.rejects.to_json()
    raws = [json.loads(raw) for raw in batch.rejects["raw_record"]]
    assert raws[:3] == [["Apikey", "***"], ["x", ["api_key", "***"], "tail"], [[["API-KEY", "***"]]]]
    assert raws[3] == "***"  # the bare value, learned from the pairs before it
    [row] = rows_of(batch)
    assert json.loads(json.loads(row["extra"])["Pairs"]) == ["apiKey", "***", "Note", "kept"]
    assert secrets.redact(f"error quoting {value}") == "error quoting ***"


def test_a_key_value_found_under_an_api_key_field_is_redacted_elsewhere_even_unconfigured() -> None:
    learned = "learned-key-0123456789"
    records = [good("1", Apikey=learned, Note=f"copy of {learned}"), good("2", Apikey="short", Note="short")]
    secrets = normalize.SecretValues()
    batch = normalize_with_rules(records, secrets=secrets)
    rows = {row["record_key"]: row for row in rows_of(batch)}
    assert json.loads(rows["1"]["extra"])["Note"] == "copy of ***"
    assert json.loads(rows["2"]["extra"])["Note"] == "short"  # too short to be taken for a key
    assert secrets.redact(f"error quoting {learned}") == "error quoting ***"


def test_a_utf8_byte_order_mark_before_the_json_is_ignored() -> None:
    bom = b"\xef\xbb\xbf"
    for body in (
        bom + json.dumps([FULL_RECORD]).encode(),
        bom + b"  " + json.dumps({"data": [FULL_RECORD]}).encode(),
    ):
        assert len(normalize_with_rules(body).rows) == 1
    form = b"data=" + quote_bytes(bom + json.dumps([FULL_RECORD]).encode())
    assert len(normalize_with_rules(form, "application/x-www-form-urlencoded").rows) == 1


def quote_bytes(data: bytes) -> bytes:
    from urllib.parse import quote_from_bytes

    return quote_from_bytes(data).encode()


@pytest.mark.parametrize(
    "body",
    [
        {"status": "success", "message": "No data found", "uniqueId": "u1"},
        {"status": "success", "message": "no records", "data": None},
        {"message": "No Data Found", "data": ""},
    ],
)
def test_an_object_saying_there_is_no_data_is_an_empty_payload(body: dict[str, Any]) -> None:
    assert list(iter_records(json.dumps(body).encode(), "application/json")) == []


def test_an_error_posted_instead_of_records_fails_with_its_message() -> None:
    body = json.dumps({"status": "error", "message": "Export failed"}).encode()
    with pytest.raises(PayloadError, match="CloudAgent posted an error instead of records: 'Export failed'"):
        list(iter_records(body, "application/json"))


def test_every_data_field_of_a_form_is_loaded_in_order() -> None:
    first, second = [good("1"), good("2")], {"data": [good("3")]}
    body = urlencode([("data", json.dumps(first)), ("uniqueId", "u1"), ("data", json.dumps(second))]).encode()
    batch = normalize_with_rules(body, "application/x-www-form-urlencoded")
    assert list(zip(column_of(batch, "position"), column_of(batch, "record_key"), strict=True)) == [
        (0, "1"),
        (1, "2"),
        (2, "3"),
    ]


def test_every_data_part_of_a_multipart_body_is_loaded_in_order() -> None:
    parts = [json.dumps([good("1")]), json.dumps({"records": [good("2"), good("3")]})]
    body = "".join(
        f'--B\r\nContent-Disposition: form-data; name="data"\r\n\r\n{part}\r\n' for part in parts
    ).encode()
    batch = normalize_with_rules(body + b"--B--\r\n", "multipart/form-data; boundary=B")
    assert column_of(batch, "record_key") == ["1", "2", "3"]


def test_a_form_with_too_many_fields_is_a_payload_error() -> None:
    body = b"&".join([b"x=1"] * 1001 + [b"data=[]"])
    with pytest.raises(PayloadError, match="more than 1000 fields"):
        list(iter_records(body, "application/x-www-form-urlencoded"))


def test_per_record_custom_fields_give_the_same_extra_as_shared_ones() -> None:
    """Above MAX_COLUMNAR_EXTRA_FIELDS distinct names, extra is built record by record: same text."""
    records = [good(str(i), **{f"Own_{i}_{j}": f"v{j}" for j in range(3)}) for i in range(40)]
    assert len({name for record in records for name in record}) > MAX_COLUMNAR_EXTRA_FIELDS
    batch = normalize_with_rules(records)
    rows = rows_of(batch)
    assert (len(rows), len(batch.rejects)) == (40, 0)
    assert [row["record_key"] for row in rows] == [str(i) for i in range(40)]
    for i, (record, row) in enumerate(zip(records, rows, strict=True)):
        expected = {
            "LoanAmount": "250000",
            "UserName": "demo_user",
            **{f"Own_{i}_{j}": f"v{j}" for j in range(3)},
        }
        assert row["extra"] == json.dumps(dict(sorted(expected.items())), separators=(",", ":"))
        # The same record alone has few enough names for the shared (columnar) path: the same text.
        (alone,) = rows_of(normalize_with_rules([record]))
        assert alone["extra"] == row["extra"], i


@given(
    st.lists(
        st.dictionaries(st.sampled_from(["a", "B", "c_d", "Apikey", "x"]), st.just("v"), max_size=5),
        max_size=8,
    )
)
def test_field_names_are_every_name_in_the_order_first_seen(records: list[dict[str, str]]) -> None:
    from itertools import chain

    from cloudagent_etl.normalize.fields import _field_names

    assert _field_names(records) == list(dict.fromkeys(chain.from_iterable(records)))
