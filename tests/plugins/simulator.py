"""pytest fixtures that run the CloudAgent simulator as a real process on loopback.

- ``simulator`` (session scope): ``cloudagent-etl simulate`` on a free port with user ``test_user``, api key
  ``test-api-key-SECRET123``, campaigns ``Alpha,Beta,Gamma``, callback delay 0.2 s (other flags at their
  defaults: seed 42, 200 records per day, json-array delivery, 10 requests per minute). It yields a
  :class:`SimulatorHandle`: ``base_url``, ``endpoint_url``, ``user``, ``api_key``, ``campaigns`` and
  ``requests_log()``, ``ground_truth(unique_id)``, ``deliveries()``, ``wait_for_deliveries(unique_id, n)``,
  ``configure(**behaviour)``, ``reset()`` and ``log()`` (the server's output).
- ``fresh_simulator`` (function scope): the same process, reset before the test — logs, ground truth and
  rate-limit state cleared, pending deliveries cancelled, behaviour back to the start-up values. Use it in
  any test that counts requests, reads logs or changes the behaviour.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.servers import ServerProcess, free_port, run_server

SIMULATOR_USER = "test_user"
SIMULATOR_API_KEY = "test-api-key-SECRET123"
SIMULATOR_CAMPAIGNS = ("Alpha", "Beta", "Gamma")
SIMULATOR_CALLBACK_DELAY_S = 0.2
ENDPOINT = "/endpoint/dailer/data/preview/download"


@dataclass
class SimulatorHandle:
    """A running simulator and its control endpoints."""

    server: ServerProcess
    user: str = SIMULATOR_USER
    api_key: str = field(default=SIMULATOR_API_KEY, repr=False)
    campaigns: tuple[str, ...] = SIMULATOR_CAMPAIGNS
    startup_behaviour: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def endpoint_url(self) -> str:
        return self.base_url + ENDPOINT

    def _get(self, path: str) -> Any:
        response = httpx.get(self.base_url + path, timeout=10)
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.post(self.base_url + path, json=body or {}, timeout=10)
        response.raise_for_status()
        return response.json()

    def requests_log(self) -> list[dict[str, Any]]:
        return self._get("/_sim/requests")

    def ground_truth(self, unique_id: str) -> list[dict[str, str]]:
        return self._get(f"/_sim/ground-truth/{unique_id}")

    def deliveries(self) -> list[dict[str, Any]]:
        return self._get("/_sim/deliveries")

    def wait_for_deliveries(self, unique_id: str, count: int = 1, timeout: float = 10) -> list[dict]:
        """The delivery attempts for ``unique_id`` once ``count`` of them got a 2xx (fails at ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            attempts = [d for d in self.deliveries() if d["unique_id"] == unique_id]
            if sum(1 for d in attempts if d["status_code"] and 200 <= d["status_code"] < 300) >= count:
                return attempts
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} successful deliveries for {unique_id}: {attempts}")
            time.sleep(0.05)

    def configure(self, **behaviour: Any) -> dict[str, Any]:
        """Change the behaviour for later requests (``POST /_sim/config``); returns the whole behaviour."""
        return self._post("/_sim/config", behaviour)

    def reset(self) -> None:
        """Clear logs, ground truth and rate-limit state, and restore the start-up behaviour."""
        self._post("/_sim/reset")
        self.configure(**self.startup_behaviour)

    def log(self) -> str:
        return self.server.log()


@pytest.fixture(scope="session")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    port = free_port()
    args = [
        "simulate",
        "--port", str(port),
        "--user", SIMULATOR_USER,
        "--api-key", SIMULATOR_API_KEY,
        "--campaigns", ",".join(SIMULATOR_CAMPAIGNS),
        "--callback-delay-s", str(SIMULATOR_CALLBACK_DELAY_S),
    ]  # fmt: skip
    log_path = tmp_path_factory.mktemp("simulator") / "simulator.log"
    with run_server(args, port, log_path, health_path="/healthz") as server:
        handle = SimulatorHandle(server)
        handle.startup_behaviour = handle._get("/_sim/config")
        yield handle


@pytest.fixture
def fresh_simulator(simulator: SimulatorHandle) -> SimulatorHandle:
    simulator.reset()
    return simulator
