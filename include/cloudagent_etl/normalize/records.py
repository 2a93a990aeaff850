"""One batch of records -> typed rows and rejects, and a whole payload as a stream of such batches."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cloudagent_etl.errors import REDACTED
from cloudagent_etl.normalize.arrow import (
    TEXT,
    canonical_phone,
    cut,
    legs,
    longer_than,
    mask_of,
    may_contain,
    nulled,
    parse_count,
    parse_duration,
    parse_time,
)
from cloudagent_etl.normalize.cleaning import Cleaner, SecretValues
from cloudagent_etl.normalize.columns import (
    DEFAULT_BATCH_SIZE,
    EARLIEST_TIME,
    FIELD_ALIASES,
    FUTURE_TOLERANCE,
    KEY_COLUMNS,
    MAX_COLUMNAR_EXTRA_FIELDS,
    MAX_EXTRA_CHARS,
    MAX_INTEGER,
    MAX_KEY_CHARS,
    MAX_STORED_VALUE_CHARS,
    MAX_TEXT_CHARS,
    REJECT_COLUMNS,
    ROW_COLUMN_KINDS,
    ROW_COLUMNS,
    TIME_COLUMNS,
    TIME_FORMAT,
)
from cloudagent_etl.normalize.fields import (
    FieldPlan,
    extra_json,
    field_plan,
    flattened,
    record_extra,
    text_struct,
)
from cloudagent_etl.normalize.parsing import Body, iter_record_batches
from cloudagent_etl.personal_data.phones import DEFAULT_PHONE_REGION, PseudonymKey, e164_array
from cloudagent_etl.settings import (
    DEFAULT_TIMEZONE,
)

#: Why a record of a person erased on request is kept out (counted; no reject row: it would hold them).
ERASED_REASON = "erased on request"


@dataclass(frozen=True)
class RecordRules:
    """What the records of one payload are checked against besides their types (see the module doc)."""

    timezone: str = DEFAULT_TIMEZONE
    #: The export request's campaign: a record of another campaign is rejected (None: not checked).
    campaign: str | None = None
    earliest_time: datetime = EARLIEST_TIME
    #: Latest time a record may carry; None: :data:`FUTURE_TOLERANCE` after the payload is read.
    latest_time: datetime | None = None
    secrets: SecretValues = field(default_factory=SecretValues)
    #: The key of ``phone_pseudonym`` (None: the column stays NULL; the load always gives one).
    pseudonym_key: PseudonymKey | None = None
    #: The region a number without ``+country`` is read in.
    phone_region: str = DEFAULT_PHONE_REGION
    #: Pseudonyms of people erased on request: their records are kept out (:data:`ERASED_REASON`).
    suppressed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NormalizedBatch:
    """One batch of a payload: ``rows`` (``ROW_COLUMNS`` + ``position``, ``is_latest``) and ``rejects``.

    ``rows`` is an Arrow table, the contract between normalize and the warehouse: text, ``int64``, times as
    ``timestamp[us, UTC]``, ``position`` and ``is_latest``, in payload order.

    ``records_in`` counts every record of the batch, so ``records_in == len(rows) + len(rejects) +``
    the rows dropped as earlier copies of the same version ``+ erased`` (records of people erased on
    request, kept out without a trace but this count).
    """

    rows: pa.Table
    rejects: pd.DataFrame
    records_in: int
    #: A 64-bit hash of each row's key (``KEY_COLUMNS``), in the rows' order.
    key_hashes: np.ndarray
    erased: int = 0


def hashed_record_key(campaign_name: str, phone_number: str, created_at: datetime) -> str:
    """The record key of a lead without a lead id: stable across loads, time zones and re-deliveries."""
    material = f"{campaign_name}\x1f{phone_number}\x1f{created_at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()[:32]


class _Notes:
    """What was changed to store each row, as text for ``load_notes``."""

    def __init__(self, rows: int) -> None:
        self._rows = rows
        self._masks: list[tuple[np.ndarray, str]] = []
        self._per_row: dict[int, list[str]] = {}

    def add(self, mask: np.ndarray, note: str) -> None:
        if mask.any():
            self._masks.append((mask, note))

    def add_row(self, row: int, notes: Iterable[str]) -> None:
        self._per_row.setdefault(row, []).extend(notes)

    def column(self) -> pa.Array:
        if not self._masks and not self._per_row:
            return pa.nulls(self._rows, TEXT)
        texts: list[list[str]] = [[] for _ in range(self._rows)]
        for mask, note in self._masks:
            for masked in np.flatnonzero(mask).tolist():
                texts[masked].append(note)
        for row, notes in self._per_row.items():
            texts[row].extend(notes)
        return pa.array(["; ".join(notes) if notes else None for notes in texts], TEXT)


def _cleaned_column(column: str, values: pa.Array, secrets: SecretValues, notes: _Notes) -> pa.Array:
    """``values`` without NUL characters and secrets (vectorized), each change noted."""
    if may_contain(values, "\x00"):
        nul = pc.match_substring(values, "\x00")
        values = pc.replace_substring(values, "\x00", "")
        notes.add(mask_of(nul), f"{column}: NUL characters removed")
    for secret in secrets:
        if not may_contain(values, secret):
            continue
        found = pc.match_substring(values, secret)
        if pc.any(found).as_py():
            values = pc.replace_substring(values, secret, REDACTED)
            notes.add(mask_of(found), f"{column}: API key value replaced by ***")
    return values


def _capped_text_columns(
    columns: dict[str, pa.Array],
    source: dict[str, pa.Array],
    derived: dict[str, pa.Array],
    records: list[dict[str, Any]],
    plan: FieldPlan,
    notes: _Notes,
) -> dict[int, dict[str, str]]:
    """Set every text column but the keys, cut to :data:`MAX_TEXT_CHARS` (noted).

    Returns, per row, the whole values of the source fields that were cut, by field name (for ``extra``).
    """
    overflow: dict[int, dict[str, str]] = {}
    for column in ROW_COLUMNS:
        if ROW_COLUMN_KINDS[column] != "text" or column in ("record_key", "load_notes"):
            continue
        values = derived[column] if column in derived else source[column]
        if column != "campaign_name" and (long := longer_than(values, MAX_TEXT_CHARS)).any():
            if column in source:
                for row in np.flatnonzero(long).tolist():
                    name = next(name for name in plan.by_column[column] if records[row].get(name) is not None)
                    overflow.setdefault(row, {})[str(name)] = values[row].as_py()
                notes.add(long, f"{column}: cut to {MAX_TEXT_CHARS} characters, the whole value is in extra")
            values = pc.if_else(pa.array(long), cut(values, MAX_TEXT_CHARS), values)
        columns[column] = values
    return overflow


def _checked_extra(
    extra: pa.Array,
    records: list[dict[str, Any]],
    plan: FieldPlan,
    overflow: dict[int, dict[str, str]],
    secrets: SecretValues,
    notes: _Notes,
) -> tuple[pa.Array, np.ndarray]:
    """``extra`` with the rows that need care rebuilt exactly, and the rows that are too big to store.

    Care: a NUL (``\\u0000`` in the JSON), a secret, a value over :data:`MAX_STORED_VALUE_CHARS`, the whole
    value of a cut column. Found by searches over the whole array, so clean batches cost nothing more.
    """
    suspicious = longer_than(extra, MAX_STORED_VALUE_CHARS)
    for needle in ("\\u0000", *(orjson.dumps(secret).decode()[1:-1] for secret in secrets)):
        if may_contain(extra, needle):
            suspicious |= mask_of(pc.match_substring(extra, needle))
    if overflow:
        suspicious[list(overflow)] = True
    too_big = np.zeros(len(extra), dtype=bool)
    if not suspicious.any():
        return extra, too_big
    extras = extra.to_pylist()
    extra_fields, shadowed = frozenset(plan.extra_fields), plan.shadowed
    for row in np.flatnonzero(suspicious).tolist():
        cleaner = Cleaner(secrets)
        kept = {
            cleaner.text(str(name)): None if value is None else cleaner.text(value)
            for name, value in record_extra(records[row], extra_fields, shadowed).items()
        }
        kept.update({name: cleaner.text(value) for name, value in overflow.get(row, {}).items()})
        extras[row] = orjson.dumps(kept, option=orjson.OPT_SORT_KEYS).decode() if kept else None
        too_big[row] = extras[row] is not None and len(extras[row]) > MAX_EXTRA_CHARS
        notes.add_row(row, (f"extra: {change}" for change in sorted(cleaner.changes)))
    return pa.array(extras, TEXT), too_big


@dataclass
class _Reasons:
    """Why rows are rejected: masks over the batch's rows, each with the rule it stands for."""

    masks: list[tuple[np.ndarray, str]] = field(default_factory=list)

    def add(self, mask: np.ndarray, why: str) -> None:
        self.masks.append((mask, why))

    def rejected(self, rows: int) -> np.ndarray:
        rejected = np.zeros(rows, dtype=bool)
        for mask, _ in self.masks:
            rejected |= mask
        return rejected

    def of(self, row: int) -> str:
        return "; ".join(why for mask, why in self.masks if mask[row])


