"""Map the product's error tree onto Airflow's retry decision."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk.exceptions import AirflowFailException


@contextmanager
def terminal_errors_fail_fast(setting: str | None = None) -> Iterator[None]:
    """Turn a :class:`TerminalError` into :class:`AirflowFailException`: fail now, skip the task's retries.

    ``setting`` (e.g. "connection cloudagent_acme") prefixes the message: with several accounts, a wrong
    apiKey must say whose. Transient errors (and anything unexpected) propagate unchanged and get the task's
    retries with backoff.
    """
    from cloudagent_etl.errors import TerminalError

    try:
        yield
    except TerminalError as exc:
        raise AirflowFailException(f"{setting}: {exc}" if setting else str(exc)) from exc
