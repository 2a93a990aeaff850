"""RateLimiter on real SQLite and PostgreSQL: exact waits, a rolling window that is never exceeded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, insert, select

from cloudagent_etl.api import CloudAgentClient, DialStatusRequest, RateLimiter, RetryPolicy
from cloudagent_etl.api.limiter import api_call_log, rate_limit_accounts
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.errors import ConfigurationError
from cloudagent_etl.settings import ApiSettings, Secret
from tests.checks import Pause, assert_each_pause_ends_when_a_call_leaves_the_window
from tests.timing import DEADLINE_S

# A small budget so that tests take seconds: 3 calls per rolling 1.5 s.
PER_WINDOW = 3
WINDOW_S = 1.5
MARGIN_S = 0.1
EFFECTIVE_WINDOW_S = WINDOW_S + MARGIN_S


@dataclass
class Pauses:
    """The limiter's ``sleep``: records every pause it asks for, then really sleeps."""

    taken: list[Pause] = field(default_factory=list)
    _attempt_began: float = 0.0

    def acquire(self, limiter: RateLimiter, purpose: str | None = None) -> float:
        self._attempt_began = time.time()
        return limiter.acquire(purpose)

    def __call__(self, seconds: float) -> None:
        self.taken.append(Pause(self._attempt_began, time.time(), seconds))
        time.sleep(seconds)
        self._attempt_began = time.time()


def assert_each_pause_ends_when_a_logged_call_leaves_the_window(
    pauses: list[Pause], times: list[float]
) -> None:
    assert_each_pause_ends_when_a_call_leaves_the_window(pauses, times, EFFECTIVE_WINDOW_S)


@pytest.fixture
def pauses() -> Pauses:
    return Pauses()


@pytest.fixture
def limiter(engine: Engine, pauses: Pauses) -> RateLimiter:
    return RateLimiter(
        engine,
        "test_user",
        calls_per_window=PER_WINDOW,
        window_s=WINDOW_S,
        safety_margin_s=MARGIN_S,
        sleep=pauses,
    )


def call_times(engine: Engine, account: str = "test_user") -> list[float]:
    with engine.connect() as conn:
        query = (
            select(api_call_log.c.called_at).where(api_call_log.c.account == account).order_by("called_at")
        )
        return list(conn.execute(query).scalars())


def busiest_window(times: list[float], window_s: float) -> int:
    """The most calls that fall into any rolling window of ``window_s`` seconds."""
    return max((sum(1 for t in times if start <= t < start + window_s) for start in times), default=0)


def test_calls_within_budget_are_admitted_at_once(
    limiter: RateLimiter, engine: Engine, pauses: Pauses
) -> None:
    for i in range(PER_WINDOW):
        pauses.acquire(limiter, f"call-{i}")
    assert pauses.taken == []  # at once: the limiter never paused (the time the database took is not ours)
    with engine.connect() as conn:
        rows = conn.execute(select(api_call_log.c.account, api_call_log.c.purpose).order_by("call_id")).all()
        accounts = conn.execute(select(rate_limit_accounts.c.account)).scalars().all()
    assert rows == [("test_user", f"call-{i}") for i in range(PER_WINDOW)]
    assert accounts == ["test_user"]


def test_call_over_budget_waits_exactly_until_the_oldest_leaves_the_window(
    limiter: RateLimiter, engine: Engine, pauses: Pauses
) -> None:
    for _ in range(PER_WINDOW):
        pauses.acquire(limiter)
    began = time.monotonic()
    waited = pauses.acquire(limiter, "fourth")
    took = time.monotonic() - began
    first, *_, fourth = call_times(engine)
    assert fourth - first >= EFFECTIVE_WINDOW_S
    # One pause, computed to end as the first call leaves the window: woke on time, not after a fixed
    # pause nor by polling (a pause that ended early would be followed by another).
    (pause,) = pauses.taken
    assert_each_pause_ends_when_a_logged_call_leaves_the_window([pause], [first])
    assert pause.seconds <= waited <= took


