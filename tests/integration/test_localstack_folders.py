"""``localstack stop``/``status`` from another folder find the stack that runs, or name it with the command
that stops it, and never claim "stopped" for something still running.

Without Airflow (``tests/integration/test_make_airflow.py`` does it once with the real stack): the
"stack" is two real ``sleep`` processes, each the leader of its own process group, recorded in a state
file and in a temporary registry exactly as ``start`` records its processes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudagent_dev.localstack import StackPaths, StackState, main
from cloudagent_dev.processes import StartedProcess, exit_code, start_process, still_running, stop_processes
from tests.timing import DEADLINE_S


@dataclass
class FakeStack:
    paths: StackPaths
    processes: tuple[StartedProcess, ...]


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStack]:
    registry = tmp_path / "registry"
    monkeypatch.setenv("CLOUDAGENT_LOCALSTACK_REGISTRY", str(registry))
    paths = StackPaths(tmp_path / "started-here", registry)
    paths.data_dir.mkdir()
    processes = tuple(
        start_process(name, ["sleep", "300"], os.environ, paths.data_dir / f"{name}.log")
        for name in ("api-server", "scheduler")
    )
    try:
        state = StackState("http://127.0.0.1:1", "", None, str(paths.airflow_home), processes)
        state.save(paths.state_path)
        paths.registry.add(paths.state_path)
        yield FakeStack(paths, processes)
    finally:
        assert stop_processes(processes) == []


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], folder: Path, action: str):
    monkeypatch.setenv("CLOUDAGENT_LOCALSTACK_DIR", str(folder))
    code = main([action])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_stop_and_status_elsewhere_name_the_running_stack_and_stop_nothing(
    stack: FakeStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "another-folder"
    command = f"CLOUDAGENT_LOCALSTACK_DIR={stack.paths.data_dir} make airflow-stop"

    for action in ("status", "stop"):
        code, out = run(monkeypatch, capsys, elsewhere, action)
        assert code == 3, out
        assert f"a local stack runs in {stack.paths.data_dir}" in out
        assert f"    {command}\n" in out
        assert "is stopped" not in out
    assert len(still_running(stack.processes)) == 2, "stop elsewhere stopped nothing"
    assert stack.paths.state_path.exists()

    code, out = run(monkeypatch, capsys, stack.paths.data_dir, "status")
    assert code == 0, out
    assert f"the local stack in {stack.paths.data_dir} is running" in out
    for process in stack.processes:
        assert f"{process.name:<14} pid {process.pid:<8} alive" in out

    os.killpg(stack.processes[1].pid, signal.SIGTERM)
    exit_code(stack.processes[1], timeout=DEADLINE_S)
    code, out = run(monkeypatch, capsys, stack.paths.data_dir, "status")
    assert code == 1, out
    assert f"scheduler      pid {stack.processes[1].pid:<8} exited" in out

    code, out = run(monkeypatch, capsys, stack.paths.data_dir, "stop")
    assert code == 0, out
    assert f"the local stack in {stack.paths.data_dir} is stopped: none of its processes is running" in out
    assert still_running(stack.processes) == []
    assert not stack.paths.state_path.exists()
    assert stack.paths.registry.state_paths() == []

    for folder in (elsewhere, stack.paths.data_dir):  # nothing runs anywhere: nothing to stop, exit 0
        code, out = run(monkeypatch, capsys, folder, "stop")
        assert code == 0, out
        assert "nothing stopped there" in out
        assert "no other local stack is running" in out
        code, out = run(monkeypatch, capsys, folder, "status")
        assert code == 3, out


def test_a_stack_whose_processes_exited_is_cleaned_up_and_the_running_one_still_named(
    stack: FakeStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead stack in the folder asked for is not "stopped" by us: its state goes, the live one is named."""
    dead = StackPaths(tmp_path / "dead", stack.paths.registry_path)
    dead.data_dir.mkdir()
    gone = start_process("scheduler", ["true"], os.environ, dead.data_dir / "scheduler.log")
    exit_code(gone, timeout=DEADLINE_S)
    StackState("http://127.0.0.1:3", "", None, str(dead.airflow_home), (gone,)).save(dead.state_path)
    dead.registry.add(dead.state_path)
    forgotten = tmp_path / "removed-by-hand" / "localstack.json"
    dead.registry.add(forgotten)  # its folder was deleted: the entry is dropped when next read

    code, out = run(monkeypatch, capsys, dead.data_dir, "stop")

    assert code == 3, out
    assert f"the local stack recorded in {dead.data_dir} had already exited; removed its state file" in out
    assert f"CLOUDAGENT_LOCALSTACK_DIR={stack.paths.data_dir} make airflow-stop" in out
    assert not dead.state_path.exists()
    assert stack.paths.registry.state_paths() == [stack.paths.state_path]
    assert len(still_running(stack.processes)) == 2
