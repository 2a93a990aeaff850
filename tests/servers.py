"""Start project servers (receiver, simulator) as real processes on loopback, and always stop them.

Processes are stopped by the PID we started (their own process group), also when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from cloudagent_etl.localstack import StartedProcess, answers, free_port, wait_until

__all__ = ["ServerProcess", "free_port", "run_server"]


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        """Signal the whole process group we started and wait for the leader to exit."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


@contextmanager
def run_server(
    args: Sequence[str],
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    health_path: str = "/healthz",
    timeout: float = 30,
) -> Iterator[ServerProcess]:
    """Run ``cloudagent-etl <args>`` listening on ``port``; yield once ``health_path`` answers."""
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cloudagent_etl.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    # The Popen stays ours (tests SIGKILL it and read its return code); the wait is the local stack's.
    started = StartedProcess(args[0], process.pid, psutil.Process(process.pid).create_time(), str(log_path))
    try:
        url = server.base_url + health_path
        wait_until(url, lambda: answers(url, lambda r: r.status_code < 500), [started], timeout, poll=0.05)
        yield server
    finally:
        server.kill()
