"""Streaming form bodies: the same fields and values as the standard library's whole-body parsers."""

from __future__ import annotations

import io
from urllib.parse import parse_qsl, unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudagent_etl import forms
from cloudagent_etl.errors import PayloadError
from cloudagent_etl.forms import form_fields, percent_decoded

URLENCODED = "application/x-www-form-urlencoded"
#: Bytes that matter to the urlencoded grammar, plus a few ordinary ones.
ALPHABET = b"ab%+&=0F2z\xc3\xa9"
form_bytes = st.binary(max_size=60).map(lambda raw: bytes(ALPHABET[x % len(ALPHABET)] for x in raw))


def read_in(value: io.BufferedIOBase, size: int) -> bytes:
    return b"".join(iter(lambda: value.read(size), b""))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80).map(lambda raw: bytes(b"%+aF0gz9\x00"[x % 9] for x in raw)))
def test_percent_decoding_is_the_standard_librarys(data: bytes) -> None:
    assert percent_decoded(data) == unquote_to_bytes(data.replace(b"+", b" "))


@settings(max_examples=300, deadline=None)
@given(body=form_bytes, piece=st.integers(1, 9), read_size=st.integers(1, 6))
def test_urlencoded_fields_stream_to_what_parse_qsl_gives(body: bytes, piece: int, read_size: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(forms, "PIECE_BYTES", piece)  # the body arrives in tiny pieces
        fields = [
            (name, read_in(value, read_size))  # type: ignore[arg-type]
            for name, value in form_fields(io.BytesIO(body), URLENCODED)
        ]
    expected = parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    assert [value for _, value in fields] == [value.encode("latin-1") for _, value in expected]
    names = [name.encode("latin-1").decode("utf-8", errors="replace") for name, _ in expected]
    assert [name for name, _ in fields] == names


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.binary(max_size=40).map(lambda raw: raw.replace(b"--B7", b"")), max_size=4),
    piece=st.integers(1, 12),
    read_size=st.integers(1, 7),
)
def test_multipart_parts_stream_in_order_whatever_the_piece_size(
    values: list[bytes], piece: int, read_size: int
) -> None:
    body = b"preamble\r\n" + b"".join(
        b'--B7\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n' % index + value + b"\r\n"
        for index, value in enumerate(values)
    )
    body += b"--B7--\r\nepilogue"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(forms, "PIECE_BYTES", piece)
        parts = [
            (name, read_in(value, read_size))  # type: ignore[arg-type]
            for name, value in form_fields(io.BytesIO(body), "multipart/form-data; boundary=B7")
        ]
    assert parts == [(f"f{index}", value) for index, value in enumerate(values)]


def test_an_unread_field_is_skipped_and_the_next_one_read() -> None:
    body = b"skip=" + b"x" * (3 * forms.PIECE_BYTES) + b"&data=%5B%5D"
    fields = form_fields(io.BytesIO(body), URLENCODED)
    assert next(fields)[0] == "skip"
    name, value = next(fields)
    assert (name, value.read()) == ("data", b"[]")


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"x" * 2000, URLENCODED, "field name longer than 1000 bytes"),
        (b"a=1&" * 1001, URLENCODED, "more than 1000 fields"),
        (b"no boundary here", "multipart/form-data; boundary=B", "no parts"),
        (
            b"--B\r\nContent-Disposition: form-data; name=data\r\n\r\n[1]",
            "multipart/form-data; boundary=B",
            "ends inside a part",
        ),
        (
            b"--B\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: form-data; name=data\r\n\r\nW10=\r\n--B--",
            "multipart/form-data; boundary=B",
            "Content-Transfer-Encoding 'base64'",
        ),
        (b"--B\r\n" + b"H" * 20_000, "multipart/form-data; boundary=B", "part headers"),
        (b"", "multipart/form-data", "no usable boundary"),
    ],
)
def test_malformed_or_oversized_forms_are_payload_errors(
    body: bytes, content_type: str, message: str
) -> None:
    with pytest.raises(PayloadError, match=message):
        [value.read() for _, value in form_fields(io.BytesIO(body), content_type)]
