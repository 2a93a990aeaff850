"""The receiver's one pass over a body: spooled, measured, hashed, uniqueId found, whatever the piece size."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from cloudagent_etl.receiver import body
from cloudagent_etl.receiver.body import BodySpool, UniqueIdSniffer
from cloudagent_etl.receiver.logs import mask_tokens

RECORDS = [{"CampaignName": "A", "DataUniqueId": "D-1", "PhoneNumber": "919800000001"}]


def sniffed(content: bytes, content_type: str, piece_bytes: int) -> str | None:
    sniffer = UniqueIdSniffer(content_type)
    for start in range(0, len(content), piece_bytes):
        sniffer.feed(content[start : start + piece_bytes])
    return sniffer.result()


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
@pytest.mark.parametrize("piece_bytes", [1, 7, 65536])
def test_the_unique_id_is_found_whatever_the_piece_size(
    content: str, content_type: str, expected: str | None, piece_bytes: int
) -> None:
    assert sniffed(content.encode(), content_type, piece_bytes) == expected


def test_unique_id_after_many_fields_and_far_into_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(body, "OVERLAP_BYTES", 64)
    fields = "&".join(f"f{i}=1" for i in range(10_000))
    form = f"{fields}&data=" + urlencode({"x": json.dumps({"uniqueId": "U-9"})})[2:]
    assert sniffed(form.encode(), "application/x-www-form-urlencoded", 7) == "U-9"
    as_json = json.dumps({"data": RECORDS * 50, "uniqueId": "U-9"})
    assert sniffed(as_json.encode(), "application/json", 7) == "U-9"


def test_a_form_field_wins_over_a_pair_inside_the_forms_data() -> None:
    form = urlencode({"data": json.dumps({"uniqueId": "inner"}), "uniqueId": "field"})
    assert sniffed(form.encode(), "application/x-www-form-urlencoded", 5) == "field"


def test_repeated_multipart_names_are_scanned_in_linear_time() -> None:
    """The pattern that once backtracked for seconds on 200 KB of repeated names."""
    hostile = b'--b\r\nContent-Disposition: form-data; name="uniqueId"\r\n' * 5_000
    started = time.perf_counter()
    assert sniffed(hostile, "multipart/form-data; boundary=b", 65536) is None
    assert time.perf_counter() - started < 1.0


def test_the_spool_measures_and_hashes_what_it_stores(tmp_path: Path) -> None:
    content = json.dumps({"uniqueId": "U-5", "data": RECORDS * 1000}).encode()
    spool = BodySpool("application/json", tmp_path, in_memory_bytes=1024)
    for start in range(0, len(content), 4096):
        spool.write(content[start : start + 4096])
    callback_body, unique_id = spool.finish()
    try:
        assert (callback_body.size, callback_body.sha256, unique_id) == (
            len(content),
            hashlib.sha256(content).hexdigest(),
            "U-5",
        )
        assert callback_body.file.read() == content
    finally:
        spool.close()


REQUEST_ID = "0b6f2c1e-3f5a-4c1e-9a47-1d2f3e4a5b6c"
TOKEN = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5"


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        (f"/callbacks/dial-status/{REQUEST_ID}/tok3n", f"/callbacks/dial-status/{REQUEST_ID}/***"),
        ("/callbacks/dial-status/shared-tok3n", "/callbacks/dial-status/***"),
        (f"/callbacks/dial-status/{REQUEST_ID}/tok3n/extra", f"/callbacks/dial-status/{REQUEST_ID}/***/***"),
        (f"/callbacks/dial-status//{REQUEST_ID}//tok3n/", f"/callbacks/dial-status//{REQUEST_ID}//***/"),
        ("/API/CALLBACKS/DIAL-STATUS/x/tok3n", "/API/CALLBACKS/DIAL-STATUS/***/***"),
        (f"GET /elsewhere/{TOKEN}?a=1 HTTP/1.1", "GET /elsewhere/***?a=1 HTTP/1.1"),
        ('{"path":"/callbacks/dial-status/a/b","x":1}', '{"path":"/callbacks/dial-status/***/***","x":1}'),
        ("/callbacks/dial-status", "/callbacks/dial-status"),
        (f"request {REQUEST_ID} loaded", f"request {REQUEST_ID} loaded"),
        ("/healthz", "/healthz"),
    ],
)
def test_mask_tokens_hides_every_token_whatever_the_route(text: str, logged: str) -> None:
    assert mask_tokens(text) == logged


def test_mask_tokens_hides_the_shared_token_anywhere() -> None:
    assert mask_tokens("header x-callback-token: s3cret!", "s3cret!") == "header x-callback-token: ***"
