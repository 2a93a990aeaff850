"""The per-day views flag the days whose nightly window has not closed: today's numbers are partial."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from cloudagent_etl import pipeline, status
from tests.factories import land, new_request, record


def test_a_day_is_complete_once_its_nightly_window_has_closed(engine: Engine) -> None:
    now = datetime.now(UTC)
    today = now.astimezone(status.IST).date()
    old = today - timedelta(days=3)
    stamps = {old: f"{old} 12:00:00", today: f"{today} 00:01:00"}  # IST wall clock, as CloudAgent sends
    request = new_request(engine, "Sales", unique_id="U-1", window=(now - timedelta(days=4), now))
    land(engine, request.request_id, [record(f"K-{day}", stamp) for day, stamp in stamps.items()])
    pipeline.load_request(engine, request.request_id)

    with engine.connect() as conn:
        summary = dict(conn.execute(text("SELECT day_ist, complete FROM dial_status_daily_summary")).all())
        dispositions = set(conn.execute(text("SELECT day_ist, complete FROM dial_status_daily_dispositions")))

    complete = {str(day)[:10]: int(flag) for day, flag in summary.items()}
    assert complete == {str(old): 1, str(today): 0}
    assert {(str(day)[:10], int(flag)) for day, flag in dispositions} == {(str(old), 1), (str(today), 0)}