@dataclass
class _TextBatch:
    """A batch's records that are objects (nested values as JSON text), each field's values as Arrow text."""

    records: list[dict[str, Any]]
    positions: list[int]
    plan: FieldPlan
    text: dict[str, pa.Array]
    #: Per kept record (by index), what cleaning its nested values changed.
    nested_changes: dict[int, list[str]]


def normalize_records(
    records: list[Any], *, first_position: int = 0, rules: RecordRules | None = None
) -> NormalizedBatch:
    """Type one batch of records (``first_position`` is the payload position of ``records[0]``)."""
    rules = rules or RecordRules()
    batch, reject_rows = _text_batch(records, first_position, rules.secrets)
    notes = _Notes(len(batch.records))
    for kept_index, changes in batch.nested_changes.items():
        notes.add_row(kept_index, changes)
    source = _source_columns(batch, rules.secrets, notes)
    reasons = _Reasons()
    columns = _typed_columns(source, rules, reasons)
    # Lengths: keys too long reject; other text is cut, the whole source value kept in extra.
    for column, label in (("campaign_name", "campaign_name"), ("lead_id", "record_key: the lead id")):
        reasons.add(
            longer_than(source[column], MAX_KEY_CHARS), f"{label} is longer than {MAX_KEY_CHARS} characters"
        )
    derived = _derived_columns(source, rules)
    erased = np.zeros(len(batch.records), dtype=bool)
    if rules.suppressed:
        erased = mask_of(pc.is_in(derived["phone_pseudonym"], value_set=pa.array(list(rules.suppressed))))
    overflow = _capped_text_columns(columns, source, derived, batch.records, batch.plan, notes)
    columns["record_key"] = _record_keys(source, columns)
    extra_text = extra_json(batch.records, batch.plan, batch.text)
    extra, too_big = _checked_extra(extra_text, batch.records, batch.plan, overflow, rules.secrets, notes)
    reasons.add(too_big, f"extra: more than {MAX_EXTRA_CHARS} characters in fields without a column")
    columns["extra"] = extra
    columns["load_notes"] = notes.column()
    _identity_reasons(columns, source, rules, reasons)

    table = pa.table(
        {
            **{column: columns[column] for column in ROW_COLUMNS},
            "position": pa.array(batch.positions, pa.int64()),
        }
    )
    rejected = reasons.rejected(len(batch.records)) & ~erased
    cleaner = Cleaner(rules.secrets)
    for row in np.flatnonzero(rejected).tolist():
        reject_rows.append((batch.positions[row], reasons.of(row), cleaner.raw_record(batch.records[row])))
    erased_count = int(erased.sum())
    if rules.suppressed and reject_rows:
        reject_rows, erased_count = _without_erased(reject_rows, rules, erased_count)
    left_out = rejected | erased
    kept_rows, key_hashes = _latest_per_version(
        table.filter(pa.array(~left_out)) if left_out.any() else table
    )
    rejects = pd.DataFrame(sorted(reject_rows), columns=list(REJECT_COLUMNS)).astype({"position": "int64"})
    return NormalizedBatch(
        rows=kept_rows, rejects=rejects, records_in=len(records), erased=erased_count, key_hashes=key_hashes
    )


