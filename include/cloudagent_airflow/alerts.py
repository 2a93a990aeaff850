"""Sending the alerts of :mod:`cloudagent_etl.alerts` through Airflow's notifier interface.

The channel is the connection ``cloudagent_alerts``: type ``smtp`` (extra ``to``, optionally
``from_email``; ``SmtpNotifier`` of apache-airflow-providers-smtp) or ``slackwebhook``
(``SlackWebhookNotifier`` of apache-airflow-providers-slack). Without it, alerts are only logged
(:class:`LogNotifier`). Every alert is logged whatever the channel. Notifiers get the message as plain
text and are called through ``notify`` (no Jinja rendering: the message quotes error texts).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from typing import Any

from airflow.sdk import BaseHook, BaseNotifier
from airflow.sdk.exceptions import AirflowNotFoundException

from cloudagent_etl.alerts import Alert

ALERTS_CONN_ID = "cloudagent_alerts"

log = logging.getLogger(__name__)


class LogNotifier(BaseNotifier):
    """The default channel: the alert as a warning in the task log."""

    def __init__(self, *, subject: str, message: str) -> None:
        super().__init__()
        self.subject = subject
        self.message = message

    def notify(self, context: Any) -> None:
        log.warning("ALERT %s", self.message)


def notifier_for(alert: Alert) -> BaseNotifier:
    """The notifier of connection ``cloudagent_alerts`` for this alert (a :class:`LogNotifier` without it)."""
    from cloudagent_etl.errors import ConfigurationError

    try:
        conn = BaseHook.get_connection(ALERTS_CONN_ID)
    except AirflowNotFoundException:
        return LogNotifier(subject=alert.subject, message=alert.message)
    kind = (conn.conn_type or "").lower()
    if kind == "smtp":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        extra = conn.extra_dejson
        if not extra.get("to"):
            raise ConfigurationError(f"connection {ALERTS_CONN_ID} (smtp) needs the extra 'to' (addresses)")
        return SmtpNotifier(
            to=extra["to"],
            from_email=extra.get("from_email"),
            smtp_conn_id=ALERTS_CONN_ID,
            subject=alert.subject,
            html_content=f"<pre>{html.escape(alert.message)}</pre>",
        )
    if kind == "slackwebhook":
        try:
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
        except ImportError:
            raise ConfigurationError(
                f"connection {ALERTS_CONN_ID} is a Slack webhook: install apache-airflow-providers-slack"
            ) from None
        return SlackWebhookNotifier(slack_webhook_conn_id=ALERTS_CONN_ID, text=alert.message)
    raise ConfigurationError(
        f"connection {ALERTS_CONN_ID} has type {conn.conn_type!r}: use smtp or slackwebhook (or remove it to "
        "only log alerts)"
    )


def send_alert(
    alert: Alert | None, context: Any, notifier: Callable[[Alert], BaseNotifier] = notifier_for
) -> bool:
    """Send the alert through ``notifier(alert)`` (and log it); False when there is nothing to say."""
    if alert is None:
        return False
    channel = notifier(alert)
    if not isinstance(channel, LogNotifier):
        log.warning("ALERT %s (sent through %s)", alert.message, type(channel).__name__)
    channel.notify(context)
    return True
