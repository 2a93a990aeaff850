"""How long the tests wait, in one place: ``CLOUDAGENT_TEST_DEADLINE_S`` and ``TIMER_SLACK_S``.

A test that waits for a state (a page loaded, a delivery made, a row written, a process gone) polls for
that condition and stops as soon as it holds: never a fixed pause, never a library's own default
(Playwright's 30 s ran out on CI at load average ~14). The one deadline for those waits is
``CLOUDAGENT_TEST_DEADLINE_S`` (default 120 s): it only bounds how long a real failure takes to be
reported, so it is generous, and raising it never makes a test weaker.

A bound on how long our own code takes to act (a timeout that must fire, a limiter that must wake) is a
different thing: it proves behaviour, so it stays tight, and only allows ``TIMER_SLACK_S`` for a busy
machine running our timer late. Each bound that uses it names the wrong behaviour it rules out, which
is always further away than that slack.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

T = TypeVar("T")

DEFAULT_DEADLINE_S: Final = 120.0


def _deadline_s() -> float:
    text = os.environ.get("CLOUDAGENT_TEST_DEADLINE_S", "").strip()
    if not text:
        return DEFAULT_DEADLINE_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"CLOUDAGENT_TEST_DEADLINE_S must be a positive number of seconds, not {text!r}")
    return value


#: The deadline of every wait on a condition (seconds), from ``CLOUDAGENT_TEST_DEADLINE_S``.
DEADLINE_S: Final = _deadline_s()
#: The same in milliseconds, as Playwright takes it.
DEADLINE_MS: Final = DEADLINE_S * 1000
#: How late a timer of the code under test may fire, or its effect be noticed, on a busy 2-core machine
#: (a load average of ~14 was seen on CI). Only for bounds whose wrong behaviour (the default the
#: setting under test replaces, a poll interval, a hang) is further off than this.
TIMER_SLACK_S: Final = 3.0


def wait_until(
    what: str, condition: Callable[[], T], *, timeout_s: float | None = None, interval_s: float = 0.05
) -> T:
    """Poll ``condition`` until it returns something true, and return that; fail naming ``what`` once
    ``timeout_s`` (default: the deadline) has passed without it."""
    limit = DEADLINE_S if timeout_s is None else timeout_s
    began = time.monotonic()
    while True:
        result = condition()
        if result:
            return result
        waited = time.monotonic() - began
        if waited > limit:
            source = "CLOUDAGENT_TEST_DEADLINE_S" if timeout_s is None else "this wait's own limit"
            raise AssertionError(f"{what}: still not so after {waited:.1f} s ({source}: {limit:g} s)")
        time.sleep(interval_s)


#: What a worker process of the tests prints once it is ready, and then waits for on its stdin.
READY, GO = "ready", "go"


def start_together(processes: list[subprocess.Popen[bytes]], what: str) -> float:
    """A start barrier for worker processes (``tests/integration/*_worker.py``): wait until each has
    printed ``READY`` (set up, everything imported), then tell them all ``GO`` at once; the wall-clock
    time of the go. A fixed start time guessed ahead would be missed on a busy machine."""
    deadline = time.monotonic() + DEADLINE_S
    for process in processes:
        assert process.stdout is not None
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([process.stdout], [], [], max(0.0, remaining))
        line = process.stdout.readline().decode().strip() if readable else ""
        assert line == READY, f"{what} {process.pid} not ready within {DEADLINE_S:g} s: {line!r}"
    go_at = time.time()
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(f"{GO}\n".encode())
        process.stdin.flush()
    return go_at


def wait_for_go() -> None:
    """In a worker process: say ``READY`` and wait for ``GO`` (see :func:`start_together`)."""
    print(READY, flush=True)
    line = sys.stdin.readline().strip()
    if line != GO:
        raise SystemExit(f"expected {GO!r} on stdin, got {line!r}")


def seconds_waiting_for_a_cpu() -> float:
    """How long this thread has been runnable but waiting for a CPU, from the kernel's schedstat (Linux):
    the machine's business, not the code's. 0 where the kernel does not say (a bound is then on wall time)."""
    schedstat = Path("/proc/thread-self/schedstat")
    if not schedstat.exists():
        return 0.0
    _on_cpu_ns, waiting_ns, _slices = (int(field) for field in schedstat.read_text().split())
    return waiting_ns / 1e9


@dataclass
class OwnTime:
    """Wall time of a block, and the part of it this thread spent waiting for a CPU."""

    wall_s: float = 0.0
    cpu_wait_s: float = 0.0

    @property
    def own_s(self) -> float:
        """The code's own time: its computing and whatever it blocked on (a sleep, a network call), without
        the queue of a busy machine. A bound on it proves the code's cost, whatever the load."""
        return self.wall_s - self.cpu_wait_s

    def __str__(self) -> str:
        waiting = f"{self.cpu_wait_s:.2f} s waiting for a CPU"
        return f"{self.own_s:.2f} s of its own ({self.wall_s:.2f} s wall, {waiting})"


@contextmanager
def own_time() -> Iterator[OwnTime]:
    """Measure a block run in this thread: ``with own_time() as took: ...; assert took.own_s < 1.0, took``."""
    took = OwnTime()
    waited, started = seconds_waiting_for_a_cpu(), time.perf_counter()
    try:
        yield took
    finally:
        took.wall_s = time.perf_counter() - started
        took.cpu_wait_s = seconds_waiting_for_a_cpu() - waited
