"""Synthetic records for benchmarks: the simulator's leads, as many as asked, of the size they claim."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from cloudagent_dev.records import SYNTHETIC_RECORDS_PER_DAY, SYNTHETIC_START_DAY, synthetic_records
from cloudagent_etl.simulator.data import generate_records

IST = ZoneInfo("Asia/Kolkata")


def test_synthetic_records_match_the_generator_and_are_about_540_bytes():
    count = SYNTHETIC_RECORDS_PER_DAY + 50
    synthetic = list(synthetic_records(count, seed=3))
    assert len(synthetic) == count
    first_day = datetime.combine(SYNTHETIC_START_DAY, datetime.min.time(), IST)
    created_on_first_day = generate_records(
        "BENCH", first_day, first_day + timedelta(days=1), seed=3,
        records_per_day=SYNTHETIC_RECORDS_PER_DAY, sortby="1",
    )  # fmt: skip
    assert synthetic[:SYNTHETIC_RECORDS_PER_DAY] == created_on_first_day
    assert synthetic[-1]["CreatedDate"].startswith("2024-01-02")
    assert 500 <= len(json.dumps(synthetic)) / count <= 580
