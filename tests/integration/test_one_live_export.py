"""One live export per window, across processes: two workers asking at the same instant make one API call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from cloudagent_etl.db import create_db_engine
from cloudagent_etl.landing import export_requests
from tests.fixtures.simulator import SimulatorHandle
from tests.timing import DEADLINE_S, start_together

REPO = Path(__file__).resolve().parents[2]


def test_two_processes_asking_for_the_same_window_at_once_make_one_api_call(
    fresh_simulator: SimulatorHandle, db_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "CLOUDAGENT_API_BASE_URL": fresh_simulator.base_url,
        "CLOUDAGENT_API_USER": fresh_simulator.user,
        "CLOUDAGENT_API_KEY": fresh_simulator.api_key,
    }
    workers = []
    for index in range(2):
        command = [sys.executable, "-m", "tests.integration.export_worker", "--db-url", db_url]
        log = (tmp_path / f"worker-{index}.log").open("wb")
        pipe = subprocess.PIPE
        workers.append(
            (subprocess.Popen(command, cwd=REPO, env=env, stdin=pipe, stdout=pipe, stderr=log), log)
        )
    answers = []
    try:
        start_together([process for process, _ in workers], "export worker")  # both up: ask at once
        for process, log in workers:
            stdout, _ = process.communicate(timeout=DEADLINE_S)
            log.close()
            assert process.returncode == 0, Path(log.name).read_text()
            answers.append(stdout.decode().strip())
    finally:
        for process, _ in workers:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert len(fresh_simulator.requests_log()) == 1
    assert answers[0] == answers[1]
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(select(export_requests.c.request_id)).scalars().all() == [answers[0]]
    engine.dispose()
