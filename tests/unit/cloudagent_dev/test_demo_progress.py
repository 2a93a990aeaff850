"""``make demo`` reports each campaign as it goes: requested, callback landed, rows loaded (or failed)."""

from __future__ import annotations

import re

import pytest

from cloudagent_dev.demo import CampaignProgress
from cloudagent_dev.localstack import Progress
from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.pipeline import load_payloads
from cloudagent_etl.simulator.data import generate_records
from tests.factories import WINDOW, land, new_request


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [re.sub(r"^\[ *[\d.]+ s\] ", "", line) for line in capsys.readouterr().out.splitlines()]


def test_each_milestone_of_this_runs_requests_is_printed_once(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = create_db_engine(sqlite_url)
    try:
        earlier = new_request(engine, "Sales", unique_id="earlier-run").request_id
        landing.mark_failed(engine, earlier, "an earlier run's request: not reported")
        progress = CampaignProgress(engine, Progress())

        sales = new_request(engine, "Sales").request_id
        support = new_request(engine, "Support", unique_id="u-support").request_id
        progress.poll()
        assert _lines(capsys) == ["Support: export requested (uniqueId=u-support)"]

        landing.record_unique_id(engine, sales, "u-sales")
        land(engine, sales, list(generate_records("Sales", *WINDOW, seed=3, records_per_day=20)))
        landing.mark_failed(engine, support, "CloudAgent said no")
        progress.poll()
        progress.poll()  # nothing new: nothing printed twice
        assert _lines(capsys) == [
            "Sales: export requested (uniqueId=u-sales)",
            "Sales: callback landed",
            "Support: failed (CloudAgent said no)",
        ]

        result = load_payloads(engine, sales)
        progress.poll()
        assert result.rows_in > 0
        assert _lines(capsys) == [
            f"Sales: {result.rows_in} rows loaded ({result.inserted} inserted, {result.updated} updated, "
            f"{result.unchanged} unchanged, {result.rejected} rejected)"
        ]
    finally:
        engine.dispose()