def _without_erased(
    reject_rows: list[tuple[int, str, str]], rules: RecordRules, erased: int
) -> tuple[list[tuple[int, str, str]], int]:
    """The rejects found before typing (not an object, nested too deep) but those of erased people."""
    from cloudagent_etl.personal_data.records import record_pseudonym

    assert rules.pseudonym_key is not None
    kept = []
    for reject in reject_rows:
        record = orjson.loads(reject[2])
        if record_pseudonym(record, rules.pseudonym_key, rules.phone_region) in rules.suppressed:
            erased += 1
        else:
            kept.append(reject)
    return kept, erased


def _text_batch(
    records: list[Any], first_position: int, secrets: SecretValues
) -> tuple[_TextBatch, list[tuple[int, str, str]]]:
    """The batch as text columns, and the rejects found on the way (not an object, nested too deep).

    The fast path is one Arrow conversion of the whole batch; nested values (or more unknown fields than
    :data:`MAX_COLUMNAR_EXTRA_FIELDS`) take the record-by-record path. Secrets under API-key fields are
    learned first, so that everything after (rejects included) is redacted with them.
    """
    dicts: list[dict[str, Any]] = []
    positions: list[int] = []
    others: list[tuple[int, Any]] = []
    for position, record in enumerate(records, start=first_position):
        if isinstance(record, dict):
            dicts.append(record)
            positions.append(position)
        else:
            others.append((position, record))
    plan = field_plan(dicts)
    columnar = len(plan.extra_fields) <= MAX_COLUMNAR_EXTRA_FIELDS
    struct_fields = [*plan.column_fields, *plan.secret_fields, *(plan.extra_fields if columnar else ())]
    array: pa.StructArray | None
    try:
        array = pa.array(dicts, type=pa.struct([(name, TEXT) for name in struct_fields]))
        plain = columnar  # every value of the batch is text or null: nothing nested anywhere
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        array, plain = None, False
    for name in plan.secret_fields:
        if array is not None:
            secrets.learn(pc.unique(array.field(struct_fields.index(name))).to_pylist())
        else:
            secrets.learn(record.get(name) for record in dicts)
    cleaner = Cleaner(secrets)
    rejects = [
        (position, "record is not a JSON object", cleaner.raw_record(record)) for position, record in others
    ]
    nested_changes: dict[int, list[str]] = {}
    if not plain:
        flat, flat_positions, deep, nested_changes = flattened(dicts, positions, cleaner, plan)
        if deep:
            rejects.extend(deep)
            keep = np.isin(np.asarray(positions), [position for position, _, _ in deep], invert=True)
            if array is not None:
                array = array.filter(pa.array(keep))
        dicts, positions = flat, flat_positions
    if array is None:
        array = text_struct(dicts, struct_fields)
    text = {name: array.field(index) for index, name in enumerate(struct_fields)}
    return _TextBatch(dicts, positions, plan, text, nested_changes), rejects


