"""Phone numbers to E.164, and the keyed pseudonym analysts count, join and deduplicate by.

A number is parsed by ``phonenumbers`` (Google's libphonenumber metadata) in a default region
(``CLOUDAGENT_PHONE_REGION``, ``IN``): ``+91 98765 43210``, ``098765-43210`` and ``9876543210`` are one
number, ``+919876543210``. Its pseudonym is HMAC-SHA256 of that E.164 text under the pseudonym key, in hex:
stable while the key is, and worthless without it (a plain hash of ~10^10 numbers is reversed in minutes).

The key is held outside the warehouse (the password of the Airflow connection ``cloudagent_pseudonym``, or
``CLOUDAGENT_PSEUDONYM_KEY``); :class:`PseudonymKey` never shows it in a repr, str, log or error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final

import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

from cloudagent_etl.errors import ConfigurationError

PSEUDONYM_KEY_SETTING: Final = "CLOUDAGENT_PSEUDONYM_KEY"
PSEUDONYM_CONNECTION: Final = "cloudagent_pseudonym"
PHONE_REGION_SETTING: Final = "CLOUDAGENT_PHONE_REGION"
DEFAULT_PHONE_REGION: Final = "IN"
#: Shortest key accepted: 16 characters (a generated key is 64 hex characters, 256 bits).
MIN_KEY_CHARS: Final = 16
#: Raw numbers whose E.164 form is remembered (a payload repeats a lead's number in every version).
_PARSE_CACHE_SIZE: Final = 1 << 18


class PhoneNumberError(ConfigurationError):
    """A phone number given to erase cannot be read as one (the message never quotes it)."""


class PseudonymKey:
    """The secret key of the pseudonyms; shows ``***`` wherever it is printed."""

    __slots__ = ("_inner", "_key", "_outer")

    def __init__(self, key: str) -> None:
        if len(key.strip()) < MIN_KEY_CHARS:
            raise ConfigurationError(
                f"the pseudonym key (connection {PSEUDONYM_CONNECTION}'s password, or "
                f"{PSEUDONYM_KEY_SETTING}) must be at least {MIN_KEY_CHARS} characters; generate one with "
                "`openssl rand -hex 32`"
            )
        self._key = key.strip().encode()
        self._inner, self._outer = _hmac_pads(self._key)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PseudonymKey:
        """The key of ``CLOUDAGENT_PSEUDONYM_KEY``; a ConfigurationError naming the setting when unset."""
        value = (os.environ if env is None else env).get(PSEUDONYM_KEY_SETTING, "")
        if not value.strip():
            raise ConfigurationError(
                f"no pseudonym key: set {PSEUDONYM_KEY_SETTING} (the command line, the local stack) or the "
                f"password of the Airflow connection {PSEUDONYM_CONNECTION} (the DAGs); no record is stored "
                "without its pseudonym. Generate one with `openssl rand -hex 32` and keep it outside the "
                "warehouse"
            )
        return cls(value)

    def pseudonym(self, e164: str) -> str:
        """HMAC-SHA256 of the E.164 number, hex (64 characters).

        From copies of the hash states after the key's two pads (RFC 2104): half the CPU of
        ``hmac.digest``, which hashes the pads again for every number (a load hashes one per row).
        """
        inner = self._inner.copy()
        inner.update(e164.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def pseudonyms(self, e164: pa.Array) -> pa.Array:
        """The pseudonym of each number of an Arrow text array (NULL stays NULL); one HMAC per distinct."""
        distinct = pc.unique(e164)
        digests = [None if number is None else self.pseudonym(number) for number in distinct.to_pylist()]
        return pc.take(pa.array(digests, pa.string()), pc.index_in(e164, value_set=distinct))

    def __repr__(self) -> str:
        return "PseudonymKey('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PseudonymKey) and hmac.compare_digest(other._key, self._key)

    def __hash__(self) -> int:
        return hash(self._key)


def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after the inner and the outer pad of ``key`` (RFC 2104)."""
    block = hashlib.sha256().block_size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    return (
        hashlib.sha256(bytes(byte ^ 0x36 for byte in key)),
        hashlib.sha256(bytes(byte ^ 0x5C for byte in key)),
    )


