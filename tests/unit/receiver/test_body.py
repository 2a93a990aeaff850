"""The receiver's two cheap looks at a body: is JSON-typed data parseable, and which uniqueId it carries."""

from __future__ import annotations

import io
import json
from urllib.parse import urlencode

import pytest

from cloudagent_etl.receiver import body
from cloudagent_etl.receiver.app import mask_path

RECORDS = [{"CampaignName": "A", "DataUniqueId": "D-1", "PhoneNumber": "919800000001"}]


@pytest.mark.parametrize(
    ("content", "content_type", "expected"),
    [
        (json.dumps({"uniqueId": "U-42", "data": RECORDS}), "application/json", "U-42"),
        (json.dumps({"data": RECORDS, "uniqueId": "U-42"}), "application/json; charset=utf-8", "U-42"),
        (json.dumps(RECORDS), "application/json", None),
        (
            urlencode({"uniqueId": "U 42", "data": json.dumps(RECORDS)}),
            "application/x-www-form-urlencoded",
            "U 42",
        ),
        (
            urlencode({"data": json.dumps({"uniqueId": "U-42", "data": RECORDS})}),
            "application/x-www-form-urlencoded",
            "U-42",
        ),
        (urlencode({"data": json.dumps(RECORDS)}), "application/x-www-form-urlencoded", None),
        (
            '--b\r\nContent-Disposition: form-data; name="uniqueId"\r\n\r\nU-42\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
            "U-42",
        ),
        (
            '--b\r\nContent-Disposition: form-data; name="data"\r\n\r\n{"uniqueId":"U-42"}\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
            "U-42",
        ),
        ('{"uniqueId": "U-\\u0000"}', "application/json", None),
        ("not json at all", "text/plain", None),
    ],
)
def test_find_unique_id(content: str, content_type: str, expected: str | None) -> None:
    assert body.find_unique_id(io.BytesIO(content.encode()), content_type) == expected


def test_find_unique_id_across_read_blocks_and_after_many_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(body, "READ_BLOCK_BYTES", 7)
    monkeypatch.setattr(body, "OVERLAP_BYTES", 64)
    fields = "&".join(f"f{i}=1" for i in range(10_000))
    form = f"{fields}&data=" + urlencode({"x": json.dumps({"uniqueId": "U-9"})})[2:]
    assert body.find_unique_id(io.BytesIO(form.encode()), "application/x-www-form-urlencoded") == "U-9"
    as_json = json.dumps({"data": RECORDS * 50, "uniqueId": "U-9"})
    assert body.find_unique_id(io.BytesIO(as_json.encode()), "application/json") == "U-9"


@pytest.mark.parametrize(
    ("content", "content_type", "expected"),
    [
        (b"[1, 2]", "application/json", "pending"),
        (b"[1, 2", "application/json", "unparseable"),
        (b"\xff\xfe[1]", "application/vnd.cloudagent+json", "unparseable"),
        (b"[1, 2", "text/plain", "pending"),
        (b"data=%7B", "application/x-www-form-urlencoded", "pending"),
        (b"[" + b"1," * body.PARSE_CHECK_MAX_BYTES, "application/json", "pending"),
    ],
)
def test_parse_state(content: bytes, content_type: str, expected: str) -> None:
    assert body.parse_state(io.BytesIO(content), len(content), content_type) == expected


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/callbacks/dial-status/req-1/tok3n", "/callbacks/dial-status/req-1/***"),
        ("/callbacks/dial-status/shared-tok3n", "/callbacks/dial-status/***"),
        ("/callbacks/dial-status/req-1/tok3n/extra", "/callbacks/dial-status/req-1/***"),
        ("/callbacks/dial-status", "/callbacks/dial-status"),
        ("/healthz", "/healthz"),
    ],
)
def test_mask_path_hides_tokens(path: str, logged: str) -> None:
    assert mask_path(path) == logged
