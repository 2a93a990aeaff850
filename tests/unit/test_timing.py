"""The tests' one deadline (tests/timing.py): read from the environment, and waits that end on a condition."""

from __future__ import annotations

import importlib
import itertools
import time

import pytest

import tests.timing


def test_the_deadline_comes_from_its_variable_and_must_be_a_positive_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        monkeypatch.setenv("CLOUDAGENT_TEST_DEADLINE_S", "300")
        assert (importlib.reload(tests.timing).DEADLINE_S, tests.timing.DEADLINE_MS) == (300.0, 300_000.0)
        monkeypatch.delenv("CLOUDAGENT_TEST_DEADLINE_S")
        assert importlib.reload(tests.timing).DEADLINE_S == tests.timing.DEFAULT_DEADLINE_S == 120.0
        for wrong in ("0", "-5", "soon", "nan"):
            monkeypatch.setenv("CLOUDAGENT_TEST_DEADLINE_S", wrong)
            with pytest.raises(ValueError, match="must be a positive number of seconds"):
                importlib.reload(tests.timing)
    finally:
        monkeypatch.undo()
        importlib.reload(tests.timing)


def test_wait_until_returns_the_conditions_value_as_soon_as_it_holds() -> None:
    polls = itertools.count(1)
    began = time.monotonic()
    assert (
        tests.timing.wait_until("the third poll", lambda: next(polls) >= 3 and "done", interval_s=0.01)
        == "done"
    )
    assert next(polls) == 4  # polled exactly three times
    assert time.monotonic() - began < tests.timing.TIMER_SLACK_S


def test_wait_until_fails_naming_what_it_waited_for() -> None:
    with pytest.raises(
        AssertionError, match=r"the impossible: still not so after 0\.\d s \(this wait's own limit: 0\.2 s\)"
    ):
        tests.timing.wait_until("the impossible", lambda: None, timeout_s=0.2, interval_s=0.01)


def test_own_time_counts_blocking_but_not_the_wait_for_a_cpu() -> None:
    with tests.timing.own_time() as took:
        time.sleep(0.2)  # blocking, as a top-level network call would be: the code's own time
    assert 0.0 <= took.cpu_wait_s <= took.wall_s
    # Most of the 0.2 s counts: the sleep is not subtracted. Not all of it on a busy machine: the kernel
    # counted 0.02 s of run-queue wait inside a 0.202 s block at load ~17 (its wake-up and timer slack).
    assert took.own_s >= 0.15, took
    assert str(took).endswith("waiting for a CPU)")