def phone_region(env: Mapping[str, str] | None = None) -> str:
    """The region a number without ``+country`` is read in (``CLOUDAGENT_PHONE_REGION``, default IN)."""
    region = (os.environ if env is None else env).get(PHONE_REGION_SETTING, "").strip().upper()
    region = region or DEFAULT_PHONE_REGION
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigurationError(
            f"{PHONE_REGION_SETTING}={region!r} is not a region code phonenumbers knows (e.g. IN, GB, US)"
        )
    return region


@lru_cache(maxsize=_PARSE_CACHE_SIZE)
def to_e164(raw: str, region: str = DEFAULT_PHONE_REGION) -> str | None:
    """The number in E.164 (``+919876543210``), or None when it cannot be a phone number of any region.

    A number is kept when its length is possible for its country (``is_possible_number``): stricter
    validity would drop numbers of ranges the metadata does not know yet.
    """
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


#: India's common writings, read without a parse: ``9876543210``, ``+91 98765 43210``, ``0091...``,
#: ``098765-43210`` and a mobile number with ``91`` in front. Each gives exactly what ``phonenumbers``
#: gives (a property test compares them); every other value is parsed. A parse costs ~40 us, so a payload
#: of distinct numbers would spend more on parsing than on its whole load without this.
_INDIA_FAST = (r"^(?:\+91|0091)?(?P<n>[1-9]\d{9})$", r"^0(?P<n>[1-9]\d{9})$", r"^91(?P<n>[6-9]\d{9})$")
_SEPARATORS = r"[\s().-]"


def e164_array(raw: pa.Array, region: str) -> pa.Array:
    """:func:`to_e164` of each value of an Arrow text array (NULL where it is not a number): India's
    common writings in a few vectorized passes (in region IN), every other value parsed once per distinct."""
    result = pa.nulls(len(raw), pa.string())
    pending = raw.is_valid()
    if region == "IN":
        compact = pc.replace_substring_regex(raw, _SEPARATORS, "")
        for pattern in _INDIA_FAST:
            national = pc.struct_field(pc.extract_regex(compact, pattern), [0])
            found = pc.and_(pending, national.is_valid())
            result = pc.if_else(found, pc.binary_join_element_wise("+91", national, ""), result)
            pending = pc.and_(pending, pc.invert(found))
    if not pc.any(pending).as_py():
        return result
    others = pc.filter(raw, pending)
    distinct = pc.unique(others)
    parsed = [to_e164(value, region) for value in distinct.to_pylist()]
    looked_up = pc.take(pa.array(parsed, pa.string()), pc.index_in(raw, value_set=distinct))
    return pc.if_else(pending, looked_up, result)


def parse_phone(raw: str, region: str) -> str:
    """A number given by a person (to erase): E.164, or :class:`PhoneNumberError` saying what is wrong."""
    digits = sum(character.isdigit() for character in raw)
    e164 = to_e164(raw.strip(), region) if raw.strip() else None
    if e164 is None:
        raise PhoneNumberError(
            f"the phone number given ({digits} digits) cannot be read as a phone number in region {region} "
            "(write it as +<country code><number>, or as dialled in that region, e.g. +91 98765 43210, "
            "098765-43210 or 9876543210); nothing was changed"
        )
    return e164


def written_forms(e164: str) -> list[str]:
    """Ways the number may be written (E.164, national, international, digits): what a scan looks for."""
    number = phonenumbers.parse(e164)
    national = str(number.national_number)
    forms = {
        e164,
        e164[1:],
        national,
        "0" + national,
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL),
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL),
    }
    return sorted(forms)
