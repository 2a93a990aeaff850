"""Zero loss: the receiver is SIGKILLed and restarted mid-load; every acknowledged body is stored once.

The same driver runs at full size (2,000 callbacks, 50 clients) in ``make bench-receiver``.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import ExitStack

import pytest

from cloudagent_dev.callback_load import check_zero_loss, make_callbacks, post_until_acked
from tests.fixtures.receiver import StartReceiver
from tests.timing import DEADLINE_S


@pytest.mark.slow
def test_no_acknowledged_callback_is_lost_when_the_receiver_is_killed(
    start_receiver: StartReceiver, db_url: str
) -> None:
    with ExitStack() as servers:
        first = servers.enter_context(start_receiver(db_url))
        port = int(first.base_url.rsplit(":", 1)[1])
        callbacks = make_callbacks(db_url, first.base_url, 300)

        def kill_and_restart() -> None:
            first.server.kill(signal.SIGKILL)
            servers.enter_context(start_receiver(db_url, port=port))

        result = asyncio.run(
            post_until_acked(callbacks, 20, on_halfway=kill_and_restart, deadline_s=DEADLINE_S)
        )
    assert first.server.returncode == -signal.SIGKILL
    assert result.failures > 0, "some posts must have hit the dead receiver"
    loss = check_zero_loss(db_url, callbacks, result.acked)
    assert loss == {
        "sent": 300,
        "acked": 300,
        "stored": 300,
        "missing": 0,
        "stored_twice": 0,
        "corrupted": 0,
        "unknown": 0,
    }
