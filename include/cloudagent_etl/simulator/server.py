"""The CloudAgent simulator: an HTTP server that answers like CloudAgent and posts the data back later.

Endpoints:

- ``POST /endpoint/dailer/data/preview/download`` — the export request, validated in the order written in
  :mod:`~cloudagent_etl.simulator.contract`. Every answer is HTTP 200; the body says what happened.
- ``GET /healthz`` — ``{"status": "ok"}``.
- ``GET /_sim/requests`` — every API request in arrival order: ``arrived_at`` (unix time), ``account``
  (the ``userName`` sent, or ""), ``campaign_name``, ``outcome`` (accepted/error), ``message``, ``unique_id``.
- ``GET /_sim/ground-truth/{unique_id}`` — the exact records generated for an accepted request (404
  if unknown).
- ``GET /_sim/deliveries`` — every callback attempt: ``unique_id``, ``kind`` (primary/duplicate/late),
  ``attempt``, ``status_code`` or null, ``error`` or null, ``at``, ``callback_url`` with its last path
  segment (the receiver's token) replaced by ``***``.
- ``GET /_sim/config`` / ``POST /_sim/config`` — read / change the :class:`Behaviour` for later requests.
- ``POST /_sim/reset`` — clear the logs, the ground truth and the rate-limit state, and cancel pending
  deliveries (the behaviour is kept).

Rate limit: per account (the ``userName`` sent, "" when absent), a request is answered "Max limit exceeded"
when ``rate_limit_per_minute`` requests were already *admitted* in the last 60 s. Admitted means answered
with anything else — valid or not, every request counts; refused ones do not extend the block.

Delivery: ``callback_delay_s`` after acceptance the records are POSTed once (``primary``), then
``duplicate_deliveries`` identical copies, then — ``late_delay_s`` later, if set — one more identical copy.
Each delivery that does not get a 2xx is retried up to ``delivery_attempts`` attempts in all, waiting
``delivery_backoff_s`` and doubling. Deliveries run as asyncio tasks inside the server process.
The apiKey is never logged, and the callback URL only ever masked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cloudagent_etl.simulator import contract
from cloudagent_etl.simulator.data import DISPOSITIONS, MAX_RECORDS_PER_DAY, generate_records

logger = logging.getLogger(__name__)

DeliveryStyle = Literal["json-array", "json-object", "form"]
DELIVERY_STYLES: tuple[str, ...] = get_args(DeliveryStyle)
RATE_WINDOW_S = 60.0
DELIVERY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Behaviour:
    """What the simulator does with an accepted request; ``POST /_sim/config`` changes it."""

    delivery: DeliveryStyle = "json-array"
    callback_delay_s: float = 0.5
    duplicate_deliveries: int = 0
    never_deliver: bool = False
    late_delay_s: float | None = None
    records_per_day: int = 200
    delivery_attempts: int = 5
    delivery_backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if self.delivery not in DELIVERY_STYLES:
            raise ValueError(f"delivery must be one of {DELIVERY_STYLES}, not {self.delivery!r}")
        for name in ("callback_delay_s", "duplicate_deliveries", "records_per_day", "delivery_backoff_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.late_delay_s is not None and self.late_delay_s < 0:
            raise ValueError("late_delay_s must not be negative")
        if self.records_per_day > MAX_RECORDS_PER_DAY:
            raise ValueError(f"records_per_day must be at most {MAX_RECORDS_PER_DAY}")
        if self.delivery_attempts < 1:
            raise ValueError("delivery_attempts must be at least 1")

    def updated(self, changes: Mapping[str, Any]) -> Behaviour:
        """A copy with ``changes`` applied; ValueError names an unknown field or a wrongly typed value."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name, value in changes.items():
            if name not in fields:
                raise ValueError(f"unknown setting {name!r}; known: {sorted(fields)}")
            if name == "late_delay_s" and value is None:
                continue
            expected: tuple[type, ...] = {
                "delivery": (str,),
                "never_deliver": (bool,),
                "duplicate_deliveries": (int,),
                "records_per_day": (int,),
                "delivery_attempts": (int,),
            }.get(name, (int, float))
            if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
                raise ValueError(f"{name} has the wrong type: {value!r}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SimulatorSettings:
    """The simulated account (from the CLI flags) and the starting behaviour."""

    user: str
    api_key: str = field(repr=False)
    campaigns: tuple[str, ...]
    seed: int = 42
    rate_limit_per_minute: int = 10
    behaviour: Behaviour = field(default_factory=Behaviour)

    def __post_init__(self) -> None:
        if not self.user or not self.api_key:
            raise ValueError("the user and the api key must not be empty")
        if not self.campaigns:
            raise ValueError("at least one campaign is needed")
        if self.rate_limit_per_minute < 1:
            raise ValueError("rate_limit_per_minute must be at least 1")


def mask_callback_url(url: str) -> str:
    """The callback URL with its last path segment (the receiver's token), query and credentials hidden."""
    parts = urlsplit(url)
    head = parts.path.rstrip("/").rpartition("/")[0]
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, f"{head}/***", "", ""))


