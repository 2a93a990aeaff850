"""Making values storable: secrets redacted (configured and learned), NUL removed, lengths cut, noted."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from cloudagent_etl.errors import REDACTED, redact
from cloudagent_etl.normalize.columns import (
    MAX_STORED_VALUE_CHARS,
    MAX_VALUE_DEPTH,
    MIN_LEARNED_SECRET_CHARS,
    is_secret_field,
)


class SecretValues:
    """Values no stored or printed text may show: configured ones, plus those learned from the payload.

    The load gives the configured apiKey; normalizing adds every value of at least
    :data:`MIN_LEARNED_SECRET_CHARS` characters found under an API-key field, so that the same value is
    also removed where it appears under another name. The load redacts its error text with the result.
    """

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        self._values = {value for value in values if value}

    def learn(self, values: Iterable[Any]) -> None:
        self._values.update(
            value
            for value in values
            if isinstance(value, str) and len(value.strip()) >= MIN_LEARNED_SECRET_CHARS
        )

    def __iter__(self) -> Iterator[str]:
        # Longest first: a secret that contains another is replaced whole.
        return iter(sorted(self._values, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._values)

    def redact(self, text: str) -> str:
        return redact(text, self)

    def __repr__(self) -> str:
        return f"SecretValues({len(self._values)} values)"


SCALAR_TYPES = frozenset((str, int, bool, type(None), Decimal, float))


def as_text(value: Any) -> str | None:
    """A scalar source value as text: numbers exactly as written (ints and Decimals, never floats)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    return orjson.dumps(value, default=str).decode()


def deeper_than(value: Any, limit: int) -> bool:
    """Whether a dict/list nests more than ``limit`` levels (breadth first: never recurses)."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
    return False


@dataclass
class Cleaner:
    """Makes text storable: NUL removed, secrets replaced, length cut; remembers what it changed."""

    secrets: SecretValues
    limit: int = MAX_STORED_VALUE_CHARS
    changes: set[str] = field(default_factory=set)

    def text(self, value: str) -> str:
        if "\x00" in value:
            value = value.replace("\x00", "")
            self.changes.add("NUL characters removed")
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
                self.changes.add("API key value replaced by ***")
        if len(value) > self.limit:
            value = value[: self.limit]
            self.changes.add(f"values cut to {self.limit} characters")
        return value

    def nested(self, value: Any, depth: int = 1) -> Any:
        """A nested value without API-key fields, with clean text, cut below :data:`MAX_VALUE_DEPTH`."""
        if isinstance(value, str):
            return self.text(value)
        if not isinstance(value, dict | list):
            return value
        if depth > MAX_VALUE_DEPTH:
            return f"(nested deeper than {MAX_VALUE_DEPTH} levels: not kept)"
        if isinstance(value, list):
            return self._list(value, depth)
        return {
            self.text(str(key)): self.nested(item, depth + 1)
            for key, item in value.items()
            if not is_secret_field(str(key))
        }

    def _list(self, items: list[Any], depth: int) -> list[Any]:
        """A list's items clean; an item that follows an API-key name (``["Apikey", "<value>"]``, a
        name-value pair written as a list) is the key's value: replaced whole, and learned when text."""
        cleaned: list[Any] = []
        follows_key_name = False
        for item in items:
            if follows_key_name and item is not None:
                self.secrets.learn([item])
                self.changes.add("API key value replaced by ***")
                cleaned.append(REDACTED)
            else:
                cleaned.append(self.nested(item, depth + 1))
            # A name, not a key that happens to spell "apikey": a known key value is redacted, not followed.
            is_name = isinstance(item, str) and is_secret_field(item)
            follows_key_name = is_name and self.secrets.redact(item) == item
        return cleaned

    def json_text(self, value: Any) -> str:
        """A nested value as JSON text (what a column or ``extra`` keeps of it)."""
        return orjson.dumps(self.nested(value), default=str).decode()

    def raw_record(self, record: Any) -> str:
        """A reject's ``raw_record``: the record with values as text, API-key fields removed, clean."""
        if not isinstance(record, dict):
            return orjson.dumps(self.nested(record), default=str).decode()
        kept = {
            self.text(str(key)): (
                self.json_text(value) if isinstance(value, dict | list) else text_or_none(value, self)
            )
            for key, value in record.items()
            if not is_secret_field(str(key))
        }
        return orjson.dumps(kept).decode()


def text_or_none(value: Any, cleaner: Cleaner) -> str | None:
    text = as_text(value)
    return None if text is None else cleaner.text(text)
