"""``cloudagent-etl status`` and the report behind it, on real databases: a state per cell, the numbers of
the loads, what is missing and the backfill that fixes it, and the rejects by reason."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from cloudagent_etl import landing, pipeline, status, targets
from cloudagent_etl.accounts import SyncTarget
from cloudagent_etl.cli import main
from cloudagent_etl.settings import DEFAULT_CONNECTION
from cloudagent_etl.warehouse.tables import dial_status, load_runs
from tests.factories import land, new_request, record

DAYS = [date(2025, 6, 2), date(2025, 6, 3), date(2025, 6, 4)]
CAMPAIGNS = ["Sales", "Support", "Renewals"]
ACCOUNTS = {DEFAULT_CONNECTION: CAMPAIGNS}
TARGETS = [SyncTarget(DEFAULT_CONNECTION, campaign) for campaign in CAMPAIGNS]


def window_of(day: date) -> tuple[datetime, datetime]:
    """The window a nightly run of ``day`` exports: its interval, started 15 minutes early."""
    start, end = status.nightly_window(day)
    return start - timedelta(minutes=15), end


def loaded(engine: Engine, campaign: str, day: date, records: list[dict], **fields: str) -> str:
    request = new_request(engine, campaign, unique_id=f"U-{campaign}-{day}", window=window_of(day), **fields)
    land(engine, request.request_id, [{**r, "CampaignName": campaign} for r in records])
    pipeline.load_request(engine, request.request_id)
    return request.request_id


@pytest.fixture
def synced(engine: Engine) -> dict[str, str]:
    """Sales loaded on every day (06-03 twice: a rerun with a bad record), Support expired on 06-03 and
    then failed, received (not loaded) on 06-04; Renewals never requested."""
    run = {"dag_id": "cloudagent_dial_status", "run_id": "backfill__2025-06-02T22:00:00+00:00"}
    targets.record_seen(engine, TARGETS, DAYS[0])  # configured (a run's preflight) from the first day
    ids = {}
    for day in DAYS:
        answered = [record(f"S-{day}-{n}", f"{day} 10:0{n}:00", DialStatus="answered") for n in range(3)]
        unanswered = record(f"S-{day}-9", f"{day} 11:00:00", DialStatus="NoAnswer")
        lineage = run if day == DAYS[1] else {}
        ids[f"Sales {day}"] = loaded(engine, "Sales", day, [*answered, unanswered], **lineage)
    bad = record("S-bad", "not a date")
    ids["Sales rerun"] = loaded(
        engine, "Sales", DAYS[1], [record(f"S-{DAYS[1]}-0", f"{DAYS[1]} 10:00:00"), bad]
    )
    expired = new_request(engine, "Support", unique_id="U-support-expired", window=window_of(DAYS[1]), **run)
    landing.mark_expired(engine, expired.request_id, "no callback within 60 minutes (attempt 1)")
    failed = new_request(engine, "Support", unique_id="U-support-failed", window=window_of(DAYS[1]))
    landing.mark_failed(engine, failed.request_id, "CloudAgentError: campaign is not active")
    received = new_request(engine, "Support", unique_id="U-support-received", window=window_of(DAYS[2]))
    land(engine, received.request_id, [record("P-1", f"{DAYS[2]} 09:00:00", CampaignName="Support")])
    ids.update(expired=expired.request_id, failed=failed.request_id, received=received.request_id)
    return ids


def test_each_cell_has_the_state_of_its_best_request_and_configured_campaigns_get_a_row(
    engine: Engine, synced: dict[str, str]
) -> None:
    report = status.status_report(engine, days=3, until=DAYS[-1], accounts=ACCOUNTS)
    grid = report.coverage

    assert grid.days == tuple(DAYS)
    assert grid.targets == tuple(TARGETS)
    states = {(t.campaign, d): grid.cell(t, d).state.value for t in TARGETS for d in DAYS}
    assert states == {
        **{("Sales", d): "loaded" for d in DAYS},
        ("Support", DAYS[0]): "never_requested",
        ("Support", DAYS[1]): "failed",  # expired first, then failed: the latest attempt decides
        ("Support", DAYS[2]): "received",
        **{("Renewals", d): "never_requested" for d in DAYS},
    }
    support = grid.cell(TARGETS[1], DAYS[1])
    assert [(s.request.unique_id, s.request.state.value, s.request.error) for s in support.requests] == [
        ("U-support-expired", "expired", "no callback within 60 minutes (attempt 1)"),
        ("U-support-failed", "failed", "CloudAgentError: campaign is not active"),
    ]
    assert support.requests[0].request.run_id == "backfill__2025-06-02T22:00:00+00:00"


def test_the_numbers_of_a_cell_are_those_of_its_load_runs(engine: Engine, synced: dict[str, str]) -> None:
    cell = status.status_report(engine, days=3, until=DAYS[-1]).coverage.cell(TARGETS[0], DAYS[1])

    with engine.connect() as conn:
        runs = conn.execute(
            select(load_runs).where(
                load_runs.c.request_id.in_([synced[f"Sales {DAYS[1]}"], synced["Sales rerun"]])
            )
        ).all()
    assert cell.loads.loads == len(runs) == 2
    assert (cell.loads.rows_in, cell.loads.inserted, cell.loads.updated, cell.loads.unchanged,
            cell.loads.rejected) == (
        sum(r.rows_in for r in runs), sum(r.inserted for r in runs), sum(r.updated for r in runs),
        sum(r.unchanged for r in runs), sum(r.rejected for r in runs),
    ) == (6, 4, 0, 1, 1)  # fmt: skip
    assert cell.loads.seconds == pytest.approx(sum(r.seconds for r in runs))


def test_status_prints_the_grid_the_missing_days_their_backfill_and_the_rejects(
    db_url: str, engine: Engine, synced: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status", "--days", "3", "--until", "2025-06-04", "--database-url", db_url,
                 "--campaigns", ",".join(CAMPAIGNS)])  # fmt: skip

    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("coverage 2025-06-02 .. 2025-06-04 (IST days")
    assert lines[2:6] == [
        "campaign  06-02  06-03  06-04",
        "Sales     L      L      L",
        "Support   -      F      R",
        "Renewals  -      -      -",
    ]
    assert (
        "  2025-06-03  Sales     loaded                2         6        4         0        1          1"
        in out
    )
    assert "missing: 6 campaign-day(s):" in out
    assert "  2025-06-03  Support  failed  window 2025-06-03 03:15 .. 2025-06-04 03:30 IST" in out
    assert f"    attempt 1: expired, uniqueId U-support-expired, request {synced['expired']}" in out
    commands = [line.strip() for line in lines if line.strip().startswith("airflow backfill")]
    assert [
        [*shlex.split(c)[6:11:2], json.loads(shlex.split(c)[-1])["accounts"][DEFAULT_CONNECTION]]
        for c in commands
    ] == [
        ["2025-06-02T03:30:00+05:30", "2025-06-03T03:30:00+05:30", "failed", ["Support", "Renewals"]],
        ["2025-06-04T03:30:00+05:30", "2025-06-04T03:30:00+05:30", "failed", ["Renewals"]],
    ]  # Support failed or never requested on 06-02..03; on 06-04 its callback landed: on its way
    (reject,) = [line for line in lines if "UpdatedDate" in line or "updated_at" in line]
    assert reject.split()[:2] == ["1", "Sales"]
    assert "secret-api-key" not in out


def test_the_json_of_the_page_carries_no_secret_and_the_warehouse_answer_rates(
    engine: Engine, synced: dict[str, str]
) -> None:
    data = status.report_json(status.status_report(engine, days=3, until=DAYS[-1], accounts=ACCOUNTS))

    text = json.dumps(data)
    assert "secret-api-key" not in text
    assert "token" not in text.lower()
    cell = next(c for c in data["cells"] if (c["campaign"], c["day"]) == ("Support", "2025-06-03"))
    assert (cell["state"], cell["label"], cell["requests"], cell["expired"], cell["failed"]) == (
        "failed", "failed", 2, 1, 1,
    )  # fmt: skip
    assert [a["unique_id"] for a in cell["attempts"]] == ["U-support-expired", "U-support-failed"]
    with engine.connect() as conn:
        leads = dict(
            conn.execute(
                select(dial_status.c.campaign_name, func.count()).group_by(dial_status.c.campaign_name)
            ).all()
        )
    rates = data["answer_rates"]
    assert sum(r["leads"] for r in rates if r["campaign"] == "Sales") == leads["Sales"] == 12
    assert {(r["day"], r["answered"], r["leads"]) for r in rates} == {(str(d), 3, 4) for d in DAYS}
    assert {(r["account"], r["series"]) for r in rates} == {("test_user", "Sales")}
    assert data["backfills"][0] == {
        "first_day": "2025-06-02",
        "last_day": "2025-06-03",
        "accounts": {DEFAULT_CONNECTION: ["Support", "Renewals"]},
        "labels": ["Support", "Renewals"],
        "from_date": "2025-06-02T03:30:00+05:30",
        "to_date": "2025-06-03T03:30:00+05:30",
    }
    assert [row["label"] for row in data["rows"]] == CAMPAIGNS
    assert data["accounts"] == [DEFAULT_CONNECTION]


def test_the_default_range_ends_with_the_last_day_whose_window_has_closed() -> None:
    before = datetime(2025, 6, 5, 21, 59, tzinfo=UTC)  # 03:29 IST on 06-06: 06-05's window is still open
    after = datetime(2025, 6, 5, 22, 0, tzinfo=UTC)

    assert status.day_range(2, now=before) == (date(2025, 6, 3), date(2025, 6, 4))
    assert status.day_range(2, now=after) == (date(2025, 6, 4), date(2025, 6, 5))
    assert status.window_day(*window_of(date(2025, 6, 4))) == date(2025, 6, 4)
