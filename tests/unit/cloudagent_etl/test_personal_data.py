"""Phone numbers to E.164, pseudonyms, the key that never shows, and whose record a raw record is."""

from __future__ import annotations

import hashlib
import hmac
import logging

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudagent_etl.errors import ConfigurationError
from cloudagent_etl.normalize import RecordRules, normalize_records
from cloudagent_etl.personal_data.analyst import analyst_fields
from cloudagent_etl.personal_data.phones import (
    PhoneNumberError,
    PseudonymKey,
    e164_array,
    parse_phone,
    phone_region,
    to_e164,
)
from cloudagent_etl.personal_data.records import record_phone
from cloudagent_etl.personal_data.retention import RetentionSettings

SECRET = "a-very-secret-pseudonym-key-42"


@pytest.mark.parametrize(
    "written",
    ["+91 98765 43210", "+919876543210", "919876543210", "098765-43210", "9876543210", " 98765 43210 "],
)
def test_every_common_writing_of_an_indian_number_is_one_e164_number(written: str) -> None:
    assert parse_phone(written, "IN") == "+919876543210"


def test_the_default_region_reads_numbers_without_a_country_code() -> None:
    assert to_e164("020 7946 0958", "GB") == "+442079460958"
    assert to_e164("+44 20 7946 0958", "IN") == "+442079460958"  # a country code wins over the region
    assert phone_region({}) == "IN"
    assert phone_region({"CLOUDAGENT_PHONE_REGION": "gb"}) == "GB"
    with pytest.raises(ConfigurationError, match="CLOUDAGENT_PHONE_REGION='XX' is not a region code"):
        phone_region({"CLOUDAGENT_PHONE_REGION": "XX"})


@pytest.mark.parametrize("bad", ["", "   ", "12", "abc", "+999 1234", "98765432109876543210"])
def test_a_number_that_cannot_be_read_is_refused_without_being_quoted(bad: str) -> None:
    with pytest.raises(PhoneNumberError, match="cannot be read as a phone number in region IN") as raised:
        parse_phone(bad, "IN")
    assert not bad.strip() or bad.strip() not in str(raised.value)
    assert "nothing was changed" in str(raised.value)


def test_the_pseudonym_is_hmac_sha256_of_the_e164_number_and_stable() -> None:
    key = PseudonymKey(SECRET)
    expected = hmac.new(SECRET.encode(), b"+919876543210", hashlib.sha256).hexdigest()
    assert key.pseudonym("+919876543210") == expected
    assert PseudonymKey(SECRET).pseudonym("+919876543210") == expected
    assert PseudonymKey(SECRET + "x").pseudonym("+919876543210") != expected


@pytest.mark.parametrize("length", [16, 63, 64, 65, 200])
def test_the_pseudonym_is_rfc_2104_hmac_for_keys_shorter_and_longer_than_a_block(length: int) -> None:
    """The pads are hashed once per key; a key longer than SHA-256's 64-byte block is hashed first."""
    secret = ("key-" * 60)[:length]
    for number in ("+919876543210", "+14155550100", ""):
        expected = hmac.new(secret.encode(), number.encode(), hashlib.sha256).hexdigest()
        assert PseudonymKey(secret).pseudonym(number) == expected


def test_a_column_is_parsed_and_hashed_once_per_distinct_value() -> None:
    raw = pa.array(["9876543210", "098765-43210", None, "junk", "9876543210"])
    e164 = e164_array(raw, "IN")
    assert e164.to_pylist() == ["+919876543210", "+919876543210", None, None, "+919876543210"]
    key = PseudonymKey(SECRET)
    assert key.pseudonyms(e164).to_pylist() == [key.pseudonym("+919876543210")] * 2 + [None, None] + [
        key.pseudonym("+919876543210")
    ]