def fire_from_threads(
    db_url: str, threads_n: int, calls_each: int, **engine_options: Any
) -> tuple[list[float], list[Pause]]:
    """Run ``threads_n`` threads, each with its own engine and limiter, making ``calls_each`` calls; the
    logged call times and every pause the limiters asked for."""
    errors: list[BaseException] = []
    recorders = [Pauses() for _ in range(threads_n)]

    def worker(index: int) -> None:
        engine = create_db_engine(db_url, **engine_options)
        try:
            limiter = RateLimiter(
                engine,
                "test_user",
                calls_per_window=PER_WINDOW,
                window_s=WINDOW_S,
                safety_margin_s=MARGIN_S,
                sleep=recorders[index],
            )
            for call in range(calls_each):
                recorders[index].acquire(limiter, f"thread-{index}-{call}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE_S)
    running = [thread.name for thread in threads if thread.is_alive()]
    assert running == [], f"limiter threads still running after {DEADLINE_S:g} s: {running}"
    assert errors == []
    engine = create_db_engine(db_url)
    times = call_times(engine)
    engine.dispose()
    return times, [pause for recorder in recorders for pause in recorder.taken]


def test_concurrent_threads_with_their_own_engines_never_exceed_the_window(db_url: str) -> None:
    times, pauses = fire_from_threads(db_url, 3, 3)  # 9 calls: 3 at once, 3 after one window, 3 after two
    assert len(times) == 9
    assert busiest_window(times, EFFECTIVE_WINDOW_S) == PER_WINDOW
    assert times[-1] - times[0] >= 2 * EFFECTIVE_WINDOW_S
    # Waiting for no longer than needed: every pause ends exactly when a logged call leaves the window (a
    # thread that lost the race to another computes anew). Threads start together, so some must pause.
    assert pauses, "no call paused: the check below would prove nothing"
    assert_each_pause_ends_when_a_logged_call_leaves_the_window(pauses, times)


@pytest.mark.postgres
def test_postgres_engine_defaulting_to_repeatable_read_still_sees_every_call(pg_url: str) -> None:
    times, pauses = fire_from_threads(pg_url, 3, 2, isolation_level="REPEATABLE READ")
    assert len(times) == 6
    assert busiest_window(times, EFFECTIVE_WINDOW_S) == PER_WINDOW
    assert_each_pause_ends_when_a_logged_call_leaves_the_window(pauses, times)


def test_accounts_have_separate_budgets(engine: Engine) -> None:
    alpha = RateLimiter(engine, "alpha", calls_per_window=1, window_s=30)
    beta = RateLimiter(engine, "beta", calls_per_window=1, window_s=30)
    assert alpha.acquire() < 0.5
    assert beta.acquire() < 0.5
    assert (len(call_times(engine, "alpha")), len(call_times(engine, "beta"))) == (1, 1)


def test_first_admission_prunes_rows_older_than_the_retention(engine: Engine) -> None:
    now = time.time()
    with engine.begin() as conn:
        conn.execute(
            insert(api_call_log),
            [
                {"account": "test_user", "called_at": now - 3 * 86_400, "purpose": "old"},
                {"account": "test_user", "called_at": now - 3_600, "purpose": "recent"},
                {"account": "someone_else", "called_at": now - 3 * 86_400, "purpose": "other account"},
            ],
        )
    RateLimiter(engine, "test_user").acquire("new")
    with engine.connect() as conn:
        purposes = set(conn.execute(select(api_call_log.c.purpose)).scalars())
        assert conn.execute(select(func.count()).select_from(api_call_log)).scalar() == 3
    assert purposes == {"recent", "new", "other account"}


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"account": ""}, "account is empty"),
        ({"calls_per_window": 0}, "at least 1 call"),
        ({"window_s": 0}, "window must be positive"),
        ({"safety_margin_s": -1}, "margin not negative"),
        ({"retention_s": 10}, "retention"),
    ],
)
def test_invalid_configuration_is_refused(sqlite_url: str, kwargs: dict[str, object], says: str) -> None:
    engine = create_db_engine(sqlite_url)
    with pytest.raises(ConfigurationError, match=says):
        RateLimiter(engine, **{"account": "test_user", **kwargs})  # type: ignore[arg-type]
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = create_db_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_client_acquires_the_limiter_for_every_attempt_including_retries(sqlite_engine: Engine) -> None:
    answers = iter(
        [httpx.Response(503), httpx.Response(200, json={"status": "error", "message": "Max limit exceeded"})]
    )

    def cloudagent(request: httpx.Request) -> httpx.Response:
        return next(answers, httpx.Response(200, json={"status": "success", "uniqueId": "UID-1"}))

    settings = ApiSettings(
        user_name="test_user", api_key=Secret("k-SECRET"), base_url="https://cloudagent.test"
    )
    limiter = RateLimiter(sqlite_engine, settings.user_name)
    policy = RetryPolicy(base_delay_s=0.0, rate_limited_min_delay_s=0.0)
    request = DialStatusRequest(
        campaign_name="Alpha",
        user_name="test_user",
        from_date=datetime(2026, 1, 1, tzinfo=UTC),
        to_date=datetime(2026, 1, 2, tzinfo=UTC),
        callback_url="https://etl.example.com/cb/1/tok",
    )
    with CloudAgentClient(
        settings, limiter=limiter, transport=httpx.MockTransport(cloudagent), retry=policy
    ) as client:
        assert client.request_export(request, purpose="req-1") == "UID-1"
    with sqlite_engine.connect() as conn:
        purposes = conn.execute(select(api_call_log.c.purpose).order_by("call_id")).scalars().all()
    assert purposes == ["req-1", "req-1", "req-1"]


def test_client_refuses_a_limiter_of_another_account(sqlite_engine: Engine) -> None:
    settings = ApiSettings(
        user_name="test_user", api_key=Secret("k-SECRET"), base_url="https://cloudagent.test"
    )
    with pytest.raises(ConfigurationError, match="limiter counts account 'other'"):
        CloudAgentClient(settings, limiter=RateLimiter(sqlite_engine, "other"))