def _source_columns(batch: _TextBatch, secrets: SecretValues, notes: _Notes) -> dict[str, pa.Array]:
    """Per column of :data:`FIELD_ALIASES`, its best alias's values: cleaned, null markers as NULL."""
    empty = pa.nulls(len(batch.records), TEXT)
    source: dict[str, pa.Array] = {}
    for column in FIELD_ALIASES:
        names = batch.plan.by_column.get(column, [])
        values = pc.coalesce(*(batch.text[name] for name in names)) if names else empty
        source[column] = nulled(_cleaned_column(column, values, secrets, notes))
    return source


def _typed_columns(source: dict[str, pa.Array], rules: RecordRules, reasons: _Reasons) -> dict[str, pa.Array]:
    """The time, count and duration columns, typed; a value that does not parse or lies out of range is
    NULL and rejects its row."""
    columns: dict[str, pa.Array] = {}
    latest_time = rules.latest_time or datetime.now(UTC) + FUTURE_TOLERANCE
    for column in TIME_COLUMNS:
        parsed, early, late = parse_time(source[column], rules.timezone, rules.earliest_time, latest_time)
        given = mask_of(source[column].is_valid())
        reasons.add(_nulls(parsed) & given & ~(early | late), f"{column}: not a time {TIME_FORMAT}")
        reasons.add(early, f"{column}: before {rules.earliest_time:%Y-%m-%d %H:%M:%S} UTC")
        reasons.add(late, f"{column}: later than the latest time allowed (the load's start + tolerance)")
        columns[column] = parsed
    attempts = parse_count(source["attempts"])
    reasons.add(_nulls(attempts) & mask_of(source["attempts"].is_valid()), "attempts: not a count")
    columns["attempts"] = attempts
    duration = parse_duration(source["call_duration_s"])
    too_long = mask_of(pc.greater(duration, MAX_INTEGER))
    reasons.add(too_long, f"call_duration_s: more than {MAX_INTEGER} seconds")
    duration = pc.if_else(pc.greater(duration, MAX_INTEGER), pa.scalar(None, pa.int64()), duration)
    given = mask_of(source["call_duration_s"].is_valid())
    reasons.add(_nulls(duration) & given & ~too_long, "call_duration_s: not HH:MM:SS")
    columns["call_duration_s"] = duration
    return columns