def callback_body(style: DeliveryStyle, unique_id: str, records: list[dict[str, str]]) -> tuple[bytes, str]:
    """The callback request body and its content type, in the configured style."""
    if style == "json-array":
        return json.dumps(records).encode(), "application/json"
    if style == "json-object":
        return json.dumps({"uniqueId": unique_id, "data": records}).encode(), "application/json"
    return urlencode({"data": json.dumps(records)}).encode(), "application/x-www-form-urlencoded"


class SimulatorState:
    """Logs, ground truth, rate-limit windows and pending deliveries of one server process.

    Everything runs on the server's event loop; no check-then-record spans an ``await``, so no lock is needed.
    """

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.behaviour = settings.behaviour
        self.requests: list[dict[str, Any]] = []
        self.ground_truth: dict[str, list[dict[str, str]]] = {}
        self.deliveries: list[dict[str, Any]] = []
        self._admitted: dict[str, deque[float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.client: httpx.AsyncClient | None = None

    def admit(self, account: str, now: float) -> bool:
        """Count a request against ``account``'s rolling window, unless that window is already full."""
        window = self._admitted.setdefault(account, deque())
        while window and window[0] <= now - RATE_WINDOW_S:
            window.popleft()
        if len(window) >= self.settings.rate_limit_per_minute:
            return False
        window.append(now)
        return True

    def schedule(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_deliveries(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def reset(self) -> None:
        self.cancel_deliveries()
        self.requests.clear()
        self.ground_truth.clear()
        self.deliveries.clear()
        self._admitted.clear()


async def _post_with_retries(
    state: SimulatorState,
    kind: str,
    unique_id: str,
    url: str,
    body: bytes,
    content_type: str,
    behaviour: Behaviour,
) -> None:
    assert state.client is not None
    masked = mask_callback_url(url)
    token = urlsplit(url).path.rstrip("/").rpartition("/")[2]
    for attempt in range(1, behaviour.delivery_attempts + 1):
        status_code: int | None = None
        error: str | None = None
        try:
            response = await state.client.post(url, content=body, headers={"Content-Type": content_type})
            status_code = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}".replace(url, masked)
            if token:
                error = error.replace(token, "***")
        state.deliveries.append(
            {
                "unique_id": unique_id,
                "kind": kind,
                "attempt": attempt,
                "status_code": status_code,
                "error": error,
                "at": time.time(),
                "callback_url": masked,
            }
        )
        logger.info(
            "callback %s uniqueId=%s to %s attempt=%d status=%s error=%s",
            kind, unique_id, masked, attempt, status_code, error,
        )  # fmt: skip
        if status_code is not None and 200 <= status_code < 300:
            return
        if attempt < behaviour.delivery_attempts:
            await asyncio.sleep(behaviour.delivery_backoff_s * 2 ** (attempt - 1))
    logger.warning(
        "callback %s uniqueId=%s to %s gave up after %d attempts", kind, unique_id, masked, attempt
    )


async def _deliver(
    state: SimulatorState, unique_id: str, url: str, records: list[dict[str, str]], behaviour: Behaviour
) -> None:
    body, content_type = callback_body(behaviour.delivery, unique_id, records)
    await asyncio.sleep(behaviour.callback_delay_s)
    await _post_with_retries(state, "primary", unique_id, url, body, content_type, behaviour)
    for _ in range(behaviour.duplicate_deliveries):
        await _post_with_retries(state, "duplicate", unique_id, url, body, content_type, behaviour)
    if behaviour.late_delay_s is not None:
        await asyncio.sleep(behaviour.late_delay_s)
        await _post_with_retries(state, "late", unique_id, url, body, content_type, behaviour)


def _json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; anything else counts as an empty body (every key missing)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _text_field(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    return value if isinstance(value, str) else ""


def create_app(settings: SimulatorSettings) -> FastAPI:
    """The simulator's ASGI app; its state lives on ``app.state.simulator``."""
    state = SimulatorState(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_S) as client:
            state.client = client
            yield
            state.cancel_deliveries()

    app = FastAPI(title="CloudAgent simulator", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.simulator = state

    @app.post(contract.ENDPOINT)
    async def export_dial_status(request: Request) -> JSONResponse:
        body = _json_object(await request.body())
        arrived_at, now = time.time(), time.monotonic()
        account, campaign = _text_field(body, "userName"), _text_field(body, "campaignName")
        entry: dict[str, Any] = {"arrived_at": arrived_at, "account": account, "campaign_name": campaign}
        state.requests.append(entry)

        if not state.admit(account, now):
            entry.update(outcome="error", message=contract.MAX_LIMIT_EXCEEDED, unique_id="")
            logger.info("refused request account=%s: %s", account, contract.MAX_LIMIT_EXCEEDED)
            return JSONResponse(contract.rate_limited_body())
        try:
            export = contract.validate_export_request(
                body,
                request.headers.get("apiKey"),
                user_name=settings.user,
                api_key=settings.api_key,
                campaigns=settings.campaigns,
                dispositions=DISPOSITIONS,
            )
        except contract.InvalidRequest as exc:
            entry.update(outcome="error", message=exc.message, unique_id="")
            logger.info("rejected request account=%s campaign=%s: %s", account, campaign, exc.message)
            return JSONResponse(contract.error_body(exc.message))

        unique_id = uuid.uuid4().hex
        behaviour = state.behaviour
        entry.update(outcome="accepted", message=contract.ACCEPTED_MESSAGE, unique_id=unique_id)
        records = await asyncio.to_thread(
            generate_records,
            export.campaign_name,
            export.window_start,
            export.window_end,
            seed=settings.seed,
            records_per_day=behaviour.records_per_day,
            sortby=export.sortby,
            status=export.status,
            dialstatus=export.dialstatus,
            dispositions=export.dispositions,
        )
        state.ground_truth[unique_id] = records
        logger.info(
            "accepted uniqueId=%s campaign=%s window=[%s, %s) sortby=%s records=%d callback=%s",
            unique_id, export.campaign_name, export.window_start, export.window_end, export.sortby,
            len(records), mask_callback_url(export.callback_url),
        )  # fmt: skip
        if not behaviour.never_deliver:
            state.schedule(_deliver(state, unique_id, export.callback_url, records, behaviour))
        return JSONResponse(contract.accepted_body(unique_id))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/_sim/requests")
    async def requests_log() -> list[dict[str, Any]]:
        return state.requests

    @app.get("/_sim/ground-truth/{unique_id}")
    async def ground_truth(unique_id: str) -> JSONResponse:
        if unique_id not in state.ground_truth:
            return JSONResponse({"detail": f"unknown uniqueId {unique_id!r}"}, status_code=404)
        return JSONResponse(state.ground_truth[unique_id])

    @app.get("/_sim/deliveries")
    async def deliveries() -> list[dict[str, Any]]:
        return state.deliveries

    @app.get("/_sim/config")
    async def get_config() -> dict[str, Any]:
        return dataclasses.asdict(state.behaviour)

    @app.post("/_sim/config")
    async def set_config(request: Request) -> JSONResponse:
        try:
            changes = json.loads(await request.body())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object")
            state.behaviour = state.behaviour.updated(changes)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        return JSONResponse(dataclasses.asdict(state.behaviour))

    @app.post("/_sim/reset")
    async def reset() -> dict[str, str]:
        state.reset()
        return {"status": "ok"}

    return app