def test_the_key_never_shows_itself(caplog: pytest.LogCaptureFixture) -> None:
    key = PseudonymKey(SECRET)
    logging.getLogger("test").warning("key %s %r %s", key, key, [key])
    shown = [repr(key), str(key), f"{key}", caplog.text]
    assert all(SECRET not in text for text in shown)
    assert repr(key) == "PseudonymKey('***')"
    with pytest.raises(ConfigurationError) as raised:
        PseudonymKey("short")
    assert "short" not in str(raised.value)


def test_a_missing_key_names_both_settings() -> None:
    with pytest.raises(ConfigurationError, match="CLOUDAGENT_PSEUDONYM_KEY") as raised:
        PseudonymKey.from_env({})
    assert "cloudagent_pseudonym" in str(raised.value)


def test_the_phone_field_of_a_raw_record_is_the_one_normalize_reads() -> None:
    assert record_phone({"CustomerNumber": "1", "PhoneNumber": "9876543210"}) == "9876543210"
    assert record_phone({"phone_no": "98765 43210"}) == "98765 43210"
    assert record_phone({"PhoneNumber": "null", "MobileNumber": "9876543210"}) == "9876543210"
    assert record_phone({"Name": "x"}) is None
    assert record_phone(["not", "a", "record"]) is None


def test_normalize_keeps_an_erased_person_out_counted_and_without_a_reject() -> None:
    key = PseudonymKey(SECRET)
    at = "2025-06-01 10:00:00"
    records = [
        {"CampaignName": "Sales", "DataUniqueId": key_, "PhoneNumber": phone, "UpdatedDate": updated}
        for key_, phone, updated in (
            ("1", "098765-43210", at),
            ("2", "9123456780", at),
            ("3", "+91 98765 43210", "bad"),
            ("4", "junk", at),
        )
    ]
    rules = RecordRules(pseudonym_key=key, suppressed=frozenset({key.pseudonym("+919876543210")}))
    batch = normalize_records(records, rules=rules)
    assert batch.erased == 2
    assert batch.rejects.empty  # the erased person's bad record is not kept as a reject either
    assert batch.rows.column("record_key").to_pylist() == ["2", "4"]
    assert batch.rows.column("phone_e164").to_pylist()[0] == "+919123456780"
    assert batch.rows.column("phone_e164").is_null().to_pylist() == [
        False,
        True,
    ]  # not a number: loaded, no pseudonym


def test_the_analyst_allow_list_and_the_retention_settings_are_read_strictly() -> None:
    assert analyst_fields({}) == ()
    assert analyst_fields({"CLOUDAGENT_ANALYST_FIELDS": "City, Plan,City"}) == ("City", "Plan")
    assert analyst_fields({"CLOUDAGENT_ANALYST_FIELDS": '["City"]'}) == ("City",)
    with pytest.raises(ConfigurationError, match="CLOUDAGENT_ANALYST_FIELDS"):
        analyst_fields({"CLOUDAGENT_ANALYST_FIELDS": "[1]"})
    assert RetentionSettings.from_env({}) == RetentionSettings(30, None)
    for bad in ("0", "-1", "ten"):
        with pytest.raises(ConfigurationError, match="CLOUDAGENT_RAW_RETENTION_DAYS must be a whole number"):
            RetentionSettings.from_env({"CLOUDAGENT_RAW_RETENTION_DAYS": bad})


@settings(max_examples=300, deadline=None)
@given(
    national=st.from_regex(r"[0-9]{8,11}", fullmatch=True),
    prefix=st.sampled_from(["", "0", "91", "+91", "0091", "+91 ", "+91-0", "(0)"]),
    separator=st.sampled_from(["", " ", "-", "."]),
)
def test_the_vectorized_reading_of_indian_numbers_is_the_parsers(
    national: str, prefix: str, separator: str
) -> None:
    written = prefix + separator.join([national[:5], national[5:]])
    assert e164_array(pa.array([written]), "IN").to_pylist() == [to_e164(written, "IN")]