def _nulls(array: pa.Array) -> np.ndarray:
    return mask_of(array.is_null())


def _derived_columns(source: dict[str, pa.Array], rules: RecordRules) -> dict[str, pa.Array]:
    """Columns computed from others: the canonical phone number, its E.164 form and pseudonym (NULL when
    it is not a number, or without a key), and the first and last dial legs."""
    first_leg, last_leg = legs(source["dial_status"])
    e164 = e164_array(source["phone_number_raw"], rules.phone_region)
    pseudonym = (
        rules.pseudonym_key.pseudonyms(e164) if rules.pseudonym_key is not None else pa.nulls(len(e164), TEXT)
    )
    return {
        "phone_number": canonical_phone(source["phone_number_raw"]),
        "phone_e164": e164,
        "phone_pseudonym": pseudonym,
        "dial_status_first": first_leg,
        "dial_status_last": last_leg,
    }


def _record_keys(source: dict[str, pa.Array], columns: dict[str, pa.Array]) -> pa.Array:
    """The lead id, else the hash of campaign, phone and created time (NULL when neither is there)."""
    record_key = pc.utf8_trim_whitespace(source["lead_id"])
    parts = [columns[name] for name in ("campaign_name", "phone_number", "created_at")]
    hashable = _nulls(record_key) & np.logical_and.reduce([~_nulls(part) for part in parts])
    if not hashable.any():
        return record_key
    rows = pa.array(np.flatnonzero(hashable))
    hashed = map(hashed_record_key, *(pc.take(part, rows).to_pylist() for part in parts))
    return pc.replace_with_mask(record_key, pa.array(hashable), pa.array(list(hashed), TEXT))


