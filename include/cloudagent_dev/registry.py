"""The local stacks this user started, wherever from: so that ``make airflow-stop`` and
``make airflow-status`` run with another ``CLOUDAGENT_LOCALSTACK_DIR`` (or elsewhere) still find them.

One small text file per user, one state-file path a line, at ``CLOUDAGENT_LOCALSTACK_REGISTRY`` (tests point
it at a temporary file) or ``$XDG_STATE_HOME/cloudagent-etl/localstacks`` (default
``~/.local/state/cloudagent-etl/localstacks``). Every read and write holds an OS lock on the file, so two
stacks starting at once do not lose each other's line. An entry only says where to look: whether that stack
runs is always decided from its state file and the live processes, never from the registry.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REGISTRY_ENV = "CLOUDAGENT_LOCALSTACK_REGISTRY"


def registry_path(env: Mapping[str, str] | None = None) -> Path:
    """Where this user's registry of local stacks is (see the module doc)."""
    env = os.environ if env is None else env
    if env.get(REGISTRY_ENV):
        return Path(env[REGISTRY_ENV]).absolute()
    state_home = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "cloudagent-etl" / "localstacks"


@dataclass(frozen=True)
class StackRegistry:
    """The registry file at ``path``: the state files of the stacks started, in the order they started."""

    path: Path

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[IO[str]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+") as file:
            fcntl.flock(file, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            file.seek(0)
            yield file

    @staticmethod
    def _read(file: IO[str]) -> list[Path]:
        return [Path(line) for line in file.read().splitlines() if line.strip()]

    @staticmethod
    def _write(file: IO[str], paths: list[Path]) -> None:
        file.seek(0)
        file.truncate()
        file.write("".join(f"{path}\n" for path in paths))
        file.flush()

    def state_paths(self) -> list[Path]:
        if not self.path.exists():
            return []
        with self._locked(exclusive=False) as file:
            return self._read(file)

    def add(self, state_path: Path) -> None:
        """Record ``state_path`` (once: adding it again changes nothing)."""
        state_path = state_path.absolute()
        with self._locked(exclusive=True) as file:
            paths = self._read(file)
            if state_path not in paths:
                self._write(file, [*paths, state_path])

    def remove(self, *state_paths: Path) -> None:
        gone = {path.absolute() for path in state_paths}
        if not self.path.exists():
            return
        with self._locked(exclusive=True) as file:
            paths = self._read(file)
            if gone & set(paths):
                self._write(file, [path for path in paths if path not in gone])
