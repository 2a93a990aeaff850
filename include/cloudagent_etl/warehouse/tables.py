"""The warehouse tables, built from :mod:`cloudagent_etl.normalize`'s row columns, and their dictionary.

Written only by the load (:mod:`cloudagent_etl.warehouse.load`); analysts read these tables and the views
of migration 0002. :data:`DATA_DICTIONARY` is the one description of every column: the tables below, the
PostgreSQL column comments (migration 0002) and the README's data dictionary all come from it.
Versions are stored once: the current one in ``dial_status``, every other (replaced or older) one in
``dial_status_superseded``; ``dial_status_history`` is the view of both (a first load writes one table).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeEngine

from cloudagent_etl.normalize import KEY_COLUMNS, ROW_COLUMN_KINDS
from cloudagent_etl.sqltypes import BigIntId, JsonDocument, UtcDateTime, metadata

_VERSION_COLUMNS_DOC = {
    "account": "CloudAgent account (its userName) the export was made with; part of the key",
    "campaign_name": "CloudAgent campaign (CampaignName); part of the key",
    "record_key": "the lead id (DataUniqueId or alias) or, without one, 'sha256:' + hash of campaign, "
    "canonical phone and UTC created time; part of the key",
    "phone_number": "canonical phone number: digits with country code 91 (10-digit numbers get 91)",
    "phone_number_raw": "phone number exactly as received",
    "phone_e164": "the phone number in E.164 (+919876543210), read in CLOUDAGENT_PHONE_REGION (default IN); "
    "NULL when it is not a phone number",
    "phone_pseudonym": "HMAC-SHA256 (hex) of phone_e164 under the pseudonym key: stable, so analysts count, "
    "join and deduplicate by it; NULL when phone_e164 is",
    "customer_name": "lead name (Name)",
    "lead_status": "lead status (Status): Success, Fail, Pending, ...",
    "dial_status": "dial status as received, in CloudAgent's mixed case (answered, Fail, NoAnswer, "
    "user_disconnected); multi-leg values joined with ' -> '",
    "dial_status_first": "first leg of dial_status (answered, Fail, NoAnswer, user_disconnected: case as "
    "received)",
    "dial_status_last": "final leg of dial_status, the outcome of the last attempt (answered, Fail, "
    "NoAnswer, user_disconnected: case as received)",
    "disposition": "disposition the agent chose",
    "attempts": "number of dial attempts (integer)",
    "agent_id": "agent id (AgentID); only on answered calls (no agent takes an unanswered one)",
    "agent_name": "agent name; only on answered calls",
    "ucid": "CloudAgent call id (UCID), text: exact beyond 2^53",
    "monitor_ucid": "monitor call id (monitorUCID), text",
    "call_started_at": "call start (UTC; source is wall clock in the account time zone)",
    "call_ended_at": "call end (UTC)",
    "call_duration_s": "call duration in seconds (source HH:MM:SS)",
    "skill": "skill the call was routed by",
    "priority": "lead priority as received",
    "created_at": "lead created (UTC)",
    "updated_at": "lead last updated (UTC): the version; newer wins",
    "extra": "JSON object of the record's fields that have no column (custom upload columns), and the "
    "whole value of a field cut to fit its column; API keys are never kept",
    "load_notes": "what the load changed to store the record (NUL characters removed, a value cut, an API "
    "key value replaced by ***), '; '-separated; NULL when nothing",
    "request_id": "export request whose payload wrote this version",
    "payload_id": "callback payload that wrote this version",
    "load_run_id": "load run that wrote this version",
    "loaded_at": "when this version was written (UTC)",
}
#: Columns of dial_status the analyst views pass through unchanged.
ANALYST_PASSED_THROUGH = (
    "lead_status", "dial_status", "dial_status_first", "dial_status_last", "disposition", "attempts",
    "agent_id", "agent_name", "ucid", "monitor_ucid", "call_started_at", "call_ended_at", "call_duration_s",
    "skill", "priority", "created_at", "updated_at",
)  # fmt: skip
_ANALYST_VIEW_DOC = {
    "account": "CloudAgent account (its userName)",
    "campaign_name": "CloudAgent campaign",
    "lead_id": "the lead id; NULL where the record key is a hash of the phone number",
    "phone_pseudonym": "the number's pseudonym (see dial_status.phone_pseudonym)",
    "phone_last4": "'*' and the last four digits of the number",
    "customer_name_masked": "the name's first character and '***'",
    **{column: _VERSION_COLUMNS_DOC[column] for column in ANALYST_PASSED_THROUGH},
    "custom_fields": "JSON object of the custom upload fields on the allow-list CLOUDAGENT_ANALYST_FIELDS "
    "(NULL when none)",
    "load_run_id": "load run that wrote this version",
    "loaded_at": "when this version was written (UTC)",
}
DATA_DICTIONARY: dict[str, dict[str, str]] = {
    "dial_status": {
        **_VERSION_COLUMNS_DOC,
        "previous_load_run_id": "load run that wrote the version this one replaced (NULL for the first)",
    },
    "dial_status_superseded": _VERSION_COLUMNS_DOC,
    "dial_status_history": _VERSION_COLUMNS_DOC,
    "dial_status_rejects": {
        "account": "CloudAgent account (its userName) of the export",
        "payload_id": "callback payload the record came from",
        "position": "0-based position of the record in the payload",
        "request_id": "export request of the payload",
        "load_run_id": "load run that first rejected it (a reload adds nothing)",
        "reason": "every contract rule the record broke, '; '-separated",
        "raw_record": "the record as received (values as text), API keys removed, NUL characters removed, "
        "values cut at 1 MiB characters",
        "occurrences": "records of the payload identical to this one (same reason and raw record), this "
        "one included; only the first one's position is kept",
        "rejected_at": "when it was rejected (UTC)",
        "raw_purged_at": "when raw_record was emptied by retention (CLOUDAGENT_RAW_RETENTION_DAYS); "
        "NULL: kept",
    },
    "dial_status_daily_summary": {
        "account": "CloudAgent account (its userName)",
        "campaign_name": "CloudAgent campaign",
        "day_ist": "IST day of updated_at",
        "leads": "leads last updated that day",
        "attempts": "their dial attempts",
        "answered": "leads whose dial_status_last is 'answered'",
        "answer_rate": "answered / leads",
        "with_disposition": "leads with a disposition",
        "complete": "1 once the day's nightly window has closed (03:30 IST the next day); 0 for a day still "
        "being synced, whose numbers will grow",
    },
    "dial_status_daily_dispositions": {
        "account": "CloudAgent account (its userName)",
        "campaign_name": "CloudAgent campaign",
        "day_ist": "IST day of updated_at",
        "disposition": "disposition, '(none)' when there is none",
        "leads": "leads last updated that day with that disposition",
        "complete": "1 once the day's nightly window has closed (03:30 IST the next day); 0 for a day still "
        "being synced",
    },
    "load_runs": {
        "load_run_id": "one row per attempt to load one payload",
        "account": "CloudAgent account (its userName) of the export",
        "request_id": "export request",
        "payload_id": "callback payload loaded",
        "status": "loaded, or failed (the payload could not be parsed, or the load hit an error; see error)",
        "started_at": "load start (UTC)",
        "finished_at": "load end (UTC)",
        "rows_in": "records in the payload",
        "inserted": "keys new to dial_status",
        "updated": "existing keys whose current row this load changed",
        "unchanged": "keys of the payload that changed nothing (identical, or older than the current row)",
        "duplicates": "records superseded by another record of the same key in the same payload",
        "rejected": "records that broke the contract (see dial_status_rejects)",
        "seconds": "load duration in seconds",
        "error": "why the load failed",
        "erased": "records kept out because their person was erased on request (counted in rejected too; "
        "no reject row: it would hold them)",
    },
    "erasure_receipts": {
        "receipt_id": "one row per erasure (a dry run writes none)",
        "phone_pseudonym": "pseudonym of the number erased (never the number)",
        "counts": "JSON object: table or raw data -> rows or records removed",
        "erased_at": "when the erasure committed (UTC)",
        "requested_by": "who asked for it (as given)",
        "reason": "why (as given, e.g. the ticket of the request)",
    },
    "suppressed_pseudonyms": {
        "phone_pseudonym": "a person erased on request: loads keep their records out",
        "suppressed_at": "since when (UTC)",
        "receipt_id": "the erasure that added it",
    },
    "analyst_dial_status": _ANALYST_VIEW_DOC,
    "analyst_dial_status_history": _ANALYST_VIEW_DOC,
}

_COLUMN_TYPES: dict[str, TypeEngine[Any] | type[TypeEngine[Any]]] = {
    "text": Text,
    "integer": Integer,
    "time": UtcDateTime,
    "json": JsonDocument,
}
#: Columns written with every version: where it came from and when.
LINEAGE_COLUMNS = ("request_id", "payload_id", "load_run_id", "loaded_at")
#: A lead's key in the warehouse: the account it belongs to, then normalize's key within one account.
WAREHOUSE_KEY = ("account", *KEY_COLUMNS)
#: The columns of a stored version before its lineage: the account, then normalize's row columns.
VERSION_COLUMN_KINDS: dict[str, str] = {"account": "text", **ROW_COLUMN_KINDS}


def _documented(table: str, *columns: Column[Any]) -> list[Column[Any]]:
    for column in columns:
        column.comment = DATA_DICTIONARY[table][column.name]
    return list(columns)


def _version_columns(table: str) -> list[Column[Any]]:
    """The columns of one version of a lead, shared by ``dial_status`` and ``dial_status_superseded``.

    The row columns come from normalize, after the account; the key is :data:`WAREHOUSE_KEY`, plus
    ``updated_at`` outside ``dial_status`` (where every version of a key is kept).
    """
    key = (*WAREHOUSE_KEY, *(("updated_at",) if table != "dial_status" else ()))
    row_columns = [
        Column(name, _COLUMN_TYPES[kind], primary_key=name in key, nullable=name not in (*key, "updated_at"))
        for name, kind in VERSION_COLUMN_KINDS.items()
    ]
    return _documented(
        table,
        *row_columns,
        Column("request_id", String(36), nullable=False),
        Column("payload_id", BigInteger, nullable=False),
        Column("load_run_id", BigInteger, nullable=False),
        Column("loaded_at", UtcDateTime, nullable=False),
    )


dial_status = Table(
    "dial_status",
    metadata,
    *_version_columns("dial_status"),
    *_documented("dial_status", Column("previous_load_run_id", BigInteger, nullable=True)),
    Index(None, "account", "campaign_name", "updated_at"),
    Index(None, "dial_status_last"),
    Index(None, "disposition"),
    comment="current state: one row per account + campaign_name + record_key, the newest updated_at wins",
)

dial_status_superseded = Table(
    "dial_status_superseded",
    metadata,
    *_version_columns("dial_status_superseded"),
    comment="versions that are not current: replaced by a newer one, or older than the current row",
)

HISTORY_VIEW_COMMENT = (
    "view: every distinct version seen, keyed by account + campaign_name + record_key + updated_at "
    "(dial_status_superseded UNION ALL dial_status)"
)

#: Views of migration 0002, described as tables so that code can select from them; not created by
#: ``metadata`` (which holds only real tables).
view_metadata = MetaData()

dial_status_history = Table(
    "dial_status_history",
    view_metadata,
    *_version_columns("dial_status_history"),
    comment=HISTORY_VIEW_COMMENT,
)

dial_status_rejects = Table(
    "dial_status_rejects",
    metadata,
    *_documented(
        "dial_status_rejects",
        Column("payload_id", BigInteger, primary_key=True),
        Column("position", Integer, primary_key=True, autoincrement=False),
        Column("account", Text, nullable=False),
        Column("request_id", String(36), nullable=False),
        Column("load_run_id", BigInteger, nullable=False),
        Column("reason", Text, nullable=False),
        Column("raw_record", JsonDocument, nullable=False),
        Column("occurrences", BigInteger, nullable=False, server_default="1"),
        Column("rejected_at", UtcDateTime, nullable=False),
        Column("raw_purged_at", UtcDateTime, nullable=True),
    ),
    comment="records that broke the contract, with the reason; never silently dropped",
)

LOAD_RUN_STATES = ("loaded", "failed")

load_runs = Table(
    "load_runs",
    metadata,
    *_documented(
        "load_runs",
        Column("load_run_id", BigIntId, primary_key=True, autoincrement=True),
        Column("account", Text, nullable=False),
        Column("request_id", String(36), nullable=False),
        Column("payload_id", BigInteger, nullable=False),
        Column("status", String(16), nullable=False),
        Column("started_at", UtcDateTime, nullable=False),
        Column("finished_at", UtcDateTime, nullable=False),
        Column("rows_in", BigInteger, nullable=False),
        Column("inserted", BigInteger, nullable=False),
        Column("updated", BigInteger, nullable=False),
        Column("unchanged", BigInteger, nullable=False),
        Column("duplicates", BigInteger, nullable=False),
        Column("rejected", BigInteger, nullable=False),
        Column("seconds", Double, nullable=False),
        Column("error", Text, nullable=True),
        Column("erased", BigInteger, nullable=False, server_default="0"),
    ),
    CheckConstraint(f"status IN {LOAD_RUN_STATES!r}", name="status"),
    Index(None, "request_id"),
    Index(None, "payload_id"),
    comment="one row per load of one payload: counts and timings",
)

erasure_receipts = Table(
    "erasure_receipts",
    metadata,
    *_documented(
        "erasure_receipts",
        Column("receipt_id", BigIntId, primary_key=True, autoincrement=True),
        Column("phone_pseudonym", String(64), nullable=False),
        Column("counts", JsonDocument, nullable=False),
        Column("erased_at", UtcDateTime, nullable=False),
        Column("requested_by", Text, nullable=True),
        Column("reason", Text, nullable=True),
    ),
    Index(None, "phone_pseudonym"),
    comment="one row per erasure on request: what was removed, when, for whom; never the number",
)

suppressed_pseudonyms = Table(
    "suppressed_pseudonyms",
    metadata,
    *_documented(
        "suppressed_pseudonyms",
        Column("phone_pseudonym", String(64), primary_key=True),
        Column("suppressed_at", UtcDateTime, nullable=False),
        Column("receipt_id", BigInteger, nullable=False),
    ),
    comment="people erased on request: later loads keep their records out",
)
