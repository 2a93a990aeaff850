"""Alerts on missing data, found in a real database and sent through Airflow's notifier interface: a test
notifier records what it was given (campaigns, window, reason); the connection picks the channel."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from cloudagent_etl import alerts, landing, pipeline, status
from cloudagent_etl.accounts import SyncTarget
from cloudagent_etl.errors import ConfigurationError
from cloudagent_etl.settings import DEFAULT_CONNECTION
from tests.factories import land, new_request, record

DAY = date(2025, 6, 3)
WINDOW = status.nightly_window(DAY)
RUN = {"dag_id": "cloudagent_dial_status", "run_id": "scheduled__2025-06-02T22:00:00+00:00"}


class RecordingNotifier:
    """A notifier (Airflow's BaseNotifier) that keeps every message it is asked to send."""

    sent: list[dict[str, Any]]

    def __init__(self) -> None:
        from airflow.sdk import BaseNotifier

        class Recording(BaseNotifier):
            def __init__(self, alert: alerts.Alert, sent: list[dict[str, Any]]) -> None:
                super().__init__()
                self.alert, self.sent = alert, sent

            def notify(self, context: Any) -> None:
                self.sent.append({"subject": self.alert.subject, "message": self.alert.message,
                                  "campaigns": self.alert.campaigns, "context": context})  # fmt: skip

        self.sent = []
        self.make = lambda alert: Recording(alert, self.sent)


@pytest.fixture
def a_run_with_one_campaign_expired(engine: Engine) -> str:
    sales = new_request(engine, "Sales", unique_id="U-sales", window=WINDOW, **RUN)
    land(engine, sales.request_id, [record("S-1", f"{DAY} 10:00:00")])
    pipeline.load_request(engine, sales.request_id)
    support = new_request(engine, "Support", unique_id="U-support", window=WINDOW, **RUN)
    landing.mark_expired(engine, support.request_id, "no callback within 60 minutes (attempt 1)")
    return support.request_id


def test_a_run_that_ends_with_a_campaign_not_loaded_is_notified_with_campaign_window_and_reason(
    engine: Engine, a_run_with_one_campaign_expired: str
) -> None:
    from cloudagent_airflow.alerts import send_alert

    notifier = RecordingNotifier()
    targets = [SyncTarget(DEFAULT_CONNECTION, name) for name in ("Sales", "Support", "Renewals")]
    alert = alerts.unloaded_in_run(engine, **RUN, targets=targets, window=WINDOW)

    assert send_alert(alert, {"run_id": RUN["run_id"]}, notifier=notifier.make) is True
    (sent,) = notifier.sent
    assert sent["campaigns"] == ("Support", "Renewals")
    assert sent["subject"] == (
        "CloudAgent: run scheduled__2025-06-02T22:00:00+00:00 of cloudagent_dial_status ended with campaigns "
        "not loaded"
    )
    assert sent["message"].splitlines()[1:] == [
        "- Support: window 2025-06-03 03:30 .. 2025-06-04 03:30 IST: expired (attempt 1, uniqueId "
        "U-support): no callback within 60 minutes (attempt 1)",
        "- Renewals: window 2025-06-03 03:30 .. 2025-06-04 03:30 IST: no export request was made in this run",
    ]
    assert sent["context"] == {"run_id": RUN["run_id"]}


def test_a_run_whose_campaigns_all_loaded_sends_nothing(
    engine: Engine, a_run_with_one_campaign_expired: str
) -> None:
    from cloudagent_airflow.alerts import send_alert

    notifier = RecordingNotifier()
    alert = alerts.unloaded_in_run(
        engine, **RUN, targets=[SyncTarget(DEFAULT_CONNECTION, "Sales")], window=WINDOW
    )

    assert alert is None
    assert send_alert(alert, {}, notifier=notifier.make) is False
    assert notifier.sent == []


def test_a_day_still_missing_hours_after_its_window_closed_is_notified_once(
    engine: Engine, a_run_with_one_campaign_expired: str
) -> None:
    closed = WINDOW[1]  # 2025-06-04 03:30 IST = 2025-06-03 22:00 UTC
    hour = closed + timedelta(hours=6)  # the hourly check whose interval holds the 6-hour threshold

    def check(start: datetime) -> alerts.Alert | None:
        return alerts.overdue(
            engine,
            accounts={DEFAULT_CONNECTION: ["Sales", "Support"]},
            hours=6,
            since=start,
            until=start + timedelta(hours=1),
        )

    alert, earlier, later = check(hour), check(hour - timedelta(hours=1)), check(hour + timedelta(hours=1))

    assert alert is not None
    assert [item.line() for item in alert.missing] == [
        "Support: window 2025-06-03 03:30 .. 2025-06-04 03:30 IST: expired 6 h after its window closed "
        "(attempt 1, uniqueId U-support): no callback within 60 minutes (attempt 1)"
    ]
    assert (earlier, later) == (None, None)


def test_the_channel_is_the_connection_cloudagent_alerts_and_without_it_alerts_are_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from cloudagent_airflow.alerts import LogNotifier, notifier_for, send_alert

    missing = alerts.MissingData(SyncTarget(DEFAULT_CONNECTION, "Sales"), *WINDOW, "expired")
    alert = alerts.Alert("CloudAgent: test", (missing,))
    monkeypatch.delenv("AIRFLOW_CONN_CLOUDAGENT_ALERTS", raising=False)
    assert isinstance(notifier_for(alert), LogNotifier)
    with caplog.at_level("WARNING", logger="cloudagent_airflow.alerts"):
        send_alert(alert, {})
    assert "- Sales: window 2025-06-03 03:30 .. 2025-06-04 03:30 IST: expired" in caplog.text

    smtp = {"conn_type": "smtp", "host": "127.0.0.1", "port": 2525, "extra": {"to": "ops@example.com"}}
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_ALERTS", json.dumps(smtp))
    mail = notifier_for(alert)
    assert isinstance(mail, SmtpNotifier)
    assert (mail.to, mail.smtp_conn_id, mail.subject) == (
        "ops@example.com",
        "cloudagent_alerts",
        "CloudAgent: test",
    )
    assert "Sales: window 2025-06-03 03:30" in mail.html_content

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_ALERTS", json.dumps({**smtp, "extra": {}}))
    with pytest.raises(ConfigurationError, match="needs the extra 'to'"):
        notifier_for(alert)
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_ALERTS", json.dumps({"conn_type": "http", "host": "x"}))
    with pytest.raises(ConfigurationError, match="use smtp or slackwebhook"):
        notifier_for(alert)


def test_an_alert_about_another_account_names_its_connection(engine: Engine) -> None:
    """Two accounts with the same campaign name: each line says which account's campaign is missing."""
    acme = new_request(engine, "Sales", unique_id="U-acme", window=WINDOW, **RUN, cloudagent_conn_id="acme")
    landing.mark_expired(engine, acme.request_id, "no callback within 60 minutes (attempt 1)")
    default = new_request(engine, "Sales", unique_id="U-default", window=WINDOW, **RUN)
    land(engine, default.request_id, [record("S-1", f"{DAY} 10:00:00")])
    pipeline.load_request(engine, default.request_id)
    targets = [SyncTarget(DEFAULT_CONNECTION, "Sales"), SyncTarget("acme", "Sales")]

    alert = alerts.unloaded_in_run(engine, **RUN, targets=targets, window=WINDOW)

    assert alert is not None
    assert alert.connections == ("acme",)
    assert [item.line() for item in alert.missing] == [
        "Sales (connection acme): window 2025-06-03 03:30 .. 2025-06-04 03:30 IST: expired (attempt 1, "
        "uniqueId U-acme): no callback within 60 minutes (attempt 1)"
    ]