def _identity_reasons(
    columns: dict[str, pa.Array], source: dict[str, pa.Array], rules: RecordRules, reasons: _Reasons
) -> None:
    """A row needs its campaign (the export request's), its version (``updated_at``) and a record key."""
    campaign = columns["campaign_name"]
    reasons.add(_nulls(campaign), "campaign_name: missing")
    if rules.campaign is not None:
        other = mask_of(pc.not_equal(campaign, pa.scalar(rules.campaign, TEXT)))
        reasons.add(other, f"campaign_name: not the campaign of the export request ({rules.campaign!r})")
    reasons.add(_nulls(source["updated_at"]), "updated_at: missing")
    reasons.add(_nulls(columns["record_key"]), "record_key: no lead id, and no phone number + created time")


def _latest_per_version(rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """Keep the last row per (key, updated_at); ``is_latest`` marks the greatest (updated_at, position).
    Returns the kept rows and their key hashes.

    A batch whose key hashes are all distinct (the usual one: a lead appears once per export) has every
    row latest, without a sort; equal hashes (a key twice, or a collision) take the sort, which is exact.
    """
    hashes = _key_hashes(rows)
    if len(np.unique(hashes)) == len(hashes):
        return rows.append_column("is_latest", pa.array(np.ones(len(hashes), dtype=bool))), hashes
    keys = list(KEY_COLUMNS)
    order = rows.select([*keys, "updated_at", "position"]).to_pandas()
    order = order.sort_values(["updated_at", "position"], kind="stable")
    last_of_version = order[~order.duplicated([*keys, "updated_at"], keep="last")]
    latest = last_of_version["position"][~last_of_version.duplicated(keys, keep="last")].to_numpy()
    keep = np.isin(rows.column("position").to_numpy(), last_of_version["position"].to_numpy())
    kept = rows.filter(pa.array(keep))
    is_latest = np.isin(kept.column("position").to_numpy(), latest)
    return kept.append_column("is_latest", pa.array(is_latest)), hashes[keep]


def _key_hashes(rows: pa.Table) -> np.ndarray:
    """A 64-bit hash of each row's key (pandas' hash of the key columns)."""
    keys = rows.select(list(KEY_COLUMNS)).to_pandas(types_mapper=pd.ArrowDtype)
    return pd.util.hash_pandas_object(keys, index=False).to_numpy()


def normalize_payload(
    body: Body,
    content_type: str | None,
    *,
    timezone: str,
    campaign: str | None = None,
    secrets: SecretValues | None = None,
    time_bounds: tuple[datetime, datetime] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    pseudonym_key: PseudonymKey | None = None,
    phone_region: str = DEFAULT_PHONE_REGION,
    suppressed: frozenset[str] = frozenset(),
) -> Iterator[NormalizedBatch]:
    """The payload as normalized batches, streamed; :class:`PayloadError` if it cannot be parsed.

    ``campaign`` is the export request's (records of another are rejected), ``secrets`` the values to
    redact (values learned from the payload are added to it), ``time_bounds`` the earliest and latest
    time a record may carry (default :data:`EARLIEST_TIME` .. now + :data:`FUTURE_TOLERANCE`);
    ``pseudonym_key`` keys ``phone_pseudonym``, and records whose pseudonym is ``suppressed`` are kept out.
    """
    earliest, latest = time_bounds or (EARLIEST_TIME, datetime.now(UTC) + FUTURE_TOLERANCE)
    rules = RecordRules(
        timezone=timezone,
        campaign=campaign,
        earliest_time=earliest,
        latest_time=latest,
        secrets=secrets if secrets is not None else SecretValues(),
        pseudonym_key=pseudonym_key,
        phone_region=phone_region,
        suppressed=suppressed,
    )
    position = 0
    for records in iter_record_batches(body, content_type, batch_size):
        yield normalize_records(records, first_position=position, rules=rules)
        position += len(records)
