"""The deferrable wait for an export's callback (a classic operator: in Airflow 3 a @task cannot defer)."""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from cloudagent_airflow.hooks import CloudAgentDbHook
from cloudagent_airflow.triggers import CallbackArrivedTrigger


class WaitForCallbackOperator(BaseOperator):
    """Defer until the callback of export request ``request_id`` has landed; fail clearly if it never does.

    ``execute`` only branches (already landed: done; else defer to :class:`CallbackArrivedTrigger`);
    ``execute_complete`` returns the request id on success and otherwise marks the request ``expired``
    and raises :class:`AirflowFailException` with a message naming campaign, window and uniqueId. The
    wait is not retried: a new wait for the same export cannot help, a fresh export (clear the
    campaign's ``request_export``) can.
    """

    template_fields = ("request_id", "campaign_name", "timeout_minutes")

    def __init__(
        self,
        *,
        request_id: str,
        campaign_name: str = "",
        timeout_minutes: float | str = 60,
        poll_interval_s: float = 15.0,
        db_conn_id: str = CloudAgentDbHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)
        self.request_id = request_id
        self.campaign_name = campaign_name
        self.timeout_minutes = timeout_minutes
        self.poll_interval_s = poll_interval_s
        self.db_conn_id = db_conn_id

    def execute(self, context: Any) -> str:
        from cloudagent_etl import landing

        with CloudAgentDbHook(self.db_conn_id).engine() as engine:
            status = landing.callback_status(engine, self.request_id)
        if status is landing.CallbackStatus.LANDED:
            return self.request_id
        if status is landing.CallbackStatus.GAVE_UP:
            with CloudAgentDbHook(self.db_conn_id).engine() as engine:
                description = landing.describe_request(engine, self.request_id)
            raise AirflowFailException(f"{description} was failed or expired before the wait began")
        deadline = time.time() + float(self.timeout_minutes) * 60
        self.defer(
            trigger=CallbackArrivedTrigger(
                request_id=self.request_id,
                deadline=deadline,
                poll_interval_s=self.poll_interval_s,
                db_conn_id=self.db_conn_id,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> str:
        from cloudagent_etl.pipeline import expire_request

        if event["status"] == "received":
            return self.request_id
        with CloudAgentDbHook(self.db_conn_id).engine() as engine:
            if event["status"] == "timeout":
                message = expire_request(engine, self.request_id, float(self.timeout_minutes))
                if message is None:  # the callback landed just as the wait ran out
                    return self.request_id
                raise AirflowFailException(message)
        raise AirflowFailException(event.get("message", f"waiting for the callback failed: {event}"))
