"""Golden tests: hand-written payloads through every normalization rule, with exactly the expected rows."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import pytest

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
    out = []
    for record in batch.rows.astype(object).to_dict("records"):
        row = {
            key: None if value is pd.NA or value is pd.NaT or value is None else value
            for key, value in record.items()
        }
        for key in ("call_started_at", "call_ended_at", "created_at", "updated_at"):
            if row[key] is not None:
                row[key] = row[key].to_pydatetime()
        out.append(row)
    return out


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


@pytest.mark.parametrize("marker", ["", "None", "null", "NA", " none ", "NULL"])
def test_null_markers_become_null(marker: str) -> None:
    record = dict(FULL_RECORD, Name=marker, Skill=marker, Duration=marker, Attempts=marker, StartTime=marker)
    [only] = rows_of(normalize_one(json.dumps([record]).encode()))
    assert only["customer_name"] is only["skill"] is only["call_duration_s"] is None
    assert only["attempts"] is only["call_started_at"] is None


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
    assert secret not in batch.rows.to_json(date_format="iso") + batch.rejects.to_json()
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
    assert list(batch.rows["position"]) == [0]
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
    assert [list(b.rows["position"]) for b in batches] == [[0, 1], [2, 3], [4]]
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
    monkeypatch.setattr(normalize, "SLICE_BYTES", 7)
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
    extra = dict(zip(batch.rows["position"], batch.rows["extra"].map(json.loads), strict=True))
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
