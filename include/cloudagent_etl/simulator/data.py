"""Deterministic dial-status records, shaped like CloudAgent's (docs/cloudagent-contract.md).

A campaign's data is a set of leads per calendar day of the account's time zone (IST unless told
otherwise): lead ``index`` of ``day`` is created on that day (``CreatedDate``), dialled up to three times
and last touched (``UpdatedDate``) up to ~2 days later. Every time in a record is a wall-clock time of that
zone, without an offset. ``random.Random`` is seeded from (seed, campaign, day) and the day's leads are
drawn in index order, so every record is a pure function of (seed, campaign, day, index): re-requesting a
window gives identical records, ``records_per_day`` only truncates a day, and consecutive windows
partition the data. Two accounts differ by their seeds, not by their zones: the zone only says which
instants a wall-clock time stands for. (In a zone with daylight saving time the repeated hour is compared
on the wall clock, so windows across it are as ambiguous as CloudAgent's own wall-clock parameters.)

Window rule: ``window_start <= date < window_end`` on the ``sortby`` date — ``"1"`` CreatedDate, ``"2"``
UpdatedDate, ``"0"`` ("all data") either of the two (so ``"0"`` windows overlap; they do not partition).
Filters: ``status`` matches the lead status, ``dialstatus`` the *last* leg of a multi-leg ``DialStatus``
(a lead never dialled matches only ``ALL``), ``dispositions`` is ``ALL`` or a comma-separated list.
Records come out in (day, index) order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, tzinfo

from cloudagent_etl.simulator.contract import (
    ALL_DISPOSITIONS,
    DATE_FORMAT,
    DIAL_STATUSES,
    LEAD_STATUSES,
    SORTBY_VALUES,
    TIMEZONE,
)

#: Dispositions configured on every simulated campaign (what an agent picks after an answered call).
DISPOSITIONS = ("Interested", "Not Interested", "Call Back", "Wrong Number", "Converted")
#: The two custom upload columns every simulated campaign carries.
CUSTOM_COLUMNS = ("City", "LoanAmount")

_DIAL_OUTCOMES = ("answered", "NoAnswer", "Fail", "user_disconnected")
_DIAL_WEIGHTS = (5, 3, 1, 1)
_FIRST_NAMES = ("Aarav", "Priya", "Rahul", "Sneha", "Vikram", "Ananya", "Arjun", "Kavya", "Rohan", "Meera")
_LAST_NAMES = ("Sharma", "Iyer", "Reddy", "Patel", "Nair", "Gupta", "Khan", "Das", "Menon", "Singh")
_AGENTS = (("AG101", "Asha"), ("AG102", "Bilal"), ("AG103", "Chitra"), ("AG104", "Deepak"), ("AG105", "Esha"))
_SKILLS = ("Sales", "Collections", "Support")
_CITIES = ("Mumbai", "Delhi", "Bengaluru", "Chennai", "Kolkata", "Hyderabad", "Pune")
_MAX_ATTEMPTS = 3
#: The latest UpdatedDate is this many days after the CreatedDate's day (bounds the days to scan).
_MAX_LAG_DAYS = 3
_MIN_CALL_ID = 2**53 + 1  # call ids above 2^53: a float would silently change them
MAX_RECORDS_PER_DAY = 999_999  # DataUniqueId keeps six digits for the index


def _day_rng(seed: int, campaign: str, day: date) -> random.Random:
    # A str seed is hashed with SHA-512: stable across processes and Python runs (unlike hash()).
    return random.Random(f"{seed}|{campaign}|{day.isoformat()}")


def _fmt(value: datetime) -> str:
    return value.strftime(DATE_FORMAT)


def _duration(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _make_record(
    rng: random.Random, campaign: str, day: date, index: int
) -> tuple[datetime, datetime, dict[str, str]]:
    """The next lead of ``day`` drawn from ``rng``: (created, updated, record), times naive wall clock."""
    created = datetime.combine(day, time()) + timedelta(seconds=rng.randrange(86_400))
    attempts = rng.choices(range(_MAX_ATTEMPTS + 1), weights=(1, 5, 3, 2))[0]
    legs = rng.choices(_DIAL_OUTCOMES, weights=_DIAL_WEIGHTS, k=attempts)
    phone = f"{rng.choice('6789')}{rng.randrange(10**9):09d}"
    name = "" if rng.random() < 0.05 else f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
    skill = "None" if rng.random() < 0.1 else rng.choice(_SKILLS)
    city = "" if rng.random() < 0.1 else rng.choice(_CITIES)
    loan_amount = "None" if rng.random() < 0.1 else str(rng.randrange(10_000, 2_000_000, 500))
    record = {
        "CampaignName": campaign,
        "PhoneNumber": f"91{phone}" if rng.random() < 0.35 else phone,
        "Name": name,
        "Status": "Pending",
        "DialStatus": " -> ".join(legs),
        "Disposition": "",
        "Attempts": str(attempts),
        "AgentID": "",
        "AgentName": "None",
        "UCID": "None",
        "monitorUCID": "None",
        "StartTime": "",
        "EndTime": "",
        "Duration": "",
        "Skill": skill,
        "Priority": str(rng.choices((1, 2, 3, 4, 5), weights=(5, 2, 1, 1, 1))[0]),
        "CreatedDate": _fmt(created),
        "UpdatedDate": "",
        "DataUniqueId": f"{day:%Y%m%d}{index:06d}",
        "City": city,
        "LoanAmount": loan_amount,
    }
    if not legs:  # uploaded, not dialled yet; maybe edited since
        updated = created + timedelta(seconds=rng.randrange(3_600))
    else:
        last = legs[-1]
        if last == "answered":
            record["Status"] = "Success"
            record["Disposition"] = rng.choice(DISPOSITIONS)
            record["AgentID"], record["AgentName"] = rng.choice(_AGENTS)
            seconds = rng.randrange(20, 900)
        else:
            record["Status"] = "Fail" if attempts == _MAX_ATTEMPTS or rng.random() < 0.3 else "Pending"
            seconds = rng.randrange(45)
        start = created + timedelta(seconds=rng.randrange(2 * 86_400))
        end = start + timedelta(seconds=seconds)
        updated = end + timedelta(seconds=rng.randrange(120))
        record["UCID"] = str(rng.randrange(_MIN_CALL_ID, 10**17))
        record["monitorUCID"] = str(rng.randrange(_MIN_CALL_ID, 10**17))
        record.update(StartTime=_fmt(start), EndTime=_fmt(end), Duration=_duration(seconds))
    record["UpdatedDate"] = _fmt(updated)
    return created, updated, record


def day_records(
    seed: int, campaign: str, day: date, count: int
) -> Iterator[tuple[datetime, datetime, dict[str, str]]]:
    """The first ``count`` leads created on ``day`` for ``campaign``: (created, updated, record) each."""
    rng = _day_rng(seed, campaign, day)
    for index in range(count):
        yield _make_record(rng, campaign, day, index)


def _to_wall_clock(value: datetime, name: str, zone: tzinfo) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(zone).replace(tzinfo=None)


def generate_records(
    campaign: str,
    window_start: datetime,
    window_end: datetime,
    *,
    seed: int,
    records_per_day: int,
    sortby: str = "2",
    status: str = "All",
    dialstatus: str = "ALL",
    dispositions: str = ALL_DISPOSITIONS,
    timezone: tzinfo = TIMEZONE,
) -> list[dict[str, str]]:
    """The campaign's records whose ``sortby`` date lies in [window_start, window_end), filtered.

    ``timezone`` is the account's: its calendar days hold the leads, and record times are its wall clock.
    """
    if sortby not in SORTBY_VALUES:
        raise ValueError(f"sortby must be one of {SORTBY_VALUES}, not {sortby!r}")
    if status not in LEAD_STATUSES:
        raise ValueError(f"status must be one of {LEAD_STATUSES}, not {status!r}")
    if dialstatus not in DIAL_STATUSES:
        raise ValueError(f"dialstatus must be one of {DIAL_STATUSES}, not {dialstatus!r}")
    wanted_dispositions = {value.strip() for value in dispositions.split(",")}
    if dispositions == ALL_DISPOSITIONS:
        wanted_dispositions = set(DISPOSITIONS) | {""}
    elif not wanted_dispositions <= set(DISPOSITIONS):
        raise ValueError(f"dispositions must be ALL or a comma-separated subset of {DISPOSITIONS}")
    if not 0 <= records_per_day <= MAX_RECORDS_PER_DAY:
        raise ValueError(f"records_per_day must be between 0 and {MAX_RECORDS_PER_DAY}")
    start = _to_wall_clock(window_start, "window_start", timezone)
    end = _to_wall_clock(window_end, "window_end", timezone)
    if start >= end:
        return []

    # Only leads created on these days can have the sortby date inside the window.
    first_day = start.date() if sortby == "1" else start.date() - timedelta(days=_MAX_LAG_DAYS)
    last_day = (end - timedelta(microseconds=1)).date()
    records = []
    for offset in range((last_day - first_day).days + 1):
        day = first_day + timedelta(days=offset)
        for created, updated, record in day_records(seed, campaign, day, records_per_day):
            if sortby == "1":
                in_window = start <= created < end
            elif sortby == "2":
                in_window = start <= updated < end
            else:
                in_window = start <= created < end or start <= updated < end
            if not in_window:
                continue
            if status != "All" and record["Status"] != status:
                continue
            if dialstatus != "ALL" and record["DialStatus"].rsplit(" -> ", 1)[-1] != dialstatus:
                continue
            if record["Disposition"] not in wanted_dispositions:
                continue
            records.append(record)
    return records
