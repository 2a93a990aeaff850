"""The per-user registry of local stacks: where it is, and that concurrent starts keep every entry."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from cloudagent_dev.registry import StackRegistry, registry_path
from tests.timing import DEADLINE_S


def test_the_registry_is_the_override_or_under_the_xdg_state_home_or_home(tmp_path: Path) -> None:
    assert registry_path({"CLOUDAGENT_LOCALSTACK_REGISTRY": str(tmp_path / "r")}) == tmp_path / "r"
    assert registry_path({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "cloudagent-etl" / "localstacks"
    assert registry_path({}) == Path.home() / ".local" / "state" / "cloudagent-etl" / "localstacks"


def test_entries_are_added_once_in_order_and_removed(tmp_path: Path) -> None:
    registry = StackRegistry(tmp_path / "state" / "localstacks")
    assert registry.state_paths() == []
    registry.remove(tmp_path / "never")  # no file yet: nothing to do, nothing created
    assert not registry.path.exists()

    first, second = tmp_path / "a" / "localstack.json", tmp_path / "b" / "localstack.json"
    registry.add(first)
    registry.add(second)
    registry.add(first)
    assert registry.state_paths() == [first, second]

    registry.remove(first, tmp_path / "unknown")
    assert registry.state_paths() == [second]
    registry.remove(second)
    assert registry.state_paths() == []


def _add_many(path: Path, worker: int) -> None:
    registry = StackRegistry(path)
    for index in range(25):
        registry.add(path.parent / f"stack-{worker}-{index}" / "localstack.json")


def test_concurrent_adds_lose_no_entry(tmp_path: Path) -> None:
    path = tmp_path / "localstacks"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_many, args=(path, worker)) for worker in range(6)]
    for process in workers:
        process.start()
    try:
        for process in workers:
            process.join(DEADLINE_S)
            assert process.exitcode == 0, (
                f"worker {process.pid}: exit {process.exitcode} (None: still running)"
            )
    finally:
        for process in workers:
            if process.is_alive():
                process.kill()
                process.join()

    assert len(set(StackRegistry(path).state_paths())) == len(StackRegistry(path).state_paths()) == 6 * 25
