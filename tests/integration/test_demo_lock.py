"""``make demo`` holds its folder: a second demo in the same folder refuses at once, with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cloudagent_dev.demo import folder_lock
from tests.timing import DEADLINE_S

REPO = Path(__file__).resolve().parents[2]


def test_a_second_demo_in_the_same_folder_refuses_while_the_first_holds_it(tmp_path: Path) -> None:
    env = {**os.environ, "CLOUDAGENT_DEMO_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "cloudagent_dev.demo"]
    with folder_lock(tmp_path) as ours:
        assert ours
        second = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=DEADLINE_S
        )

    assert second.returncode == 2
    assert f"another `make demo` is running in {tmp_path} (pid {os.getpid()})" in second.stderr
    assert not (tmp_path / "airflow.log").exists(), "the refused demo touched nothing"
    with folder_lock(tmp_path) as ours_again:  # released when its holder let go
        assert ours_again
