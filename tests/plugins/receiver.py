"""pytest fixtures that run the callback receiver as a real process on loopback.

- ``start_receiver`` (function scope): a factory. ``start_receiver(db_url, workers=1, port=None, **env)``
  returns a context manager that runs ``cloudagent-etl receiver`` on a free port (or ``port``, e.g. to
  restart on the same one) against the migrated database ``db_url``, waits until ``/healthz`` answers,
  yields a :class:`ReceiverHandle` and stops the process (by its PID) on exit. ``env`` adds or overrides
  environment variables, e.g. ``CLOUDAGENT_CALLBACK_TOKEN="s3cret"``,
  ``CLOUDAGENT_RECEIVER_MAX_BODY_BYTES="1000"`` or ``CLOUDAGENT_RECEIVER_BODY_TIMEOUT_S="1"``. By default
  no shared callback token is set and the data/spool folder is a fresh temporary folder.
- ``receiver`` (function scope): ``start_receiver(db_url)`` for the ``db_url`` fixture (so a test using it
  runs on SQLite and on PostgreSQL).

:class:`ReceiverHandle` has ``base_url``, ``db_url``, ``server`` (``kill(signal)``, ``pid``), ``log()`` and
``callback_url(new_request)`` — the per-request URL for a :class:`landing.NewExportRequest`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudagent_etl import landing
from tests.servers import ServerProcess, free_port, run_server


@dataclass
class ReceiverHandle:
    """A running receiver process."""

    server: ServerProcess
    db_url: str

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def callback_url(self, new: landing.NewExportRequest) -> str:
        return landing.callback_url(self.base_url, new.request_id, new.token)

    def log(self) -> str:
        return self.server.log()


StartReceiver = Callable[..., AbstractContextManager[ReceiverHandle]]


@pytest.fixture
def start_receiver(tmp_path_factory: pytest.TempPathFactory) -> StartReceiver:
    data_dir = tmp_path_factory.mktemp("receiver")
    starts = itertools.count()

    @contextmanager
    def start(
        db_url: str, *, workers: int = 1, port: int | None = None, **env: str
    ) -> Iterator[ReceiverHandle]:
        port = port or free_port()
        full_env = {
            "CLOUDAGENT_DB_URL": db_url,
            "CLOUDAGENT_DATA_DIR": str(data_dir),
            "CLOUDAGENT_CALLBACK_TOKEN": "",
        }
        full_env.update(env)
        args = ["receiver", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        log_path = Path(data_dir) / f"receiver-{next(starts)}.log"
        with run_server(args, port, log_path, env=full_env) as server:
            yield ReceiverHandle(server, db_url)

    return start


@pytest.fixture
def receiver(start_receiver: StartReceiver, db_url: str) -> Iterator[ReceiverHandle]:
    with start_receiver(db_url) as handle:
        yield handle
