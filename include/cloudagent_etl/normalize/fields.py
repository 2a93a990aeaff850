"""The fields of a batch: which feed which column, which go to ``extra``, and nested values flattened."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cloudagent_etl.normalize.arrow import TEXT
from cloudagent_etl.normalize.cleaning import SCALAR_TYPES, Cleaner, as_text, deeper_than
from cloudagent_etl.normalize.columns import (
    ALIAS_RANK,
    COLUMN_BY_TOKEN,
    MAX_VALUE_DEPTH,
    field_token,
    is_secret_field,
)


@dataclass
class FieldPlan:
    """The distinct field names of a batch, by what they feed."""

    by_column: dict[str, list[str]]  # best alias first
    extra_fields: list[str]
    secret_fields: list[str]

    @property
    def column_fields(self) -> list[str]:
        return [name for names in self.by_column.values() for name in names]

    @property
    def shadowed(self) -> list[tuple[str, list[str]]]:
        """Aliases that lose to a better-ranked one present in the same record, with those better ones."""
        return [
            (name, names[:rank])
            for names in self.by_column.values()
            for rank, name in enumerate(names)
            if rank
        ]


def field_plan(records: list[dict[str, Any]]) -> FieldPlan:
    """Source fields per column (best alias first), the unknown fields and the API-key fields."""
    plan = FieldPlan({}, [], [])
    for name in _field_names(records):
        token = field_token(str(name))
        if "apikey" in token:
            plan.secret_fields.append(name)
            continue
        column = COLUMN_BY_TOKEN.get(token)
        if column is None:
            plan.extra_fields.append(name)
        else:
            plan.by_column.setdefault(column, []).append(name)
    for names in plan.by_column.values():
        names.sort(key=lambda name: ALIAS_RANK[field_token(str(name))])
    return plan


def _field_names(records: list[dict[str, Any]]) -> list[Any]:
    """Every field name of the records, in the order first seen. Records of one export mostly have the
    same fields: those are compared whole, and only the others' names are gathered (a third less CPU)."""
    if not records:
        return []
    first = records[0].keys()
    others = [record for record in records if len(record) != len(first) or record.keys() != first]
    return list(dict.fromkeys(chain(first, *others)))


def text_struct(records: list[dict[str, Any]], fields: list[str]) -> pa.StructArray:
    """``fields`` of every record as text (NULL where a record lacks one); values must be scalars."""
    struct = pa.struct([(name, TEXT) for name in fields])
    try:
        return pa.array(records, type=struct)
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a number or boolean somewhere: convert, exactly
        return pa.array([{name: as_text(record.get(name)) for name in fields} for record in records], struct)


_NEEDS_JSON_ESCAPE = r'[\x00-\x1f"\\]'


def _extra_json_columnar(extra_fields: list[str], text: dict[str, pa.Array]) -> pa.Array | None:
    """``extra`` built column-wise, when every record holds every unknown field as plain text.

    The same text as ``orjson.dumps(..., OPT_SORT_KEYS)`` per record; None when a value is missing or
    null (absent and null differ in ``extra``) or needs escaping: then it is built record by record.
    """
    pieces = []
    for name in sorted(extra_fields):
        values = text[name]
        if values.null_count or pc.any(pc.match_substring_regex(values, _NEEDS_JSON_ESCAPE)).as_py():
            return None
        quoted = pc.binary_join_element_wise(orjson.dumps(name).decode() + ':"', values, '"', "")
        pieces.append(quoted)
    return pc.binary_join_element_wise("{", pc.binary_join_element_wise(*pieces, ","), "}", "")


def record_extra(
    record: dict[str, Any], extra_fields: frozenset[str], shadowed: list[tuple[str, list[str]]]
) -> dict[str, Any]:
    """A record's unknown fields, and its aliases shadowed by a better-ranked one, as text."""
    kept = {name: as_text(value) for name, value in record.items() if name in extra_fields}
    for name, better in shadowed:
        if record.get(name) is not None and any(record.get(other) is not None for other in better):
            kept[name] = as_text(record[name])
    return kept


def extra_json(records: list[dict[str, Any]], plan: FieldPlan, text: dict[str, pa.Array]) -> pa.Array:
    """Per record, the JSON text of its unknown fields and of aliases shadowed by a better-ranked one."""
    shadowed = plan.shadowed
    if not plan.extra_fields and not shadowed:
        return pa.nulls(len(records), TEXT)
    if not shadowed and all(name in text for name in plan.extra_fields):
        columnar = _extra_json_columnar(plan.extra_fields, text)
        if columnar is not None:
            return columnar
    extra_fields = frozenset(plan.extra_fields)
    extras = []
    for record in records:
        kept = record_extra(record, extra_fields, shadowed)
        extras.append(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS).decode() if kept else None)
    return pa.array(extras, TEXT)


def flattened(
    records: list[dict[str, Any]], positions: list[int], cleaner: Cleaner, plan: FieldPlan
) -> tuple[list[dict[str, Any]], list[int], list[tuple[int, str, str]], dict[int, list[str]]]:
    """Records with every nested value as its JSON text; a record nested too deep becomes a reject.

    Also returns, per kept record (by its new index), what cleaning its nested values changed.
    """
    kept, kept_positions, rejects = [], [], []
    changes: dict[int, list[str]] = {}
    columns = {name: column for column, names in plan.by_column.items() for name in names}
    for record, position in zip(records, positions, strict=True):
        if SCALAR_TYPES.issuperset(map(type, record.values())):
            kept.append(record)
            kept_positions.append(position)
            continue
        too_deep = [
            str(name)
            for name, value in record.items()
            if isinstance(value, dict | list)
            and not is_secret_field(str(name))
            and deeper_than(value, MAX_VALUE_DEPTH)
        ]
        if too_deep:
            reason = "; ".join(
                f"{cleaner.text(name)}: nested deeper than {MAX_VALUE_DEPTH} levels" for name in too_deep
            )
            rejects.append((position, reason, cleaner.raw_record(record)))
            continue
        flat: dict[str, Any] = {}
        for name, value in record.items():
            if isinstance(value, dict | list) and not is_secret_field(str(name)):
                value_cleaner = Cleaner(cleaner.secrets)
                flat[name] = value_cleaner.json_text(value)
                label = columns.get(name, "extra")
                changes.setdefault(len(kept), []).extend(
                    f"{label}: {c}" for c in sorted(value_cleaner.changes)
                )
            else:
                flat[name] = value
        kept.append(flat)
        kept_positions.append(position)
    return kept, kept_positions, rejects, changes
