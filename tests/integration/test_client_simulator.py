"""CloudAgentClient and RateLimiter against the simulator process over real HTTP on loopback.

Our own validation refuses most of the documented error cases before sending (an empty userName, a
callBackUrl without http...). To have the simulator answer every one of them, ``EditingTransport`` sends
the request over real HTTP after editing it the way a client bug or a proxy could (drop or misspell a
key, blank a value); the answer then goes through the client's real mapping.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from cloudagent_dev.processes import free_port
from cloudagent_etl.api import CloudAgentClient, DialStatusRequest, RateLimiter, RetryPolicy
from cloudagent_etl.api.limiter import api_call_log
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.errors import (
    ApiError,
    AuthenticationFailedError,
    InvalidApiKeyError,
    InvalidCallbackUrlError,
    InvalidCampaignNameError,
    InvalidUserNameError,
    NetworkError,
    RateLimitedError,
)
from cloudagent_etl.settings import ApiSettings, Secret
from tests.checks import Pause, assert_each_pause_ends_when_a_call_leaves_the_window
from tests.fixtures.simulator import SimulatorHandle
from tests.timing import DEADLINE_S, TIMER_SLACK_S, start_together

CALLBACK = "http://127.0.0.1:9/callbacks/dial-status/req-1/tok-CALLBACK-SECRET"
WRONG_KEY = "wrong-key-SECRET456"
REPO_ROOT = Path(__file__).resolve().parents[2]

BodyEdit = Callable[[dict[str, Any]], None]


def rename(old: str, new: str) -> BodyEdit:
    def edit(body: dict[str, Any]) -> None:
        body[new] = body.pop(old)

    return edit


def drop(key: str) -> BodyEdit:
    return lambda body: body.pop(key)


def set_value(key: str, value: str) -> BodyEdit:
    return lambda body: body.__setitem__(key, value)


class EditingTransport(httpx.BaseTransport):
    """Real HTTP, after editing the JSON body and replacing (value) or dropping (None) headers."""

    def __init__(self, edit: BodyEdit | None = None, headers: dict[str, str | None] | None = None) -> None:
        self.edit = edit
        self.headers = {name.lower(): value for name, value in (headers or {}).items()}
        self.network = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if self.edit is not None:
            self.edit(body)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.headers}
        headers |= {k: v for k, v in self.headers.items() if v is not None}
        headers.pop("content-length")
        edited = httpx.Request(request.method, request.url, headers=headers, json=body)
        return self.network.handle_request(edited)

    def close(self) -> None:
        self.network.close()


@dataclass
class ErrorCase:
    name: str
    expected: type[ApiError]
    edit: BodyEdit | None = None
    headers: dict[str, str | None] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)


IN_BODY = {"api_key_in": "body"}
OTHER_USER = {"user_name": "someone_else"}

# The sixteen documented cases (docs/cloudagent-contract.md); the apiKey ones in the header and in the body.
ERROR_CASES = [
    ErrorCase("apiKey header missing", InvalidApiKeyError, headers={"apiKey": None}),
    ErrorCase("apiKey body key missing", InvalidApiKeyError, drop("apiKey"), settings=IN_BODY),
    ErrorCase("apiKey header misspelt", InvalidApiKeyError, headers={"apiKey": None, "api-key": "x"}),
    ErrorCase("apiKey body key misspelt", InvalidApiKeyError, rename("apiKey", "apikey"), settings=IN_BODY),
    ErrorCase("apiKey header value empty", InvalidApiKeyError, headers={"apiKey": ""}),
    ErrorCase("apiKey body value blank", InvalidApiKeyError, set_value("apiKey", " "), settings=IN_BODY),
    ErrorCase("apiKey value wrong", AuthenticationFailedError, settings={"api_key": Secret(WRONG_KEY)}),
    ErrorCase("userName value wrong", AuthenticationFailedError, settings=OTHER_USER, request=OTHER_USER),
    ErrorCase("userName key missing", InvalidUserNameError, drop("userName")),
    ErrorCase("userName key misspelt", InvalidUserNameError, rename("userName", "username")),
    ErrorCase("userName value empty", InvalidUserNameError, set_value("userName", "")),
    ErrorCase("campaignName key missing", InvalidCampaignNameError, drop("campaignName")),
    ErrorCase("campaignName key misspelt", InvalidCampaignNameError, rename("campaignName", "campaignname")),
    ErrorCase("campaignName value empty", InvalidCampaignNameError, set_value("campaignName", "")),
    ErrorCase("campaignName value unknown", InvalidCampaignNameError, request={"campaign_name": "NoSuch"}),
    ErrorCase("callBackUrl key missing", InvalidCallbackUrlError, drop("callBackUrl")),
    ErrorCase("callBackUrl key misspelt", InvalidCallbackUrlError, rename("callBackUrl", "callbackUrl")),
    ErrorCase("callBackUrl value empty", InvalidCallbackUrlError, set_value("callBackUrl", "")),
    ErrorCase(
        "callBackUrl value without http", InvalidCallbackUrlError, set_value("callBackUrl", "ftp://x/cb")
    ),
]


@pytest.fixture
def sim(fresh_simulator: SimulatorHandle) -> SimulatorHandle:
    """A reset simulator that accepts requests but does not post callbacks (nothing listens for them)."""
    fresh_simulator.configure(never_deliver=True)
    return fresh_simulator


def settings_for(sim: SimulatorHandle, **overrides: Any) -> ApiSettings:
    fields: dict[str, Any] = {"user_name": sim.user, "api_key": Secret(sim.api_key), "base_url": sim.base_url}
    return ApiSettings(**{**fields, **overrides})


def make_request(**overrides: Any) -> DialStatusRequest:
    fields: dict[str, Any] = {
        "campaign_name": "Alpha",
        "user_name": "test_user",
        "from_date": datetime(2026, 1, 1, 18, 30, tzinfo=UTC),
        "to_date": datetime(2026, 1, 2, 18, 29, 59, tzinfo=UTC),
        "callback_url": CALLBACK,
    }
    return DialStatusRequest(**{**fields, **overrides})


def no_wait_policy(max_attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(max_attempts=max_attempts, base_delay_s=0.0, rate_limited_min_delay_s=0.0)


def secret_free(*texts: str, secrets: tuple[str, ...]) -> bool:
    return not any(secret in text for text in texts for secret in secrets)


def error_texts(error: BaseException) -> Iterator[str]:
    """str/repr of the error and of everything chained to it."""
    current: BaseException | None = error
    while current is not None:
        yield str(current)
        yield repr(current)
        current = current.__cause__ or current.__context__


@pytest.mark.parametrize("api_key_in", ["header", "body"])
def test_success_returns_the_unique_id_the_simulator_issued(sim: SimulatorHandle, api_key_in: str) -> None:
    with CloudAgentClient(settings_for(sim, api_key_in=api_key_in)) as client:
        unique_id = client.request_export(make_request())
    (logged,) = sim.requests_log()
    assert logged["outcome"] == "accepted"
    assert logged["unique_id"] == unique_id
    assert (logged["account"], logged["campaign_name"]) == ("test_user", "Alpha")
    assert len(sim.ground_truth(unique_id)) > 0


@pytest.mark.parametrize("case", ERROR_CASES, ids=[case.name for case in ERROR_CASES])
def test_each_documented_error_over_http_raises_its_exception_once_without_leaking_the_key(
    sim: SimulatorHandle, case: ErrorCase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_for(sim, **case.settings)
    request = make_request(**case.request)
    transport = EditingTransport(case.edit, case.headers)
    with CloudAgentClient(settings, transport=transport, retry=no_wait_policy()) as client:
        with pytest.raises(ApiError) as info:
            client.request_export(request)
        client_repr = repr(client)
    assert type(info.value) is case.expected
    (logged,) = sim.requests_log()  # terminal: sent once, never retried
    assert logged["message"] == case.expected.api_message
    assert secret_free(
        *error_texts(info.value),
        caplog.text,
        client_repr,
        repr(settings),
        repr(request),
        secrets=(sim.api_key, WRONG_KEY, "tok-CALLBACK-SECRET"),
    )


def test_max_limit_exceeded_is_retried_then_raised(
    sim: SimulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with CloudAgentClient(settings_for(sim), retry=no_wait_policy(max_attempts=2)) as client:
        unique_ids = {client.request_export(make_request()) for _ in range(10)}
        with pytest.raises(RateLimitedError) as info:
            client.request_export(make_request())
    assert len(unique_ids) == 10
    outcomes = [(entry["outcome"], entry["message"]) for entry in sim.requests_log()]
    assert outcomes[10:] == [("error", "Max limit exceeded")] * 2
    assert secret_free(*error_texts(info.value), caplog.text, secrets=(sim.api_key,))


def test_unreachable_server_is_a_network_error_after_every_attempt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = ApiSettings(
        user_name="test_user", api_key=Secret("k-SECRET789"), base_url=f"http://127.0.0.1:{free_port()}"
    )
    with CloudAgentClient(settings, retry=no_wait_policy()) as client, pytest.raises(NetworkError) as info:
        client.request_export(make_request())
    assert "could not be reached" in str(info.value)
    assert caplog.text.count("outcome=NetworkError") == 3
    assert secret_free(*error_texts(info.value), caplog.text, secrets=("k-SECRET789",))


# ---------------------------------------------------------------------------------------------- limiter

# The one limiter test in real time (60 s windows, against the simulator's own count); the others use
# short windows. 15 calls from 3 processes: 10 at once, the other 5 exactly one window later.
TOTAL_CALLS = 15
WORKERS = 3
IDEAL_S = 60.0


def busiest_minute(arrivals: list[float]) -> int:
    """The most arrivals in any rolling 60 s window [t, t + 60)."""
    return max(sum(1 for other in arrivals if start <= other < start + 60.0) for start in arrivals)


@pytest.mark.slow
def test_processes_sharing_the_limiter_never_exceed_ten_calls_per_minute(
    sim: SimulatorHandle, pg_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "CLOUDAGENT_API_BASE_URL": sim.base_url,
        "CLOUDAGENT_API_USER": sim.user,
        "CLOUDAGENT_API_KEY": sim.api_key,
    }
    shares = [TOTAL_CALLS // WORKERS + (1 if i < TOTAL_CALLS % WORKERS else 0) for i in range(WORKERS)]
    workers = []
    for index, calls in enumerate(shares):
        log_path = tmp_path / f"worker-{index}.log"
        with log_path.open("wb") as log:
            command = [sys.executable, "-m", "tests.integration.limiter_worker", "--db-url", pg_url]
            command += ["--calls", str(calls), "--name", f"worker-{index}"]
            pipe = subprocess.PIPE
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=pipe, stdout=pipe, stderr=log)
        workers.append((process, log_path))
    lines = []
    try:
        start_at = start_together([process for process, _ in workers], "limiter worker")  # all up and set up
        for process, log_path in workers:
            stdout, _ = process.communicate(timeout=IDEAL_S + DEADLINE_S)
            assert process.returncode == 0, log_path.read_text()
            lines += [json.loads(line) for line in stdout.decode().splitlines()]
    finally:
        for process, _ in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
    results = [line for line in lines if "unique_id" in line]
    pauses = [Pause(**line["pause"]) for line in lines if "pause" in line]

    log = sim.requests_log()
    arrivals = sorted(entry["arrived_at"] for entry in log)
    assert len(results) == len(log) == TOTAL_CALLS
    assert [entry for entry in log if entry["message"] == "Max limit exceeded"] == []
    assert busiest_minute(arrivals) == 10
    # The first 10 went without waiting for the limiter (seconds apart at most on a loaded machine), the
    # 11th only once the first left the window.
    assert arrivals[9] - arrivals[0] < 10.0
    assert arrivals[10] - arrivals[0] >= IDEAL_S
    # Every pause the limiters asked for ends exactly as an admitted call leaves their window (60 s and the
    # safety margin): the 5 late calls waited for no fixed pause and no longer than needed.
    engine = create_db_engine(pg_url)
    window_s = RateLimiter(engine, sim.user).effective_window_s
    with engine.connect() as conn:
        calls = api_call_log.c
        admitted = list(conn.scalars(select(calls.called_at).where(calls.account == sim.user)))
    engine.dispose()
    assert len(admitted) == TOTAL_CALLS
    assert pauses, "no call paused: the 11th was asked for within the first minute and must have"
    assert_each_pause_ends_when_a_call_leaves_the_window(pauses, admitted, window_s)
    batch_s = arrivals[-1] - arrivals[0]  # the schedule starts with the first call, not process start-up
    late_s = arrivals[0] - start_at
    gap_s = min(later - earlier for earlier, later in zip(arrivals, arrivals[10:], strict=False))
    print(f"{TOTAL_CALLS} calls, {WORKERS} processes: first arrival {late_s:+.3f}s after the go,")
    print(f"batch {batch_s:.3f}s,")
    print(f"closest two arrivals 10 calls apart: {gap_s:.3f}s")
    # The last call left when the 5th admitted one left the window, give or take a busy machine's wake-up.
    assert IDEAL_S <= batch_s <= (arrivals[4] - arrivals[0]) + window_s + TIMER_SLACK_S
