"""The simulator's generated data: deterministic, shaped like CloudAgent's, windows partition it."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cloudagent_etl.simulator.data import (
    CUSTOM_COLUMNS,
    DISPOSITIONS,
    generate_records,
)

IST = ZoneInfo("Asia/Kolkata")
UTC = ZoneInfo("UTC")
DAY = datetime(2025, 3, 10, tzinfo=IST)
FIELDS = [
    "CampaignName", "PhoneNumber", "Name", "Status", "DialStatus", "Disposition", "Attempts", "AgentID",
    "AgentName", "UCID", "monitorUCID", "StartTime", "EndTime", "Duration", "Skill", "Priority",
    "CreatedDate", "UpdatedDate", "DataUniqueId", *CUSTOM_COLUMNS,
]  # fmt: skip
TIME = "%Y-%m-%d %H:%M:%S"


def records(start: datetime = DAY, end: datetime = DAY + timedelta(days=2), **kwargs: object) -> list[dict]:
    options = {"seed": 7, "records_per_day": 150, **kwargs}
    return generate_records("Alpha", start, end, **options)  # type: ignore[arg-type]


def ist(value: str) -> datetime:
    return datetime.strptime(value, TIME).replace(tzinfo=IST)


def test_same_inputs_give_identical_records_and_another_seed_differs():
    assert records() == records()
    assert records() != records(seed=8)
    assert records() != generate_records("Beta", DAY, DAY + timedelta(days=2), seed=7, records_per_day=150)


@pytest.mark.parametrize("sortby", ["1", "2"])
def test_consecutive_windows_partition_the_data(sortby):
    whole = records(sortby=sortby)
    bounds = [DAY + timedelta(hours=5 * step) for step in range(0, 10)] + [DAY + timedelta(days=2)]
    pieces = [records(start, end, sortby=sortby) for start, end in itertools.pairwise(bounds)]
    joined = [record for piece in pieces for record in piece]
    assert sorted(joined, key=lambda r: r["DataUniqueId"]) == sorted(whole, key=lambda r: r["DataUniqueId"])
    assert len({r["DataUniqueId"] for r in joined}) == len(joined)


@pytest.mark.parametrize(("sortby", "field"), [("1", "CreatedDate"), ("2", "UpdatedDate")])
def test_window_filters_the_sortby_date_start_inclusive_end_exclusive(sortby, field):
    start, end = DAY + timedelta(hours=6), DAY + timedelta(hours=18)
    inside = records(start, end, sortby=sortby)
    assert inside
    assert all(start <= ist(r[field]) < end for r in inside)
    # A window that starts exactly at a record's date includes it; one that ends there excludes it.
    first = ist(inside[0][field])
    assert inside[0] in records(first, first + timedelta(seconds=1), sortby=sortby)
    assert inside[0] not in records(first - timedelta(hours=1), first, sortby=sortby)


def test_windows_in_other_time_zones_mean_the_same_instants():
    start, end = DAY + timedelta(hours=3), DAY + timedelta(hours=20)
    assert records(start, end) == records(start.astimezone(UTC), end.astimezone(UTC))


def test_sortby_0_is_every_record_created_or_updated_in_the_window():
    start, end = DAY + timedelta(hours=6), DAY + timedelta(days=1)
    either = records(start, end, sortby="0")
    by_created, by_updated = records(start, end, sortby="1"), records(start, end, sortby="2")
    ids = {r["DataUniqueId"] for r in either}
    assert ids == {r["DataUniqueId"] for r in by_created + by_updated}
    assert len(ids) > max(len(by_created), len(by_updated))


def test_more_records_per_day_keeps_the_earlier_records_identical():
    few = records(sortby="1", records_per_day=40)
    many = records(sortby="1", records_per_day=120)
    assert few == [r for r in many if int(r["DataUniqueId"][-6:]) < 40]


def test_record_shape():
    sample = records()
    assert len(sample) > 200
    for record in sample:
        assert list(record) == FIELDS
        assert all(isinstance(value, str) for value in record.values())
        assert re.fullmatch(r"(91)?[6-9]\d{9}", record["PhoneNumber"])
        assert record["Status"] in {"Success", "Fail", "Pending"}
        assert ist(record["CreatedDate"]) <= ist(record["UpdatedDate"])
        assert int(record["Attempts"]) == (
            len(record["DialStatus"].split(" -> ")) if record["DialStatus"] else 0
        )
        if record["StartTime"]:
            start, end = ist(record["StartTime"]), ist(record["EndTime"])
            hours, minutes, seconds = map(int, record["Duration"].split(":"))
            assert (end - start).total_seconds() == hours * 3600 + minutes * 60 + seconds
            assert start >= ist(record["CreatedDate"])
            assert end <= ist(record["UpdatedDate"])
            assert int(record["UCID"]) > 2**53
            assert int(record["monitorUCID"]) > 2**53
        if record["DialStatus"].endswith("answered"):
            assert record["Status"] == "Success"
            assert record["Disposition"] in DISPOSITIONS
        else:
            assert record["Disposition"] == ""
    assert len({r["DataUniqueId"] for r in sample}) == len(sample)
    values = Counter(value for record in sample for value in record.values())
    assert values[""]
    assert values["None"]
    assert any(" -> " in r["DialStatus"] for r in sample)
    assert {len(r["PhoneNumber"]) for r in sample} == {10, 12}


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        ({"status": "Success"}, lambda r: r["Status"] == "Success"),
        ({"status": "Pending"}, lambda r: r["Status"] == "Pending"),
        ({"dialstatus": "NoAnswer"}, lambda r: r["DialStatus"].rsplit(" -> ", 1)[-1] == "NoAnswer"),
        ({"dialstatus": "answered"}, lambda r: r["DialStatus"].endswith("answered")),
        ({"dispositions": "Converted"}, lambda r: r["Disposition"] == "Converted"),
        ({"dispositions": "Call Back,Interested"}, lambda r: r["Disposition"] in {"Call Back", "Interested"}),
        (
            {"status": "Fail", "dialstatus": "Fail"},
            lambda r: r["Status"] == "Fail" and r["DialStatus"][-4:] == "Fail",
        ),
    ],
)
def test_filters_keep_exactly_the_matching_records(filters, keep):
    filtered = records(**filters)
    assert filtered
    assert filtered == [r for r in records() if keep(r)]


@pytest.mark.parametrize(
    "bad", [{"sortby": "3"}, {"status": "all"}, {"dialstatus": "Answered"}, {"dispositions": "Nope"}]
)
def test_unknown_filter_values_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        records(**bad)


def test_naive_window_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        generate_records("Alpha", datetime(2025, 3, 1), datetime(2025, 3, 2), seed=1, records_per_day=5)


def test_an_account_in_another_zone_gets_wall_clock_times_of_its_zone():
    """Each account has its own zone: its day runs from its midnight, and record times are its wall clock."""
    dubai = ZoneInfo("Asia/Dubai")
    day_in_dubai = datetime(2025, 3, 10, tzinfo=dubai)
    # The window arrives as UTC instants; the records still read as Dubai wall-clock times.
    window = (day_in_dubai.astimezone(UTC), (day_in_dubai + timedelta(days=1)).astimezone(UTC))
    in_dubai = records(*window, timezone=dubai)
    assert in_dubai
    assert all("2025-03-10 00:00:00" <= r["UpdatedDate"] < "2025-03-11 00:00:00" for r in in_dubai)
    # The same instants read in IST are 1.5 hours later on the wall clock: other records.
    in_ist = records(*window)
    assert in_ist != in_dubai
    assert all("2025-03-10 01:30:00" <= r["UpdatedDate"] < "2025-03-11 01:30:00" for r in in_ist)
    # The zone only maps instants to the wall clock: the same wall-clock day gives the same records.
    assert in_dubai == records(DAY, DAY + timedelta(days=1))
