"""Raw callback bytes -> typed Arrow tables of dial-status rows, plus the rows that broke the contract.

A package by concern: :mod:`.columns` (the row's columns, field aliases, limits), :mod:`.parsing` (bytes ->
records, streamed), :mod:`.cleaning` (secrets, NUL, lengths), :mod:`.arrow` (typing text columns with
``pyarrow.compute``), :mod:`.fields` (which field feeds which column or ``extra``) and :mod:`.records`
(a batch of records -> rows and rejects; a payload -> batches).

Pure: bytes (or a binary file) and a content type in, Arrow tables out; no database. The document is
parsed as a stream into batches of records, so a payload of hundreds of MB is never held as one list of
Python objects. A JSON array is read in slices of :data:`SLICE_BYTES`, each cut at a record boundary and
parsed by orjson (~2x faster than a streaming parser); a slice whose values are not plain text/integers
(orjson reads a fraction, or an integer beyond 64 bits, as a float) is parsed again by ijson, which
keeps numbers exact, and every other shape (object, nested document, invalid JSON) streams through ijson.
Form bodies stream too (:mod:`cloudagent_etl.forms`): no field is held whole.

The rules (the contract is in ``docs/cloudagent-contract.md``, the data model in ``docs/data-model.md``):

- Shapes: a JSON array of records; a JSON object holding them under ``data``/``records``/``details``/
  ``Data`` (the value may also be a JSON string); a form body (``application/x-www-form-urlencoded`` or
  ``multipart/form-data``) whose ``data`` field holds either. A form with several ``data`` fields
  (or parts) gives the records of every one, in order. A UTF-8 byte-order mark before the JSON is
  ignored. An object without records whose ``message`` says there is no data (``"No data found"``)
  is an empty payload; one whose ``status`` is ``error`` fails with CloudAgent's message. Anything
  else raises :class:`PayloadError` (the load records it as a failed load), as does a document nested
  deeper than :data:`MAX_DOCUMENT_DEPTH` levels (checked before any parser sees the bytes) and a form
  with more than ``forms.MAX_FORM_FIELDS`` fields.
- Field names map to columns through :data:`FIELD_ALIASES`, ignoring case and ``_``/``-``/space, so
  ``DataUniqueId``, ``dataUniqueId`` and ``data_unique_id`` are one field. A field whose name holds
  ``apikey`` (``Apikey``, ``apiKey``, ``api_key``, ...) is dropped, at any depth; every other unknown
  field is kept, per row, in the JSON column ``extra`` with its raw value (nested values as JSON text).
- Secrets: every value of :class:`SecretValues` (the configured apiKey, and any value of at least
  :data:`MIN_LEARNED_SECRET_CHARS` characters found under an API-key field of the payload) is replaced
  by ``***`` wherever it appears: columns, ``extra``, field names, rejects.
- NUL characters (which PostgreSQL cannot store in text or JSON) are removed from every value.
- ``""``, ``"None"``, ``"null"``, ``"NA"`` (any case, surrounding blanks ignored) are NULL.
- Times are wall-clock in ``timezone`` (``YYYY-MM-DD HH:MM:SS``) and become UTC; a date that does not
  exist (``2026-02-30``, ``24:00:00``) is not a time, and a time before :data:`EARLIEST_TIME` or more
  than the load's future tolerance (default :data:`FUTURE_TOLERANCE`) after the load is out of range.
  Durations ``HH:MM:SS`` (or plain seconds, at most :data:`MAX_INTEGER`) become integer seconds; ids
  stay text (JSON numbers are never read as floats).
- Lengths: ``campaign_name`` and the lead id are at most :data:`MAX_KEY_CHARS` characters; every other
  text column is cut to :data:`MAX_TEXT_CHARS` characters, and the whole value of a cut source field
  goes to ``extra`` under its field name. A value in ``extra`` or a reject's ``raw_record`` is cut to
  :data:`MAX_STORED_VALUE_CHARS` characters; a record whose ``extra`` would exceed
  :data:`MAX_EXTRA_CHARS` is rejected. A value nested deeper than :data:`MAX_VALUE_DEPTH` levels
  rejects its record.
- Every change made to store a row (NUL removed, value cut, secret replaced) is listed in its
  ``load_notes``; a row needing none has ``load_notes`` NULL.
- ``phone_number`` is the digits of the raw number with the country code 91: 10 digits get ``91``
  prefixed, a trunk ``0`` + 10 digits becomes ``91`` + 10 digits, anything else keeps its digits.
- ``dial_status`` keeps the full text; ``dial_status_first``/``dial_status_last`` are the legs of
  ``"a -> b -> c"``.
- ``record_key`` is the lead id, else ``sha256:`` + 32 hex chars of campaign, canonical phone and the
  UTC created time; a row with neither is rejected.
- A row is rejected (with every reason found) when it has no campaign, a campaign other than the
  request's, no usable ``updated_at``, no record key, a key too long, a value nested too deep, or a
  value that does not parse as its type or lies out of range.
- Within a batch, rows of one key are ordered by (``updated_at``, position): ``is_latest`` marks the
  one that may become current, and an earlier row with the same key *and* ``updated_at`` is dropped
  (the later one is the same version, as received last).
"""

from cloudagent_etl.normalize.cleaning import SecretValues
from cloudagent_etl.normalize.columns import (
    DEFAULT_BATCH_SIZE,
    EARLIEST_TIME,
    FIELD_ALIASES,
    FUTURE_TOLERANCE,
    INTEGER_COLUMNS,
    KEY_COLUMNS,
    MAX_DOCUMENT_DEPTH,
    MAX_EXTRA_CHARS,
    MAX_INTEGER,
    MAX_KEY_CHARS,
    MAX_STORED_VALUE_CHARS,
    MAX_TEXT_CHARS,
    MAX_VALUE_DEPTH,
    MIN_LEARNED_SECRET_CHARS,
    RECORD_CONTAINER_KEYS,
    REJECT_COLUMNS,
    ROW_COLUMN_KINDS,
    ROW_COLUMNS,
    TIME_COLUMNS,
    VALUE_COLUMNS,
    field_token,
    is_secret_field,
)
from cloudagent_etl.normalize.parsing import Body, iter_record_batches, iter_records
from cloudagent_etl.normalize.records import (
    NormalizedBatch,
    RecordRules,
    hashed_record_key,
    normalize_payload,
    normalize_records,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "EARLIEST_TIME",
    "FIELD_ALIASES",
    "FUTURE_TOLERANCE",
    "INTEGER_COLUMNS",
    "KEY_COLUMNS",
    "MAX_DOCUMENT_DEPTH",
    "MAX_EXTRA_CHARS",
    "MAX_INTEGER",
    "MAX_KEY_CHARS",
    "MAX_STORED_VALUE_CHARS",
    "MAX_TEXT_CHARS",
    "MAX_VALUE_DEPTH",
    "MIN_LEARNED_SECRET_CHARS",
    "RECORD_CONTAINER_KEYS",
    "REJECT_COLUMNS",
    "ROW_COLUMNS",
    "ROW_COLUMN_KINDS",
    "TIME_COLUMNS",
    "VALUE_COLUMNS",
    "Body",
    "NormalizedBatch",
    "RecordRules",
    "SecretValues",
    "field_token",
    "hashed_record_key",
    "is_secret_field",
    "iter_record_batches",
    "iter_records",
    "normalize_payload",
    "normalize_records",
]
