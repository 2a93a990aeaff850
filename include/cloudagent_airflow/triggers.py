"""The trigger that waits, in the triggerer and without a worker slot, for an export's callback to land."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from cloudagent_airflow.hooks import CloudAgentDbHook

FIRST_POLL_DELAY_S = 0.5


class CallbackArrivedTrigger(BaseTrigger):
    """Poll the landing table until the request's callback is stored.

    Polls after 0.5 s, then at doubling intervals up to ``poll_interval_s``: quick callbacks are seen at
    once, and a long wait costs the database one small query per ``poll_interval_s``.

    Yields exactly one event: ``{"status": "received"}`` once the request is ``received`` (or already
    ``loaded``), ``{"status": "timeout"}`` once ``deadline`` (UNIX time, fixed when the task deferred, so a
    triggerer restart does not extend the wait) has passed, or ``{"status": "error", "message": ...}`` when
    the request was failed or expired by someone else. Only the connection id is serialized, never the
    database URL (it may hold a password).
    """

    def __init__(
        self,
        request_id: str,
        deadline: float,
        poll_interval_s: float = 15.0,
        db_conn_id: str = CloudAgentDbHook.default_conn_name,
    ) -> None:
        super().__init__()
        self.request_id = request_id
        self.deadline = deadline
        self.poll_interval_s = poll_interval_s
        self.db_conn_id = db_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "request_id": self.request_id,
                "deadline": self.deadline,
                "poll_interval_s": self.poll_interval_s,
                "db_conn_id": self.db_conn_id,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from sqlalchemy.exc import OperationalError

        from cloudagent_etl import landing
        from cloudagent_etl.db import create_db_engine

        event = {"request_id": self.request_id}
        url = await CloudAgentDbHook(self.db_conn_id).aget_uri()
        engine = await asyncio.to_thread(create_db_engine, url)
        delay = min(FIRST_POLL_DELAY_S, self.poll_interval_s)
        try:
            while True:
                try:
                    # The check is a short synchronous query: run it off the event loop.
                    status = await asyncio.to_thread(landing.callback_status, engine, self.request_id)
                except OperationalError as exc:
                    # The database blinked: the wait goes on until the deadline rather than failing.
                    self.log.warning("could not read request %s, will retry: %s", self.request_id, exc)
                    status = None
                if status is landing.CallbackStatus.LANDED:
                    yield TriggerEvent({**event, "status": "received"})
                    return
                if status is landing.CallbackStatus.GAVE_UP:
                    message = (
                        f"request {self.request_id} was failed or expired by someone else while waiting "
                        "for its callback"
                    )
                    yield TriggerEvent({**event, "status": "error", "message": message})
                    return
                remaining = self.deadline - time.time()
                if remaining <= 0:
                    yield TriggerEvent({**event, "status": "timeout"})
                    return
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, self.poll_interval_s)
        finally:
            await asyncio.to_thread(engine.dispose)
