"""Our own servers (``cloudagent-etl receiver`` / ``simulate``) as real processes on loopback.

One way to start them for the local stack, the demo, the test fixtures and the benchmarks: each runs in
a process group of its own, is ready once ``/healthz`` answers 200, and is stopped by its process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from cloudagent_dev.processes import (
    LOOPBACK,
    StartedProcess,
    answers,
    exit_code,
    free_port,
    start_process,
    stop_processes,
    wait_until,
)


@dataclass
class ServerProcess:
    """A running server: the recorded process, its URL, and (once stopped) its exit code."""

    started: StartedProcess
    base_url: str
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.started.pid

    @property
    def log_path(self) -> Path:
        return Path(self.started.log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        """Signal the server's process group, wait for the leader, keep its exit code (``-sig`` if killed)."""
        if self.started.process() is None and self.returncode is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.pid, sig)
        try:
            self.returncode = exit_code(self.started, timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.returncode = exit_code(self.started, timeout)


def start_server(
    name: str,
    args: Sequence[str],
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
    command_prefix: Sequence[str] = (),
) -> ServerProcess:
    """Start ``cloudagent-etl <args> --host 127.0.0.1 --port <port>``; return it once ``/healthz`` answers.

    ``command_prefix`` runs it under another command that ends by exec-ing it (so the PID stays the
    server's), e.g. ``prlimit --nofile=256 --`` or ``unshare --mount ...``.
    """
    command = [
        *command_prefix,
        *(sys.executable, "-m", "cloudagent_etl.cli", *args, "--host", LOOPBACK, "--port", str(port)),
    ]
    started = start_process(name, command, {**os.environ, **(env or {})}, log_path)
    server = ServerProcess(started, f"http://{LOOPBACK}:{port}")
    try:
        url = f"{server.base_url}/healthz"
        wait_until(f"{name} on {server.base_url}", lambda: answers(url), [started], timeout, poll=0.05)
    except BaseException:
        stop_processes([started])
        raise
    return server


@contextmanager
def run_server(
    name: str,
    args: Sequence[str],
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
    command_prefix: Sequence[str] = (),
) -> Iterator[ServerProcess]:
    """:func:`start_server` for the duration of a ``with`` block; stopped on every way out."""
    server = start_server(name, args, port, log_path, env, timeout, command_prefix)
    try:
        yield server
    finally:
        server.kill()


@contextmanager
def run_receiver(
    db_url: str,
    data_dir: Path,
    *,
    workers: int = 1,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    command_prefix: Sequence[str] = (),
) -> Iterator[ServerProcess]:
    """``cloudagent-etl receiver`` on ``db_url`` (spool under ``data_dir``, no fixed-URL token unless
    ``env`` sets ``CLOUDAGENT_CALLBACK_TOKEN``) on ``port`` or a free one (``command_prefix``: see
    :func:`start_server`)."""
    port = port or free_port()
    full_env = {
        "CLOUDAGENT_DB_URL": db_url,
        "CLOUDAGENT_DATA_DIR": str(data_dir),
        "CLOUDAGENT_CALLBACK_TOKEN": "",
        **(env or {}),
    }
    log_path = data_dir / f"receiver-{port}-{time.monotonic_ns()}.log"
    args = ["receiver", "--workers", str(workers)]
    with run_server("receiver", args, port, log_path, full_env, command_prefix=command_prefix) as server:
        yield server
