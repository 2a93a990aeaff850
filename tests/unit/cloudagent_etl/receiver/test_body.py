"""The receiver's one pass over a body: spooled, measured, hashed, uniqueId found, whatever the piece size."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import pytest

from cloudagent_etl.receiver import body
from cloudagent_etl.receiver.body import BodyRejected, BodySniffer, BodySpool, Inflater, content_coding
from cloudagent_etl.receiver.logs import mask_tokens
from tests.timing import own_time

RECORDS = [{"CampaignName": "A", "DataUniqueId": "D-1", "PhoneNumber": "919800000001"}]


def sniffed(content: bytes, content_type: str, piece_bytes: int) -> str | None:
    sniffer = BodySniffer(content_type)
    for start in range(0, len(content), piece_bytes):
        sniffer.feed(content[start : start + piece_bytes])
    return sniffer.result().unique_id


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
    with own_time() as took:  # not the queue of a busy machine: the old pattern took seconds of CPU
        assert sniffed(hostile, "multipart/form-data; boundary=b", 65536) is None
    assert took.own_s < 1.0, took


def test_the_spool_measures_and_hashes_what_it_stores(tmp_path: Path) -> None:
    content = json.dumps({"uniqueId": "U-5", "data": RECORDS * 1000}).encode()
    spool = BodySpool("application/json", tmp_path, in_memory_bytes=1024)
    for start in range(0, len(content), 4096):
        spool.write(content[start : start + 4096])
    callback_body, sniffed_facts = spool.finish()
    unique_id = sniffed_facts.unique_id
    try:
        assert (callback_body.size, callback_body.sha256, unique_id) == (
            len(content),
            hashlib.sha256(content).hexdigest(),
            "U-5",
        )
        assert callback_body.file.read() == content
    finally:
        spool.close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_discarding_a_spool_on_a_full_disk_closes_it_without_a_second_error(tmp_path: Path) -> None:
    """Closing flushes the buffer; on a full disk that fails again, and must not turn a 503 into a 500."""
    spool = BodySpool("application/json", tmp_path, in_memory_bytes=1024)
    spool.file.close()
    spool.file = Path("/dev/full").open("wb")  # noqa: SIM115  (every flush fails with ENOSPC: a full disk)
    spool.file.write(b"[" + b" " * 100)  # buffered: the failure comes at close

    spool.close()

    assert spool.file.closed


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


def _depth_aware_unique_id(document: object) -> str | None:
    """What the sniffer must find: the top-level uniqueId, else the first one anywhere (document order)."""
    if isinstance(document, dict) and isinstance(document.get("uniqueId"), str):
        return str(document["uniqueId"])
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "uniqueId" and isinstance(value, str) and not found:
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    return found[0] if found else None


TRICKY = ['a "quoted" {brace', "back\\slash}", "]]]", '\\"', "uniqueId", '"uniqueId": "X"', "{[", "é"]


@pytest.mark.parametrize("seed", range(30))
def test_the_top_level_unique_id_decides_whatever_the_nesting_strings_and_pieces(seed: int) -> None:
    """Random documents with brackets, quotes and escapes in strings, cut at random places."""
    chooser = random.Random(seed)

    def value(depth: int) -> object:
        kind = chooser.choice(["text", "number", "list", "object"] if depth < 4 else ["text", "number"])
        if kind == "text":
            return chooser.choice(TRICKY)
        if kind == "number":
            return chooser.randint(-5, 10**20)
        if kind == "list":
            return [value(depth + 1) for _ in range(chooser.randint(0, 3))]
        fields = {f"k{i}": value(depth + 1) for i in range(chooser.randint(0, 3))}
        if chooser.random() < 0.4:
            fields["uniqueId"] = f"R-{depth}-{chooser.randint(0, 99)}"
        return fields

    records = [value(1) for _ in range(chooser.randint(1, 40))]
    document: object = records
    if chooser.random() < 0.7:
        items = [("data", records), ("note", chooser.choice(TRICKY))]
        if chooser.random() < 0.8:
            items.insert(chooser.randint(0, 2), ("uniqueId", "TOP"))
        document = dict(items)
    content = json.dumps(document, ensure_ascii=chooser.random() < 0.5, indent=chooser.choice([None, 2]))
    raw = content.encode()
    sniffer = BodySniffer("application/json")
    position = 0
    while position < len(raw):
        step = chooser.choice([1, 2, 3, 17, 333, 1025, 5000])
        sniffer.feed(raw[position : position + step])
        position += step
    assert sniffer.result().unique_id == _depth_aware_unique_id(document)


def test_a_trailing_backslash_run_waits_for_the_next_piece_without_growing() -> None:
    content = b'{"data": ["' + b"\\\\" * 50_000 + b'"], "uniqueId": "TOP"}'
    assert sniffed(content, "application/json", 1) == "TOP"
    assert sniffed(content, "application/json", 4095) == "TOP"


def _decoded(coding: str, encoded: bytes, piece: int, max_bytes: int = 10**9, ratio: int = 1000) -> bytes:
    inflater = Inflater(coding, max_bytes, ratio)
    out = [b"".join(inflater.decode(encoded[i : i + piece])) for i in range(0, len(encoded), piece)]
    return b"".join(out) + b"".join(inflater.finish())


@pytest.mark.parametrize("piece", [1, 1000, 1 << 20])
def test_gzip_and_deflate_decode_in_any_pieces(piece: int) -> None:
    plain = json.dumps(RECORDS * 2000).encode()
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert _decoded("gzip", gzip.compress(plain), piece) == plain
    assert _decoded("gzip", gzip.compress(plain) + gzip.compress(plain), piece) == plain * 2  # two members
    assert _decoded("deflate", zlib.compress(plain), piece) == plain
    assert _decoded("deflate", raw.compress(plain) + raw.flush(), piece) == plain


#: Bodies made when a test runs (not at collection, which every xdist worker repeats and must agree on).
BAD_ENCODINGS = {
    "not-gzip": ("gzip", lambda: b"plain text", 400, "not valid gzip"),
    "truncated": ("gzip", lambda: gzip.compress(b"x" * 1000)[:-6], 400, "ends before"),
    "trailing-junk": ("deflate", lambda: zlib.compress(b"x" * 1000) + b"junk", 400, "data after the end"),
    "ratio-bomb": (
        "gzip",
        lambda: gzip.compress(b"\0" * (50 * 1024 * 1024)),
        413,
        "inflates more than 1000 times",
    ),
    "size-bomb": (
        "gzip",
        lambda: gzip.compress(os.urandom(3 * 1024 * 1024)),
        413,
        "larger than 2097152 bytes once decoded",
    ),
}


@pytest.mark.parametrize(
    ("coding", "make_encoded", "status", "message"), BAD_ENCODINGS.values(), ids=BAD_ENCODINGS.keys()
)
def test_bad_or_bombed_encodings_are_refused_piece_by_piece(
    coding: str, make_encoded: Callable[[], bytes], status: int, message: str
) -> None:
    encoded = make_encoded()
    inflater = Inflater(coding, 2 * 1024 * 1024, 1000)

    def decode_all() -> None:
        for start in range(0, len(encoded), 1024):
            for decoded in inflater.decode(encoded[start : start + 1024]):
                assert len(decoded) <= body.INFLATE_PIECE_BYTES
        list(inflater.finish())

    with pytest.raises(BodyRejected, match=message) as refused:
        decode_all()
    assert refused.value.status_code == status
    assert inflater.decoded <= 2 * 1024 * 1024 + body.INFLATE_PIECE_BYTES


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        (None, None),
        ("", None),
        ("identity", None),
        ("GZIP", "gzip"),
        ("x-gzip", "gzip"),
        ("deflate", "deflate"),
    ],
)
def test_content_codings_the_receiver_decodes(header: str | None, coding: str | None) -> None:
    assert content_coding(header) == coding


@pytest.mark.parametrize("header", ["br", "zstd", "gzip, gzip", "compress", "gzip, br"])
def test_other_content_codings_are_415(header: str) -> None:
    with pytest.raises(BodyRejected) as refused:
        content_coding(header)
    assert refused.value.status_code == 415


@pytest.mark.parametrize(
    ("document", "part"),
    [
        ({"uniqueId": "U", "part": 2, "parts": 3, "data": RECORDS}, (2, 3)),
        ({"data": RECORDS * 200, "parts": 3, "part": 3, "uniqueId": "U"}, (3, 3)),
        ({"uniqueId": "U", "data": [{**RECORDS[0], "part": 1, "parts": 2}]}, None),  # a record's, not ours
        ({"uniqueId": "U", "part": 1, "data": RECORDS}, None),  # no count
        ({"uniqueId": "U", "part": 4, "parts": 3, "data": RECORDS}, None),  # not a part of 3
        (RECORDS, None),
    ],
)
@pytest.mark.parametrize("piece_bytes", [3, 65536])
def test_a_body_that_says_it_is_part_i_of_n_is_read_at_the_top_level_only(
    document: object, part: tuple[int, int] | None, piece_bytes: int
) -> None:
    content = json.dumps(document).encode()
    sniffer = BodySniffer("application/json")
    for start in range(0, len(content), piece_bytes):
        sniffer.feed(content[start : start + piece_bytes])
    assert sniffer.result().part == part
