"""Checks shared by the end-to-end tests: the warehouse equals what the simulator sent, no key leaked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select

from cloudagent_etl.db import schema_metadata
from cloudagent_etl.landing import callback_payload_chunks, export_requests
from cloudagent_etl.normalize import KEY_COLUMNS, VALUE_COLUMNS
from cloudagent_etl.warehouse.tables import dial_status, dial_status_history
from tests.fixtures.simulator import SimulatorHandle

IST = ZoneInfo("Asia/Kolkata")
#: A manual run at this logical date covers 2025-06-01 03:30 IST .. 2025-06-02 03:30 IST.
LOGICAL_DATE = datetime(2025, 6, 2, tzinfo=UTC)
CAMPAIGNS = ["Alpha", "Beta"]


@dataclass
class Sync:
    """One database + simulator + receiver wired to the DAGs through AIRFLOW_CONN_* / AIRFLOW_VAR_*."""

    engine: Engine
    simulator: SimulatorHandle
    dags: dict

    def run(self, dag_id: str = "cloudagent_dial_status", logical_date: datetime = LOGICAL_DATE, **conf):
        """Run the DAG once; return the run's state and ``{(task_id, campaign or map index): ti}``."""
        run = self.dags[dag_id].test(logical_date=logical_date, run_conf=conf)
        campaigns = conf.get("campaigns", CAMPAIGNS)  # mapped instances follow this order
        instances = {}
        for ti in run.get_task_instances():
            label = campaigns[ti.map_index] if ti.task_id.startswith("campaign.") else ti.map_index
            if ti.task_id.startswith("campaign.") and ti.state == "success":
                assert ti.rendered_map_index == str(label)  # instances are named by campaign in the UI
            instances[(ti.task_id, label)] = ti
        return run.state, instances

    def warehouse(self) -> dict[tuple[str, str], dict]:
        """``dial_status`` without lineage columns, keyed by (campaign_name, record_key)."""
        columns = [dial_status.c[name] for name in (*KEY_COLUMNS, *VALUE_COLUMNS)]
        with self.engine.connect() as conn:
            rows = conn.execute(select(*columns)).mappings().all()
        return {(row["campaign_name"], row["record_key"]): dict(row) for row in rows}

    def count(self, table) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar_one()

    def requests(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(select(export_requests).order_by(export_requests.c.created_at)).all()

    def ground_truth(self) -> dict[tuple[str, str], dict]:
        """The newest version of every record the simulator delivered, keyed like the warehouse."""
        newest: dict[tuple[str, str], dict] = {}
        for logged in self.simulator.requests_log():
            if logged["outcome"] != "accepted":
                continue
            for record in self.simulator.ground_truth(logged["unique_id"]):
                key = (record["CampaignName"], record["DataUniqueId"])
                if key not in newest or record["UpdatedDate"] > newest[key]["UpdatedDate"]:
                    newest[key] = record
        return newest


@dataclass(frozen=True)
class Pause:
    """One sleep a RateLimiter asked for (its ``sleep`` argument), with wall-clock times taken around it."""

    #: acquire() was called, or the previous pause ended: the limiter read its clock after this
    attempt_began: float
    #: the limiter called sleep: it had read its clock before this
    asked_at: float
    seconds: float


#: How far past the moment a call leaves the window the limiter may aim a pause (its few ms of wake slack).
AIM_TOLERANCE_S = 0.05


def assert_each_pause_ends_when_a_call_leaves_the_window(
    pauses: list[Pause], call_times: list[float], window_s: float
) -> None:
    """Every pause was computed to end exactly when a logged call leaves the (effective) window: the
    limiter wakes on time, never after a fixed pause, never for a call that was not there. It read its
    clock between ``attempt_began`` and ``asked_at``, so it aimed between those plus the pause. What the
    limiter computes is checked exactly; how late a busy machine then wakes the sleeper is not ours."""
    leaving = [t + window_s for t in call_times]
    for pause in pauses:
        earliest, latest = pause.attempt_began + pause.seconds, pause.asked_at + pause.seconds
        assert any(earliest - AIM_TOLERANCE_S <= moment <= latest for moment in leaving), (pause, leaving)


def _ist(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=IST).astimezone(UTC)


def _value(text: str) -> str | None:
    """How the warehouse stores a source text: CloudAgent writes absent values as "" or "None"."""
    return None if text in ("", "None") else text


#: Source fields with a typed warehouse column, compared text to text below.
TEXT_COLUMNS = {
    "PhoneNumber": "phone_number_raw",
    "Name": "customer_name",
    "Status": "lead_status",
    "DialStatus": "dial_status",
    "Disposition": "disposition",
    "AgentID": "agent_id",
    "UCID": "ucid",
    "monitorUCID": "monitor_ucid",
}
#: Source fields with no column: they must be kept in ``extra`` (all but the API key).
EXTRA_FIELDS = ("City", "LoanAmount", "UserName")


def assert_warehouse_matches(sync: Sync) -> None:
    truth = sync.ground_truth()
    warehouse = sync.warehouse()
    assert truth, "the simulator delivered no records: the test would prove nothing"
    assert set(warehouse) == set(truth)
    for key, record in truth.items():
        row = warehouse[key]
        assert {c: row[c] for c in TEXT_COLUMNS.values()} == {
            column: _value(record[field]) for field, column in TEXT_COLUMNS.items()
        }, key
        assert row["attempts"] == int(record["Attempts"]), key
        assert row["updated_at"] == _ist(record["UpdatedDate"]), key
        assert row["created_at"] == _ist(record["CreatedDate"]), key
        assert row["extra"] == {name: record[name] for name in EXTRA_FIELDS if name in record}, key
    assert_api_key_in_no_warehouse_table(sync)


def assert_api_key_in_no_warehouse_table(sync: Sync) -> None:
    """CloudAgent puts the apiKey in every record: only the raw landing bytes may keep it."""
    assert_secret_only_in_raw_bytes(sync.engine, sync.simulator.api_key)


def assert_secret_only_in_raw_bytes(engine: Engine, secret: str) -> None:
    """``secret`` is in no table (nor the history view) but the raw callback bytes, in no spelling JSON
    could give it (escaped or not)."""
    tables = [table for table in schema_metadata().sorted_tables if table is not callback_payload_chunks]
    spellings = {secret, json.dumps(secret)[1:-1]}
    with engine.connect() as conn:
        for table in (*tables, dial_status_history):
            dumped = json.dumps([list(row) for row in conn.execute(select(table))], default=str)
            assert not any(spelling in dumped for spelling in spellings), (
                f"the secret leaked into {table.name}"
            )
