"""The deferrable waits of a sync (classic operators: in Airflow 3 a @task cannot defer): for an account's
window to close, and for an export's callback."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from cloudagent_airflow.errors import terminal_errors_fail_fast
from cloudagent_airflow.hooks import CloudAgentDbHook, CloudAgentHook, pseudonym_key
from cloudagent_airflow.triggers import CallbackArrivedTrigger


class WaitForWindowOperator(BaseOperator):
    """Defer until ``window_end`` (an ISO date-time) has passed: an account whose day ends later than the
    nightly schedule's (a zone west of IST) is exported once its own window has closed, without holding a
    worker slot meanwhile. A window already closed passes at once."""

    template_fields = ("window_end", "export_label")

    def __init__(self, *, window_end: str, export_label: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window_end = window_end
        self.export_label = export_label

    def execute(self, context: Any) -> None:
        from datetime import UTC, datetime

        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        closes = datetime.fromisoformat(self.window_end)
        if closes > datetime.now(UTC):
            self.log.info("the window of %s closes at %s: waiting for it", self.export_label, closes)
            self.defer(trigger=DateTimeTrigger(moment=closes), method_name="execute_complete")

    def execute_complete(self, context: Any, event: Any = None) -> None:
        """The window has closed."""


class WaitForCallbackOperator(BaseOperator):
    """Defer until the callback of export request ``request_id`` has landed (every part of it).

    ``execute`` only branches (already landed: done; else defer to :class:`CallbackArrivedTrigger` until
    the request's callback deadline). When the deadline passes, the request is marked ``expired`` and the
    window is requested again through the shared limiter, up to ``re_requests`` times, each new export
    waited for in turn; the task returns the id of the request whose callback landed (the load reads it).
    After the last attempt it fails with a message naming campaign, window and uniqueId (no retry: a new
    wait cannot bring the callback). Other failures (a worker lost at resume, a stale executor event
    failing a resumed deferral, the metadata API timing out) are retried: a retry starts from the first
    request id and finds the live re-request in the database, so it never spends another API call.
    """

    template_fields = ("request_id", "cloudagent_conn_id", "campaign_name", "timeout_minutes", "re_requests")

    def __init__(
        self,
        *,
        request_id: str,
        cloudagent_conn_id: str,
        campaign_name: str = "",
        timeout_minutes: float | str = 60,
        re_requests: int | str = 2,
        poll_interval_s: float = 15.0,
        db_conn_id: str = CloudAgentDbHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retries", 2)
        kwargs.setdefault("retry_delay", timedelta(seconds=15))
        kwargs.setdefault("retry_exponential_backoff", False)
        super().__init__(**kwargs)
        self.request_id = request_id
        #: The account's connection: a re-request goes to this account.
        self.cloudagent_conn_id = cloudagent_conn_id
        self.campaign_name = campaign_name
        self.timeout_minutes = timeout_minutes
        self.re_requests = re_requests
        self.poll_interval_s = poll_interval_s
        self.db_conn_id = db_conn_id

    def execute(self, context: Any) -> str:
        return self._wait_for(self.request_id)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> str:
        from cloudagent_etl import pipeline

        request_id = event.get("request_id", self.request_id)
        if event["status"] == "received":
            return str(request_id)
        if event["status"] == "error":  # failed or expired meanwhile (e.g. by a sweep): same as at the start
            return self._wait_for(request_id)
        with CloudAgentDbHook(self.db_conn_id).engine() as engine:
            message = pipeline.expire_request(engine, request_id, float(self.timeout_minutes))
            if message is None:  # the callback landed just as the wait ran out
                return str(request_id)
            retried = self._request_again(engine, request_id)
            if retried is None:
                advice = pipeline.no_callback_advice(engine, request_id)
                raise AirflowFailException(
                    f"{message}; no re-request left ({self.re_requests} allowed). {advice}"
                )
        return self._wait_for(retried)

    def _request_again(self, engine: Any, request_id: str) -> str | None:
        """The id of a new export of an expired one's window, or None when no re-request is left."""
        from cloudagent_etl import pipeline, settings

        if not pipeline.may_request_again(engine, request_id, re_requests=int(self.re_requests)):
            return None
        with terminal_errors_fail_fast():
            return pipeline.re_request_export(
                engine,
                CloudAgentHook(self.cloudagent_conn_id).get_settings(),
                settings.callback_base_url(),
                request_id,
                callback_timeout=timedelta(minutes=float(self.timeout_minutes)),
            )

    def _wait_for(self, request_id: str) -> str:
        """Done if the callback landed; else defer until the request's callback deadline."""
        from cloudagent_etl import landing

        with CloudAgentDbHook(self.db_conn_id).engine() as engine:
            status = landing.callback_status(engine, request_id)
            request = landing.require_export_request(engine, request_id)
            if status is landing.CallbackStatus.GAVE_UP:
                retried = self._request_again(engine, request_id)
                if retried is None:
                    raise AirflowFailException(f"{request.describe()} is no longer awaited: {request.error}")
                return self._wait_for(retried)
        if status is landing.CallbackStatus.LANDED:
            return request_id
        if request.callback_deadline is not None:
            deadline = request.callback_deadline.timestamp()
        else:
            deadline = time.time() + float(self.timeout_minutes) * 60
        self.defer(
            trigger=CallbackArrivedTrigger(
                request_id=request_id,
                deadline=deadline,
                poll_interval_s=self.poll_interval_s,
                db_conn_id=self.db_conn_id,
            ),
            method_name="execute_complete",
        )


class LoadExportOperator(BaseOperator):
    """Normalize and merge the landed payloads of export request ``request_id`` under its account
    (idempotent, newer wins), and report to OpenLineage what it read and wrote.

    A classic operator, not a @task: Airflow's OpenLineage provider asks an operator for its lineage
    (:meth:`get_openlineage_facets_on_complete`) after it succeeded. Lineage is best effort: a lineage that
    cannot be built is logged and reported empty, and never fails the load.
    """

    template_fields = ("request_id", "cloudagent_conn_id", "export_label")

    def __init__(
        self,
        *,
        request_id: str,
        cloudagent_conn_id: str,
        export_label: str = "",
        db_conn_id: str = CloudAgentDbHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.request_id = request_id
        #: The account's connection: its apiKey is redacted wherever a payload carries it.
        self.cloudagent_conn_id = cloudagent_conn_id
        self.export_label = export_label
        self.db_conn_id = db_conn_id
        self._loaded: dict[str, Any] | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        from cloudagent_etl import pipeline

        with terminal_errors_fail_fast(), CloudAgentDbHook(self.db_conn_id).engine() as engine:
            api_key = CloudAgentHook(self.cloudagent_conn_id).get_settings().api_key
            counts = pipeline.load_request(
                engine, self.request_id, api_key=api_key, pseudonym_key=pseudonym_key()
            )
        self._loaded = counts
        return counts

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The export read and the tables written, with the load's counts as a run facet."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        try:
            return self._lineage()
        except Exception:
            self.log.warning(
                "the lineage of the load of %s could not be built; the load itself succeeded",
                self.request_id,
                exc_info=True,
            )
            return OperatorLineage()

    def _lineage(self) -> Any:
        from airflow.providers.openlineage.extractors import OperatorLineage
        from openlineage.client.event_v2 import InputDataset, OutputDataset
        from openlineage.client.facet_v2 import output_statistics_output_dataset as statistics

        from cloudagent_airflow.lineage import CloudAgentExportDatasetFacet, CloudAgentLoadRunFacet
        from cloudagent_etl import landing, lineage

        api = CloudAgentHook(self.cloudagent_conn_id).get_settings()
        with CloudAgentDbHook(self.db_conn_id).engine() as engine:
            request = landing.require_export_request(engine, self.request_id)
            written = lineage.warehouse_datasets(engine)
        export = lineage.export_dataset(request, api.base_url)
        counts = self._loaded or {}
        inputs = [
            InputDataset(
                namespace=export.namespace,
                name=export.name,
                facets={"cloudagent_export": CloudAgentExportDatasetFacet(**export.facets)},
            )
        ]
        outputs = []
        for table in written:
            output_facets: dict[str, Any] = {}
            if table.name.endswith("dial_status") and counts:  # keys new or changed by this load
                rows = counts["inserted"] + counts["updated"]
                output_facets["outputStatistics"] = statistics.OutputStatisticsOutputDatasetFacet(
                    rowCount=rows
                )
            outputs.append(
                OutputDataset(namespace=table.namespace, name=table.name, outputFacets=output_facets)
            )
        run_facets = {}
        if counts:
            run_facets["cloudagent_load"] = CloudAgentLoadRunFacet.of(request.request_id, counts)
        return OperatorLineage(inputs=inputs, outputs=outputs, run_facets=run_facets)
