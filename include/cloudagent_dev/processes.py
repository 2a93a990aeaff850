"""Processes we start (servers, Airflow components): each in its own process group, recorded, and stopped
by that group, never by name.

Shared by the local stack (``make airflow``), ``make demo``, the test fixtures and the benchmarks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

LOOPBACK = "127.0.0.1"
#: The Popen of each process this interpreter started, by PID, until its exit status is collected: so
#: that ``exit_code`` can report it, and no child is left a zombie or warned about as still running.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class StartedProcess:
    """A process we started as the leader of its own process group (so ``pid`` is also its group id)."""

    name: str
    pid: int
    created: float  # psutil's create_time: tells our process from a later one that reuses the PID
    log_path: str

    def process(self) -> psutil.Process | None:
        """The live process, or None once it exited (a zombie counts as exited)."""
        try:
            process = psutil.Process(self.pid)
            if process.create_time() != self.created or process.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        return process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def start_process(
    name: str, command: Sequence[str], env: Mapping[str, str], log_path: Path
) -> StartedProcess:
    """Start ``command`` detached (new session: its own process group), output appended to ``log_path``."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603  (our own CLI or the venv's airflow, fixed arguments)
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    _children[process.pid] = process
    return StartedProcess(name, process.pid, psutil.Process(process.pid).create_time(), str(log_path))


def exit_code(started: StartedProcess, timeout: float) -> int | None:
    """Wait up to ``timeout`` for a process this interpreter started; its exit code (``-N``: signal N).

    None when it is not our child. Raises ``subprocess.TimeoutExpired`` if it is still running.
    """
    process = _children.get(started.pid)
    if process is None:
        return None
    code = process.wait(timeout)
    del _children[started.pid]
    return code


def _members(groups: Iterable[int]) -> list[psutil.Process]:
    """Live (non-zombie) processes whose process group is one of ``groups``."""
    wanted, found = set(groups), []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) in wanted and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def still_running(started: Iterable[StartedProcess]) -> list[psutil.Process]:
    """What is still running of ``started``: each leader and anything else in its process group."""
    started = list(started)
    alive = {process.pid: process for process in _members(s.pid for s in started)}
    for item in started:
        if (process := item.process()) is not None:
            alive.setdefault(process.pid, process)
    return list(alive.values())


def _signal_groups(groups: Iterable[int], sig: int) -> None:
    for group in groups:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            continue


def stop_processes(started: Sequence[StartedProcess], timeout: float = 30) -> list[str]:
    """SIGTERM each started process group, SIGKILL what is left after ``timeout``; return what survived.

    Airflow runs each task in a process group of its own under the scheduler; those descendants are
    collected first and stopped the same way.
    """
    live = [item for item in started if item.process() is not None]
    groups = {item.pid for item in live}
    for item in live:
        process = item.process()
        try:
            children = process.children(recursive=True) if process else []
        except psutil.Error:
            children = []
        for child in children:
            try:
                groups.add(os.getpgid(child.pid))
            except ProcessLookupError:
                continue
    _signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _members(groups) and time.monotonic() < deadline:
        _reap()
        time.sleep(0.2)
    if _members(groups):
        _signal_groups(groups, signal.SIGKILL)
        time.sleep(0.5)
    _reap()
    survivors = {p.pid: p for p in [*_members(groups), *still_running(started)]}
    return [f"{pid} {_describe(p)}" for pid, p in sorted(survivors.items())]


def _reap() -> None:
    """Collect the exit status of our own children that exited (the demo and tests start servers)."""
    for pid, process in list(_children.items()):
        if process.poll() is not None:
            del _children[pid]


def _describe(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:120]
    except psutil.Error:
        return "(gone)"


def log_tail(log_path: str | Path, lines: int = 30) -> str:
    return "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-lines:])


def wait_until(
    what: str, ready: Callable[[], bool], started: Sequence[StartedProcess], timeout: float, poll: float = 0.2
) -> None:
    """Poll ``ready()`` until true; fail early, with the log's tail, if one of ``started`` exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        for item in started:
            if item.process() is None:
                raise RuntimeError(
                    f"{item.name} exited; last lines of {item.log_path}:\n{log_tail(item.log_path)}"
                )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(poll)


def answers(url: str, ok: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200) -> bool:
    try:
        return ok(httpx.get(url, timeout=2))
    except httpx.HTTPError:
        return False
