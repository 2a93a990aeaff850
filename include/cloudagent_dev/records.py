"""Synthetic dial-status records for benchmarks and load tests: the simulator's leads, as many as asked."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

from cloudagent_etl.simulator.data import day_records

#: The first day of synthetic leads, and how many leads each day has.
SYNTHETIC_START_DAY = date(2024, 1, 1)
SYNTHETIC_RECORDS_PER_DAY = 10_000


def synthetic_records(count: int, *, seed: int, campaign: str = "BENCH") -> Iterator[dict[str, str]]:
    """``count`` records of the same shape: the leads of consecutive days from :data:`SYNTHETIC_START_DAY`.

    Record ``i`` is lead ``i % SYNTHETIC_RECORDS_PER_DAY`` of day ``i // SYNTHETIC_RECORDS_PER_DAY``: the
    same record the simulator's ``generate_records`` gives with that ``records_per_day``.
    """
    day = SYNTHETIC_START_DAY
    while count > 0:
        in_day = min(count, SYNTHETIC_RECORDS_PER_DAY)
        for _created, _updated, record in day_records(seed, campaign, day, in_day):
            yield record
        count -= in_day
        day += timedelta(days=1)
