"""A rate limiter shared by every process and DAG run: at most N calls per rolling window per account.

CloudAgent allows 10 requests per minute per account, and a nightly run, a backfill and a manual CLI
call may all be running at once in different processes. So the budget lives in the project database:

- ``api_call_log`` holds one row per admitted call (account, UNIX time, purpose);
- ``rate_limit_accounts`` holds one row per account, locked while a call is admitted, so that
  admissions for one account are serialised: ``SELECT ... FOR UPDATE`` on PostgreSQL, and on SQLite a
  ``BEGIN IMMEDIATE`` transaction (SQLite locks the whole database for writing; admissions are short).

Inside the lock the limiter counts the calls of the last window. Under budget, it logs the call and
returns at once. Otherwise it computes exactly when the oldest blocking call leaves the window, releases
the lock, sleeps until then and tries again: no fixed pause per call. Times are wall-clock
(``time.time()``) because processes share it, monotonic clocks are per process.

``safety_margin_s`` widens the window (default 2 s). The limiter records the admission time, the server
counts arrivals: when the oldest call of a window reached the server late (a slow connect, a busy
machine, the internet) and a new one arrives at once, the server can see 11 arrivals within its 60 s and
answer "Max limit exceeded" although we admitted 10 in 60 s. 0.1 s was too thin on a loaded 2-core
machine (CI saw that retry). The price is the margin once per window (2 s per 60 s).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import Column, Connection, Double, Engine, Index, Table, Text, delete, insert, select
from sqlalchemy.exc import OperationalError

from cloudagent_etl.databases import database_for
from cloudagent_etl.errors import ConfigurationError, DatabaseUnavailableError
from cloudagent_etl.sqltypes import BigIntId, metadata

log = logging.getLogger(__name__)

#: Added to a computed wait so that the blocking call is strictly out of the window when we wake.
WAKE_SLACK_S = 0.005
#: How much wider than the server's window ours is (see the module docstring).
DEFAULT_SAFETY_MARGIN_S = 2.0
#: Old call-log rows are deleted on an instance's first admission and then every this many admissions.
PRUNE_EVERY = 100

rate_limit_accounts = Table(
    "rate_limit_accounts",
    metadata,
    Column("account", Text, primary_key=True, comment="row locked while a call is admitted"),
)

api_call_log = Table(
    "api_call_log",
    metadata,
    Column("call_id", BigIntId, primary_key=True, autoincrement=True),
    Column("account", Text, nullable=False),
    Column("called_at", Double, nullable=False, comment="UNIX time (s) the call was admitted"),
    Column("purpose", Text, nullable=True, comment="e.g. the campaign or request id"),
    Index(None, "account", "called_at"),
)


class RateLimiter:
    """At most ``calls_per_window`` calls per rolling ``window_s`` seconds for ``account``, across processes.

    Call :meth:`acquire` right before each API call (each retry too: it is a call).
    """

    def __init__(
        self,
        engine: Engine,
        account: str,
        calls_per_window: int = 10,
        window_s: float = 60.0,
        *,
        safety_margin_s: float = DEFAULT_SAFETY_MARGIN_S,
        retention_s: float = 86_400.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not account:
            raise ConfigurationError("rate limiter account is empty")
        if calls_per_window < 1:
            raise ConfigurationError(
                f"rate limit must allow at least 1 call per window, not {calls_per_window}"
            )
        if window_s <= 0 or safety_margin_s < 0:
            raise ConfigurationError("rate limit window must be positive and its safety margin not negative")
        if retention_s < window_s + safety_margin_s:
            raise ConfigurationError("call-log retention must be at least the rate-limit window")
        self.engine = engine
        self.account = account
        self.calls_per_window = calls_per_window
        self.window_s = window_s
        self.safety_margin_s = safety_margin_s
        self.retention_s = retention_s
        self._sleep = sleep
        self._admitted = 0

    def __repr__(self) -> str:
        return (
            f"RateLimiter(account={self.account!r}, calls_per_window={self.calls_per_window}, "
            f"window_s={self.window_s}, "
            f"backend={database_for(self.engine).name!r})"
        )

    @property
    def effective_window_s(self) -> float:
        """The window the limiter enforces: the nominal one plus the safety margin."""
        return self.window_s + self.safety_margin_s

    def acquire(self, purpose: str | None = None) -> float:
        """Wait until a call is within budget, record it, and return the seconds spent waiting."""
        started = time.monotonic()
        while True:
            wait_s = self._admit_or_wait(purpose)
            if wait_s is None:
                return time.monotonic() - started
            log.info(
                "rate limit: account=%s has used %d calls in %.1fs; waiting %.2fs (purpose=%s)",
                self.account,
                self.calls_per_window,
                self.effective_window_s,
                wait_s,
                purpose,
            )
            self._sleep(wait_s)

    def _admit_or_wait(self, purpose: str | None) -> float | None:
        """Admit and log one call (None), or return how long until the budget has room again."""
        try:
            with self.engine.connect() as conn:
                self._lock_account(conn)
                wait_s = self._admit_or_wait_locked(conn, purpose)
                if wait_s is None:
                    conn.commit()
                    self._admitted += 1
                return wait_s  # leaving the block without a commit rolls back and releases the lock
        except OperationalError as exc:
            database = database_for(self.engine).name
            raise DatabaseUnavailableError(
                f"rate limiter database unavailable ({database}): {type(exc.orig).__name__}"
            ) from exc

    def _lock_account(self, conn: Connection) -> None:
        """Start the transaction holding this account's admission lock (see the module docstring): once
        the lock is ours, the count sees every call the previous holder logged."""
        database = database_for(conn)
        database.begin_write(conn)
        database.lock_row(conn, rate_limit_accounts, rate_limit_accounts.c.account, self.account)

    def _admit_or_wait_locked(self, conn: Connection, purpose: str | None) -> float | None:
        calls = api_call_log.c
        mine = calls.account == self.account
        now = time.time()
        window_start = now - self.effective_window_s
        query = select(calls.called_at).where(mine, calls.called_at > window_start).order_by(calls.called_at)
        in_window = list(conn.execute(query).scalars())
        if len(in_window) >= self.calls_per_window:
            # The call that must leave the window before one more fits in it.
            blocking = in_window[len(in_window) - self.calls_per_window]
            return blocking + self.effective_window_s - now + WAKE_SLACK_S
        conn.execute(insert(api_call_log).values(account=self.account, called_at=now, purpose=purpose))
        if self._admitted % PRUNE_EVERY == 0:
            conn.execute(delete(api_call_log).where(mine, calls.called_at < now - self.retention_s))
        return None
