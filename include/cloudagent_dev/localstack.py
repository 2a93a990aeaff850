"""``make airflow``: the whole stack on this machine, without Docker, and the Airflow plumbing it shares with
``make demo``.

``start`` runs, detached and on loopback only, under ``CLOUDAGENT_LOCALSTACK_DIR`` (default
``./data/airflow-local``):

- the CloudAgent simulator (``CLOUDAGENT_SIMULATOR_PORT``, default 8765) with the demo account and
  campaigns — unless ``CLOUDAGENT_API_BASE_URL``, ``CLOUDAGENT_API_USER`` and ``CLOUDAGENT_API_KEY`` point at
  a real CloudAgent (all three or none: a partial set is refused, exit 2, nothing started);
- the callback receiver (``CLOUDAGENT_RECEIVER_PORT``, default 8081);
- Airflow's api-server (UI and REST API, ``CLOUDAGENT_AIRFLOW_PORT``, default 8080), then, once its health
  endpoint answers, the scheduler (LocalExecutor), dag-processor and triggerer (the wait for the callback is
  deferred to it): tasks talk to the api-server, so nothing that runs tasks starts before it listens. Each
  is its own process group. Their log servers are off: every component reads the same local log folder.

``CLOUDAGENT_EXECUTOR=celery`` (``make airflow EXECUTOR=celery WORKERS=3``) runs the same stack on
CeleryExecutor: ``CLOUDAGENT_WORKERS`` (default 2) ``airflow celery worker`` processes named
``worker-N@<host>`` (tasks report that name as their hostname), the broker ``CLOUDAGENT_CELERY_BROKER``
(default: Redis on 127.0.0.1:6379, database 5; RabbitMQ: ``amqp://guest:guest@127.0.0.1:5672//``),
Airflow's metadata database as the result backend (so PostgreSQL is required: SQLite is refused, exit 2),
and a second receiver (``CLOUDAGENT_RECEIVER_2_PORT``, default 8082): odd workers call back to the first,
even ones to the second. The settings that make it distributed are :data:`CELERY_SETTINGS`, the same as
``docker-compose.celery.yaml``'s and the README's Helm values (a test compares them).

Every step is printed as it happens. The warehouse is ``CLOUDAGENT_DB_URL`` (default: a SQLite file in the
folder, migrated at start). Airflow's metadata is ``CLOUDAGENT_AIRFLOW_DB_URL`` (PostgreSQL, for heavier use)
or a SQLite file in the Airflow home: enough for one laptop. The connections
``cloudagent_default``/``cloudagent_db`` and the Variable ``cloudagent_campaigns`` (``CLOUDAGENT_CAMPAIGNS``:
a JSON list or comma-separated, read by :func:`cloudagent_etl.accounts.parse_campaigns` like the Variable
itself) are ``AIRFLOW_CONN_*``/``AIRFLOW_VAR_*`` in every Airflow process's environment; the pool
``cloudagent_api`` (1 slot) is set in the metadata DB; DAGs start unpaused. The UI login is ``admin`` with
the password Airflow generates into the Airflow home.

Every started process is recorded (PID = process group id, and its start time, so a reused PID is never
mistaken for ours) in ``localstack.json`` as soon as it starts, and that file in the user's registry of
stacks (:mod:`cloudagent_dev.registry`). ``stop`` signals exactly those process groups (and the task
processes that Airflow put in groups of their own), waits, checks that none is left and removes the state
file. ``stop`` and ``status`` in a folder without a running stack name the stacks running elsewhere and the
command that stops each. A second ``start`` while the recorded stack is alive starts nothing.

Exit codes — ``start``: 0 running (started, or already running), 1 failed to start (what it started is
stopped again), 2 settings refused (nothing started). ``stop``: 0 the folder's stack was running and none
of its processes is left, or no stack runs anywhere; 1 processes survived (listed); 3 nothing stopped: no
stack runs in this folder, but one runs elsewhere (its stop command is printed). ``status``: 0 every
process of the folder's stack is alive, 1 some exited, 3 none runs in this folder. ``airflow <args>``:
Airflow's own code, 3 when the folder's stack is not running. ``make`` turns any non-zero code into its
own failure.

This module never imports Airflow: Airflow is run as subprocesses from this interpreter's ``bin`` folder.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from cloudagent_dev.databases import connection_uri
from cloudagent_dev.processes import (
    LOOPBACK,
    StartedProcess,
    log_tail,
    port_is_free,
    start_process,
    still_running,
    stop_processes,
    wait_until,
)
from cloudagent_dev.registry import StackRegistry, registry_path
from cloudagent_dev.servers import start_server
from cloudagent_etl.accounts import parse_campaigns
from cloudagent_etl.db import migrate
from cloudagent_etl.errors import ConfigurationError
from cloudagent_etl.settings import API_ENV_VARIABLES, DEFAULT_CONNECTION

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DAG_ID = "cloudagent_dial_status"
DEMO_USER = "demo_user"
DEMO_API_KEY = "demo-api-key"
DEMO_CAMPAIGNS = ("Sales", "Support", "Renewals")
#: ``CLOUDAGENT_LOCALSTACK_ACCOUNTS=2``: a second simulated account (a BPO's second client) beside the demo
#: one, with the same campaign names and records of its own, synced through the connection below.
SECOND_CONNECTION = "cloudagent_second"
SECOND_USER = "demo_user_2"
SECOND_API_KEY = "demo-api-key-2"
MAX_ACCOUNTS = 2
#: The pool of ``request_export``: one slot per account (each account's calls one at a time).
POOL_NAME = "cloudagent_api"
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
DEFAULT_WORKERS = 2
MAX_WORKERS = 16
#: Redis on this machine, a database of its own (two Celery stacks on one broker take each other's tasks).
DEFAULT_CELERY_BROKER = "redis://127.0.0.1:6379/5"
#: What makes a stack distributed, besides the executor and the two addresses (broker, result backend): the
#: same in docker-compose.celery.yaml and the README's Helm values.
CELERY_SETTINGS = {
    # Few task processes per worker (a load is one CPU-bound process): scale out with workers instead.
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
    # A worker takes a task only for a free slot: a lost worker strands no backlog in its prefetch.
    "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
    "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
    # A task whose worker died stops heartbeating: fail it (and retry it elsewhere) after 60 s, not 300 s.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
}
#: Airflow's ``[core] hostname_callable`` on the local workers: tasks report their worker's name.
WORKER_HOSTNAME_CALLABLE = "cloudagent_dev.localstack.worker_hostname"
WORKER_HOSTNAME_VARIABLE = "CLOUDAGENT_WORKER_HOSTNAME"
ADMIN_USER = "admin"
STATE_FILE = "localstack.json"
DEFAULT_DIR = "data/airflow-local"
API_VARIABLES = tuple(API_ENV_VARIABLES.values())
#: The parts of Airflow's health answer that the components started after the api-server report on.
HEALTH_PARTS = {"scheduler": "scheduler", "dag_processor": "dag-processor", "triggerer": "triggerer"}

T = TypeVar("T")


class Progress:
    """One line per step, printed and flushed as it happens, with the seconds since the command began;
    the steps' durations are kept for the summary at the end."""

    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.timings: dict[str, float] = {}

    def say(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.began:6.1f} s] {message}", flush=True)

    def timed(self, step: str, action: Callable[[], T]) -> T:
        began = time.perf_counter()
        result = action()
        self.timings[step] = time.perf_counter() - began
        self.say(f"{step}: done in {self.timings[step]:.1f} s")
        return result

    def summary(self) -> str:
        rows = {**self.timings, "total": time.perf_counter() - self.began}
        width = max(map(len, rows))
        return "\n".join(f"  {step:<{width}} {seconds:6.1f} s" for step, seconds in rows.items())


# --- Airflow: one way to build its environment and to run its CLI ----------------------------------------


def worker_hostname() -> str:
    """The hostname a task reports (Airflow's ``hostname_callable``): its local Celery worker's name, since
    the workers of a local stack share one machine (elsewhere: the machine's name, as Airflow's default)."""
    return os.environ.get(WORKER_HOSTNAME_VARIABLE) or socket.getfqdn()


def celery_env(broker_url: str, metadata_db_url: str) -> dict[str, str]:
    """The Airflow settings of a CeleryExecutor deployment: the executor, the broker, the metadata database
    as result backend (Celery's ``db+`` form) and :data:`CELERY_SETTINGS`."""
    return {
        "AIRFLOW__CORE__EXECUTOR": EXECUTORS["celery"],
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata_db_url}",
        **CELERY_SETTINGS,
    }


#: The pseudonym key of a demo or local stack, made on first start in its data folder.
PSEUDONYM_KEY_FILE = "pseudonym.key"


def local_pseudonym_key(data_dir: Path) -> str:
    """The stack's pseudonym key: ``CLOUDAGENT_PSEUDONYM_KEY`` when set, else the key of ``data_dir``'s
    ``pseudonym.key``, made (mode 0600, 256 random bits) on first start; so the README's two commands load
    without a setting, and the data folder's pseudonyms stay stable across restarts."""
    if key := os.environ.get("CLOUDAGENT_PSEUDONYM_KEY", "").strip():
        return key
    path = data_dir / PSEUDONYM_KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def airflow_env(
    airflow_home: Path,
    *,
    metadata_db_url: str,
    warehouse_db_url: str,
    api_connection: Mapping[str, str],
    callback_base_url: str,
    campaigns: Sequence[str] | None,
    second_account: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment every Airflow process of ours runs with: home, this repo's DAGs, the
    metadata DB, the connections ``cloudagent_default``/``cloudagent_db``, the campaign Variable, the
    receiver's URL, and the venv's ``bin`` first on PATH (Airflow starts ``airflow`` sub-commands by name).
    With ``second_account``, its connection ``cloudagent_second`` and the Variable ``cloudagent_accounts``
    listing both accounts with ``campaigns``.
    """
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db_url,
        "AIRFLOW_CONN_CLOUDAGENT_DEFAULT": json.dumps({"conn_type": "cloudagent", **api_connection}),
        "AIRFLOW_CONN_CLOUDAGENT_DB": connection_uri(warehouse_db_url),
        "CLOUDAGENT_CALLBACK_BASE_URL": callback_base_url,
        "AIRFLOW_CONN_CLOUDAGENT_PSEUDONYM": json.dumps(
            {"conn_type": "generic", "password": local_pseudonym_key(airflow_home.parent)}
        ),
    }
    if campaigns:
        env["AIRFLOW_VAR_CLOUDAGENT_CAMPAIGNS"] = json.dumps(list(campaigns))
    if second_account is not None:
        env[f"AIRFLOW_CONN_{SECOND_CONNECTION.upper()}"] = json.dumps(
            {"conn_type": "cloudagent", **second_account}
        )
        accounts = {DEFAULT_CONNECTION: list(campaigns or ()), SECOND_CONNECTION: list(campaigns or ())}
        env["AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS"] = json.dumps(accounts)
    return env


def run_airflow(
    args: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    while_running: Callable[[], None] | None = None,
) -> float:
    """Run the venv's ``airflow <args>``, output to ``log_path``; return seconds taken (raise on failure).

    ``while_running`` is called about once a second until it ends (the demo reports progress with it).
    """
    started = time.perf_counter()
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603  (the venv's airflow, fixed arguments)
            [str(VENV_BIN / "airflow"), *args], stdout=log, stderr=subprocess.STDOUT, env=dict(env)
        )
        try:
            while True:
                try:
                    returncode = process.wait(timeout=1)
                    break
                except subprocess.TimeoutExpired:
                    if while_running is not None:
                        while_running()
        except BaseException:
            process.kill()
            process.wait()
            raise
    if while_running is not None:
        while_running()
    if returncode != 0:
        raise RuntimeError(
            f"`airflow {' '.join(args)}` failed ({returncode}); last lines:\n{log_tail(log_path)}"
        )
    return time.perf_counter() - started


def prepare_airflow_metadata(
    env: Mapping[str, str], log_path: Path, progress: Progress, accounts: int = 1
) -> None:
    """Migrate Airflow's metadata DB and set the ``cloudagent_api`` pool (a slot per account), each step
    reported as it ends."""
    progress.say("airflow db migrate (a fresh metadata DB takes the longest) ...")
    progress.timed("airflow db migrate", lambda: run_airflow(["db", "migrate"], env, log_path))
    pool = [
        POOL_NAME,
        str(accounts),
        "CloudAgent API: one slot per account (its export requests one at a time)",
    ]
    progress.timed("airflow pools set", lambda: run_airflow(["pools", "set", *pool], env, log_path))


# --- the local stack ------------------------------------------------------------------------------------


def _without_credentials(url: str) -> str:
    """``url`` without any user:password part, for printing."""
    return str(httpx.URL(url).copy_with(username=None, password=None))


def _password_hidden(url: str) -> str:
    """A database URL with its password (if any) shown as ***: the user and the path stay."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class StackPaths:
    """Where a local stack keeps its files, and the user's registry of stacks: all that ``stop`` and
    ``status`` need (so that they work whatever the other settings are)."""

    data_dir: Path
    registry_path: Path

    @property
    def airflow_home(self) -> Path:
        return self.data_dir / "airflow"

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def registry(self) -> StackRegistry:
        return StackRegistry(self.registry_path)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackPaths:
        env = os.environ if env is None else env
        return cls(_data_dir(env), registry_path(env))


def _data_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("CLOUDAGENT_LOCALSTACK_DIR") or DEFAULT_DIR).absolute()


def make_command(data_dir: Path, target: str = "airflow-stop") -> str:
    """The exact command that runs ``make <target>`` for the stack in ``data_dir`` (by default: stops it)."""
    if data_dir == Path(DEFAULT_DIR).absolute():
        return f"make {target}"
    return f"CLOUDAGENT_LOCALSTACK_DIR={shlex.quote(str(data_dir))} make {target}"


def real_api_settings(env: Mapping[str, str]) -> dict[str, str] | None:
    """host/login/password of a real CloudAgent from ``CLOUDAGENT_API_*``; None (the simulator) when none is
    set. A partial set is refused: half a configuration must not silently talk to the simulator."""
    values = {name: env.get(name, "").strip() for name in API_VARIABLES}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        given = [name for name, value in values.items() if value]
        raise ConfigurationError(
            f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not: set all of {', '.join(API_VARIABLES)} to use a "
            "real CloudAgent, or none of them for the simulator"
        )
    return dict(zip(("host", "login", "password"), values.values(), strict=True))


def accounts_setting(env: Mapping[str, str], real_api: Mapping[str, str] | None) -> int:
    """``CLOUDAGENT_LOCALSTACK_ACCOUNTS``: how many simulated accounts (1, or 2 for a BPO's two clients)."""
    raw = env.get("CLOUDAGENT_LOCALSTACK_ACCOUNTS", "1").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_ACCOUNTS:
        raise ConfigurationError(f"CLOUDAGENT_LOCALSTACK_ACCOUNTS must be 1 or {MAX_ACCOUNTS}, not {raw!r}")
    if int(raw) > 1 and real_api is not None:
        raise ConfigurationError(
            "CLOUDAGENT_LOCALSTACK_ACCOUNTS=2 simulates a second account: it cannot be used with a real "
            "CloudAgent (CLOUDAGENT_API_*); configure real accounts as connections and cloudagent_accounts"
        )
    return int(raw)


def campaigns_setting(env: Mapping[str, str], default: Sequence[str]) -> tuple[str, ...]:
    """``CLOUDAGENT_CAMPAIGNS`` read like the Variable it becomes (a JSON list or comma-separated);
    ``default`` when it is unset or empty."""
    raw = env.get("CLOUDAGENT_CAMPAIGNS", "")
    if not raw.strip():
        return tuple(default)
    try:
        return tuple(parse_campaigns(raw))
    except ConfigurationError as exc:
        raise ConfigurationError(f"CLOUDAGENT_CAMPAIGNS: {exc}") from None


def executor_settings(env: Mapping[str, str], metadata_db_url: str) -> tuple[str, int, str | None]:
    """``CLOUDAGENT_EXECUTOR`` (local or celery), ``CLOUDAGENT_WORKERS`` and ``CLOUDAGENT_CELERY_BROKER``:
    (executor, workers, broker URL or None). Celery needs PostgreSQL for Airflow's metadata (its result
    backend, and SQLite serves one writer); the worker count and the broker mean nothing without Celery."""
    executor = (env.get("CLOUDAGENT_EXECUTOR") or "local").strip().lower()
    if executor not in EXECUTORS:
        raise ConfigurationError(
            f"CLOUDAGENT_EXECUTOR must be one of {', '.join(EXECUTORS)}, not {executor!r}"
        )
    raw_workers = (env.get("CLOUDAGENT_WORKERS") or "").strip()
    broker = (env.get("CLOUDAGENT_CELERY_BROKER") or "").strip()
    if executor == "local":
        given = [name for name, value in (("CLOUDAGENT_WORKERS", raw_workers),
                                          ("CLOUDAGENT_CELERY_BROKER", broker)) if value]  # fmt: skip
        if given:
            raise ConfigurationError(
                f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to CeleryExecutor: "
                "set CLOUDAGENT_EXECUTOR=celery "
                "(make airflow EXECUTOR=celery WORKERS=3), or unset them"
            )
        return executor, 0, None
    workers = int(raw_workers) if raw_workers.isdigit() else DEFAULT_WORKERS
    if raw_workers and not (raw_workers.isdigit() and 1 <= workers <= MAX_WORKERS):
        raise ConfigurationError(
            f"CLOUDAGENT_WORKERS must be a number of workers from 1 to {MAX_WORKERS}, not {raw_workers!r}"
        )
    if not metadata_db_url.startswith("postgresql"):
        raise ConfigurationError(
            "CLOUDAGENT_EXECUTOR=celery needs PostgreSQL as Airflow's metadata database (it is also the "
            "Celery result backend, and SQLite serves one writer, not several workers): set "
            "CLOUDAGENT_AIRFLOW_DB_URL=postgresql://user@host:5432/airflow"
        )
    broker = broker or DEFAULT_CELERY_BROKER
    if httpx.URL(broker).scheme not in ("redis", "rediss", "amqp", "amqps"):
        raise ConfigurationError(
            "CLOUDAGENT_CELERY_BROKER must be a redis:// or amqp:// URL, e.g. "
            f"{DEFAULT_CELERY_BROKER} or amqp://guest:guest@127.0.0.1:5672//"
        )
    return executor, workers, broker


@dataclass(frozen=True)
class StackSettings(StackPaths):
    """Where and how ``make airflow`` runs; every field has an environment variable (see the module doc)."""

    airflow_port: int
    receiver_port: int
    simulator_port: int
    warehouse_db_url: str
    metadata_db_url: str
    real_api: Mapping[str, str] | None  # host/login/password of a real CloudAgent; None = the simulator
    callback_base_url: str | None  # public URL of the receiver when CloudAgent is real
    campaigns: tuple[str, ...]
    executor: str = "local"  # a key of EXECUTORS
    workers: int = 0  # Celery workers (0 with LocalExecutor)
    accounts: int = 1  # simulated CloudAgent accounts (CLOUDAGENT_LOCALSTACK_ACCOUNTS)
    celery_broker: str | None = None
    receiver_2_port: int = 8082  # the second receiver (Celery only)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackSettings:
        """The settings, or a ConfigurationError naming what is missing or malformed."""
        env = os.environ if env is None else env
        data_dir = _data_dir(env)
        real_api = real_api_settings(env)
        metadata_db_url = (
            env.get("CLOUDAGENT_AIRFLOW_DB_URL") or f"sqlite:///{data_dir / 'airflow' / 'airflow.db'}"
        )
        executor, workers, broker = executor_settings(env, metadata_db_url)
        return cls(
            data_dir=data_dir,
            registry_path=registry_path(env),
            airflow_port=int(env.get("CLOUDAGENT_AIRFLOW_PORT", "8080")),
            receiver_port=int(env.get("CLOUDAGENT_RECEIVER_PORT", "8081")),
            simulator_port=int(env.get("CLOUDAGENT_SIMULATOR_PORT", "8765")),
            warehouse_db_url=env.get("CLOUDAGENT_DB_URL") or f"sqlite:///{data_dir / 'cloudagent.db'}",
            metadata_db_url=metadata_db_url,
            real_api=real_api,
            callback_base_url=env.get("CLOUDAGENT_CALLBACK_BASE_URL") or None,
            campaigns=campaigns_setting(env, () if real_api else DEMO_CAMPAIGNS),
            executor=executor,
            workers=workers,
            celery_broker=broker,
            receiver_2_port=int(env.get("CLOUDAGENT_RECEIVER_2_PORT", "8082")),
            accounts=accounts_setting(env, real_api),
        )

    @property
    def celery(self) -> bool:
        return self.executor == "celery"

    def broker(self) -> str:
        """The Celery broker, for printing (no credentials); "" with LocalExecutor."""
        return _without_credentials(self.celery_broker) if self.celery_broker else ""

    def cloudagent(self) -> str:
        """Which CloudAgent the stack talks to, for printing (no credentials)."""
        if self.real_api is None:
            users = (DEMO_USER, SECOND_USER)[: self.accounts]
            return f"the simulator on http://{LOOPBACK}:{self.simulator_port} (account {', '.join(users)})"
        return f"a real CloudAgent at {_without_credentials(self.real_api['host'])}"


@dataclass(frozen=True)
class StackState:
    """What ``localstack.json`` records: the addresses, every process started and when each step happened."""

    airflow_url: str
    receiver_url: str
    simulator_url: str | None
    airflow_home: str
    processes: tuple[StartedProcess, ...]
    cloudagent: str = ""  # which CloudAgent it talks to (StackSettings.cloudagent)
    #: (step, wall-clock seconds) in the order they happened: "<name> started", "<name> ready", ...
    events: tuple[tuple[str, float], ...] = field(default=())
    executor: str = EXECUTORS["local"]
    broker: str = ""  # the Celery broker, without credentials ("" with LocalExecutor)
    receiver_2_url: str | None = None  # the second receiver (Celery: even workers call back to it)
    #: Celery worker hostname (``worker-N@<host>``, what its tasks report) -> its name in ``processes``.
    workers: dict[str, str] = field(default_factory=dict)
    #: The warehouse's URL, password hidden: what CLOUDAGENT_DB_URL must be for the CLI to read it.
    warehouse: str = ""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> StackState:
        data: dict[str, Any] = json.loads(path.read_text())
        data["processes"] = tuple(StartedProcess(**item) for item in data["processes"])
        data["events"] = tuple((str(step), float(at)) for step, at in data.get("events", ()))
        return cls(**data)

    def event_time(self, step: str) -> float:
        return dict(self.events)[step]

    def admin_password(self) -> str | None:
        """The admin password Airflow's simple auth manager generated (None until the api-server made it)."""
        path = Path(self.airflow_home) / "simple_auth_manager_passwords.json.generated"
        try:
            return str(json.loads(path.read_text())[ADMIN_USER])
        except (OSError, ValueError, KeyError):
            return None


def recorded_stack(paths: StackPaths) -> StackState | None:
    """The stack recorded in the folder, running or not (None without a readable state file)."""
    try:
        return StackState.load(paths.state_path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_stack(paths: StackPaths) -> StackState | None:
    """The recorded stack if any of its processes is still alive."""
    state = recorded_stack(paths)
    return state if state is not None and still_running(state.processes) else None


def stacks_elsewhere(paths: StackPaths) -> list[tuple[Path, StackState]]:
    """The running stacks of the user's registry outside ``paths.data_dir``: (folder, state) each.

    Entries whose state file is gone are dropped from the registry (a stack that is starting already has
    one, so it is never dropped by mistake).
    """
    registry, found, gone = paths.registry, [], []
    for state_path in registry.state_paths():
        if state_path == paths.state_path:
            continue
        if not state_path.exists():
            gone.append(state_path)
            continue
        other = StackPaths(state_path.parent, paths.registry_path)
        if (state := running_stack(other)) is not None:
            found.append((other.data_dir, state))
    registry.remove(*gone)
    return found


def elsewhere_report(paths: StackPaths) -> str:
    """What runs outside this folder, with the command that stops each ("" when nothing does)."""
    others = stacks_elsewhere(paths)
    lines = []
    for data_dir, state in others:
        lines.append(f"a local stack runs in {data_dir} (Airflow UI {state.airflow_url}); stop it with:")
        lines.append(f"    {make_command(data_dir)}")
    return "\n".join(lines)


def _airflow_health(base_url: str) -> dict[str, Any] | None:
    """The health answer (``/api/v2/monitor/health``, no login needed); None while it does not answer."""
    try:
        response = httpx.get(f"{base_url}/api/v2/monitor/health", timeout=5)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _healthy(health: Mapping[str, Any] | None, part: str) -> bool:
    return ((health or {}).get(part) or {}).get("status") == "healthy"


def api_token(base_url: str, password: str) -> str:
    """A REST API bearer token for the admin user."""
    response = httpx.post(
        f"{base_url}/auth/token", json={"username": ADMIN_USER, "password": password}, timeout=10
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def _dag_registered(base_url: str, state: StackState) -> bool:
    """True once the dag-processor has parsed the DAG and the REST API shows it (the UI can trigger it)."""
    password = state.admin_password()
    if password is None:
        return False
    try:  # a busy api-server may time out: not ready yet
        headers = {"Authorization": f"Bearer {api_token(base_url, password)}"}
        return httpx.get(f"{base_url}/api/v2/dags/{DAG_ID}", headers=headers, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def stack_airflow_env(
    settings: StackSettings, receiver_url: str, simulator_url: str | None
) -> dict[str, str]:
    """The environment of every Airflow process of the stack (and of ``localstack airflow ...`` commands);
    a Celery worker's adds its name and its receiver (:func:`worker_env`)."""
    second_account = None
    if settings.real_api is None:
        assert simulator_url is not None, "the stack runs the simulator when no real CloudAgent is configured"
        api_connection = {"host": simulator_url, "login": DEMO_USER, "password": DEMO_API_KEY}
        if settings.accounts > 1:
            second_account = {"host": simulator_url, "login": SECOND_USER, "password": SECOND_API_KEY}
    else:
        api_connection = dict(settings.real_api)
    airflow_url = f"http://{LOOPBACK}:{settings.airflow_port}"
    return {
        **airflow_env(
            settings.airflow_home,
            metadata_db_url=settings.metadata_db_url,
            warehouse_db_url=settings.warehouse_db_url,
            api_connection=api_connection,
            callback_base_url=settings.callback_base_url or receiver_url,
            campaigns=settings.campaigns,
            second_account=second_account,
        ),
        "AIRFLOW__CORE__EXECUTOR": EXECUTORS["local"],
        **(celery_env(settings.celery_broker or "", settings.metadata_db_url) if settings.celery else {}),
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{airflow_url}/execution/",
        "AIRFLOW__API__BASE_URL": airflow_url,
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        # Every component signs and checks task and UI tokens with the same key, kept in the Airflow home.
        "AIRFLOW__API_AUTH__JWT_SECRET": _jwt_secret(settings.airflow_home),
        # The CloudAgent page's backfill commands run the Airflow CLI of this stack, not ~/airflow's.
        "CLOUDAGENT_AIRFLOW_COMMAND": wrapper_command(settings),
    }


def wrapper_command(settings: StackSettings) -> str:
    """The command that runs the Airflow CLI against this stack (its home and metadata database): what
    ``CLOUDAGENT_AIRFLOW_COMMAND`` is set to, so that a pasted ``airflow backfill create`` reaches this
    Airflow. It carries the settings that differ from the defaults and hold no secret (a metadata URL with a
    password is left out: export ``CLOUDAGENT_AIRFLOW_DB_URL`` before pasting)."""
    given = {
        "CLOUDAGENT_LOCALSTACK_DIR": str(settings.data_dir),
        "CLOUDAGENT_AIRFLOW_PORT": str(settings.airflow_port),
        "CLOUDAGENT_RECEIVER_PORT": str(settings.receiver_port),
        "CLOUDAGENT_SIMULATOR_PORT": str(settings.simulator_port),
    }
    defaults = {"CLOUDAGENT_AIRFLOW_PORT": "8080", "CLOUDAGENT_RECEIVER_PORT": "8081",
                "CLOUDAGENT_SIMULATOR_PORT": "8765"}  # fmt: skip
    words = [f"{name}={value}" for name, value in given.items() if defaults.get(name) != value]
    default_metadata = f"sqlite:///{settings.data_dir / 'airflow' / 'airflow.db'}"
    if settings.metadata_db_url != default_metadata and urlsplit(settings.metadata_db_url).password is None:
        words.append(f"CLOUDAGENT_AIRFLOW_DB_URL={settings.metadata_db_url}")
    if settings.celery:
        words += [f"CLOUDAGENT_EXECUTOR={settings.executor}", f"CLOUDAGENT_WORKERS={settings.workers}"]
    return shlex.join(["env", *words, sys.executable, "-m", "cloudagent_dev.localstack", "airflow"])


def callback_warning(settings: StackSettings, receiver_url: str) -> str | None:
    """A real CloudAgent cannot call back to a loopback or private address: the warning, or None."""
    from cloudagent_etl.preflight import is_real_cloudagent, unreachable_callback_reason

    if settings.real_api is None or not is_real_cloudagent(settings.real_api["host"]):
        return None
    url = settings.callback_base_url or receiver_url
    reason = unreachable_callback_reason(url)
    if reason is None:
        return None
    return (
        f"WARNING: the callback URL {url} is not reachable by CloudAgent ({reason}): every export would "
        "expire. Set CLOUDAGENT_CALLBACK_BASE_URL to the receiver's public URL (a tunnel or a proxy with TLS "
        "forwarding to it)."
    )


def simulator_args(settings: StackSettings) -> list[str]:
    """``cloudagent-etl simulate``'s arguments: the demo account, and the second one when asked for."""
    campaigns = ",".join(settings.campaigns or DEMO_CAMPAIGNS)
    if settings.accounts == 1:
        return ["simulate", "--user", DEMO_USER, "--api-key", DEMO_API_KEY, "--campaigns", campaigns]
    accounts = [(DEMO_USER, DEMO_API_KEY), (SECOND_USER, SECOND_API_KEY)]
    return [
        "simulate",
        *(arg for user, key in accounts for arg in ("--account", f"{user}:{key}:{campaigns}")),
    ]


def worker_env(env: Mapping[str, str], hostname: str, callback_base_url: str) -> dict[str, str]:
    """A local Celery worker's environment: the stack's, its name (reported by its tasks as their hostname,
    see :func:`worker_hostname`) and the receiver its tasks give CloudAgent as callback URL."""
    return {
        **env,
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": WORKER_HOSTNAME_CALLABLE,
        WORKER_HOSTNAME_VARIABLE: hostname,
        "CLOUDAGENT_CALLBACK_BASE_URL": callback_base_url,
    }


def worker_hostnames(count: int) -> list[str]:
    """``worker-1@<host>`` ... : distinct Celery node names for the workers that share this machine."""
    return [f"worker-{number}@{socket.gethostname()}" for number in range(1, count + 1)]


def _broker_answers(broker_url: str) -> bool:
    url = httpx.URL(broker_url)
    port = url.port or {"redis": 6379, "rediss": 6380, "amqp": 5672, "amqps": 5671}.get(url.scheme, 0)
    try:
        with socket.create_connection((url.host or LOOPBACK, port), timeout=3):
            return True
    except OSError:
        return False


def _worker_ready(process: StartedProcess, hostname: str, log_offset: int) -> bool:
    """True once the worker's log (past ``log_offset``: the file is appended to across starts) says it is
    connected to the broker and consuming (Celery's ``<name> ready.``)."""
    try:
        with open(process.log_path, "rb") as log:
            log.seek(log_offset)
            return f"{hostname} ready.".encode() in log.read()
    except OSError:
        return False


def _jwt_secret(airflow_home: Path) -> str:
    path = airflow_home / "jwt_secret"
    if not path.exists():
        airflow_home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def start_stack(
    settings: StackSettings, timeout: float = 240, progress: Progress | None = None
) -> StackState:
    """Start the stack (see the module doc) and return its state once the UI answers and the DAG is parsed.

    Each step is reported on ``progress`` as it ends. On any failure everything started so far is stopped
    again, the state file removed and the stack taken out of the registry.
    """
    progress = progress or Progress()
    if (state := running_stack(settings)) is not None:
        progress.say(
            f"the local stack is already running: {state.airflow_url} (state in {settings.state_path})"
        )
        return state
    ports = {"airflow": settings.airflow_port, "receiver": settings.receiver_port}
    if settings.celery:
        ports["second receiver"] = settings.receiver_2_port
    if settings.real_api is None:
        ports["simulator"] = settings.simulator_port
    busy = [f"{name} port {port}" for name, port in ports.items() if not port_is_free(port)]
    if busy:
        elsewhere = elsewhere_report(settings)
        raise RuntimeError(
            f"{', '.join(busy)} already in use on {LOOPBACK}; choose others with CLOUDAGENT_AIRFLOW_PORT, "
            "CLOUDAGENT_RECEIVER_PORT, CLOUDAGENT_SIMULATOR_PORT"
            + (", CLOUDAGENT_RECEIVER_2_PORT" if settings.celery else "")
            + (f"\n{elsewhere}" if elsewhere else "")
        )
    if settings.celery_broker and not _broker_answers(settings.celery_broker):
        raise RuntimeError(
            f"the Celery broker {settings.broker()} does not answer: start it, or choose another with "
            "CLOUDAGENT_CELERY_BROKER"
        )
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    started: list[StartedProcess] = []
    events: list[tuple[str, float]] = []
    airflow_url = f"http://{LOOPBACK}:{settings.airflow_port}"
    urls: dict[str, str | None] = {"receiver": "", "simulator": None, "receiver-2": None}
    hostnames = worker_hostnames(settings.workers)

    def record() -> StackState:
        state = StackState(
            airflow_url,
            urls["receiver"] or "",
            urls["simulator"],
            str(settings.airflow_home),
            tuple(started),
            settings.cloudagent(),
            tuple(events),
            EXECUTORS[settings.executor],
            settings.broker(),
            urls["receiver-2"],
            {hostname: hostname.split("@")[0] for hostname in hostnames},
            warehouse=_password_hidden(settings.warehouse_db_url),
        )
        state.save(settings.state_path)
        return state

    def note(step: str, detail: str = "") -> StackState:
        events.append((step, time.time()))
        progress.say(step + detail)
        return record()

    def start_airflow(name: str, args: Sequence[str], env: Mapping[str, str]) -> StartedProcess:
        command = [str(VENV_BIN / "airflow"), *args]
        process = start_process(name, command, env, log_dir / f"airflow-{name}.log")
        started.append(process)
        note(f"{name} started", f" (pid {process.pid}, log {process.log_path})")
        return process

    try:
        record()  # before registering: the registry only lists folders that have a state file
        settings.registry.add(settings.state_path)
        progress.timed("warehouse migrate", lambda: migrate(settings.warehouse_db_url))
        server_env = {
            "CLOUDAGENT_DB_URL": settings.warehouse_db_url,
            "CLOUDAGENT_DATA_DIR": str(settings.data_dir),
        }
        servers = [("receiver", ["receiver"], settings.receiver_port)]
        if settings.celery:  # a second receiver on the same database: callbacks may land on either
            servers.append(("receiver-2", ["receiver"], settings.receiver_2_port))
        if settings.real_api is None:
            servers.insert(0, ("simulator", simulator_args(settings), settings.simulator_port))
        for name, args, port in servers:
            server = start_server(name, args, port, log_dir / f"{name}.log", server_env)
            started.append(server.started)
            urls[name] = server.base_url
            note(f"{name} ready", f" on {server.base_url} (pid {server.pid})")
        env = stack_airflow_env(settings, urls["receiver"] or "", urls["simulator"])
        prepare_airflow_metadata(env, log_dir / "airflow-setup.log", progress, settings.accounts)

        began = time.perf_counter()
        start_airflow("api-server", ["api-server"], env)

        def api_server_up() -> bool:
            return _healthy(_airflow_health(airflow_url), "metadatabase")

        wait_until(f"the api-server on {airflow_url}", api_server_up, started, timeout)
        progress.timings["api-server ready"] = time.perf_counter() - began
        note("api-server ready", f" on {airflow_url} after {progress.timings['api-server ready']:.1f} s")

        began = time.perf_counter()
        start_airflow("scheduler", ["scheduler", "--skip-serve-logs"], env)
        start_airflow("dag-processor", ["dag-processor"], env)
        start_airflow("triggerer", ["triggerer", "--skip-serve-logs"], env)
        workers = {}
        receivers = [urls["receiver"] or "", urls["receiver-2"] or urls["receiver"] or ""]
        for number, hostname in enumerate(hostnames):
            name = hostname.split("@")[0]
            log_path = log_dir / f"airflow-{name}.log"
            offset = log_path.stat().st_size if log_path.exists() else 0
            callback_url = settings.callback_base_url or receivers[number % 2]
            command = ["celery", "worker", "--celery-hostname", hostname, "--skip-serve-logs"]
            command += ["--concurrency", CELERY_SETTINGS["AIRFLOW__CELERY__WORKER_CONCURRENCY"]]
            command += ["--without-mingle", "--without-gossip"]
            process = start_airflow(name, command, worker_env(env, hostname, callback_url))
            workers[name] = (process, hostname, offset)
        recorded = record()
        pending = {**HEALTH_PARTS, **{name: name for name in workers}}

        def components_healthy() -> bool:
            health = _airflow_health(airflow_url)
            for part, name in list(pending.items()):
                if _worker_ready(*workers[part]) if part in workers else _healthy(health, part):
                    del pending[part]
                    note(f"{name} ready", f" after {time.perf_counter() - began:.1f} s")
            return not pending

        waited_for = [*HEALTH_PARTS.values(), *workers]
        wait_until("Airflow's " + ", ".join(waited_for), components_healthy, started, timeout)
        progress.timings[", ".join(waited_for) + " ready"] = time.perf_counter() - began
        began = time.perf_counter()
        wait_until(
            f"DAG {DAG_ID} in Airflow", lambda: _dag_registered(airflow_url, recorded), started, timeout
        )
        progress.timings[f"DAG {DAG_ID} registered"] = time.perf_counter() - began
        state = note(f"DAG {DAG_ID} registered", " (the UI can trigger it)")
    except BaseException:
        survivors = stop_processes(started)
        if survivors:
            print(f"could not stop: {survivors}", file=sys.stderr)
        else:
            settings.state_path.unlink(missing_ok=True)
            settings.registry.remove(settings.state_path)
        raise
    return state


def stop_stack(paths: StackPaths) -> list[str]:
    """Stop every recorded process group, check that none is left, remove the state file and the registry
    entry; return what survived (and keep both records while anything does)."""
    state = recorded_stack(paths)
    if state is None:
        return []
    survivors = stop_processes(state.processes)
    left = still_running(state.processes)
    if survivors or left:
        return survivors or [f"{process.pid} {process.name()}" for process in left]
    paths.state_path.unlink(missing_ok=True)
    paths.registry.remove(paths.state_path)
    return []


def describe(state: StackState, data_dir: Path) -> str:
    """Where the stack answers, how to log in, which CloudAgent it talks to, where its files are."""
    password = (
        state.admin_password() or "(see simple_auth_manager_passwords.json.generated in the Airflow home)"
    )
    lines = [
        f"Airflow UI      {state.airflow_url}   login: {ADMIN_USER} / {password}",
        f"receiver        {state.receiver_url}"
        + (
            f" and {state.receiver_2_url} (even workers call back to the second)"
            if state.receiver_2_url
            else ""
        ),
        f"CloudAgent      {state.cloudagent or state.simulator_url}",
        f"warehouse       {state.warehouse} (for cloudagent-etl status and doctor: "
        f"export CLOUDAGENT_DB_URL={shlex.quote(state.warehouse)})",
        f"Airflow home    {state.airflow_home} (logs in {data_dir / 'logs'})",
        f"executor        {state.executor}"
        + (f", broker {state.broker}, workers {', '.join(state.workers)}" if state.broker else ""),
    ]
    return "\n".join(lines)


def _start(settings: StackSettings) -> int:
    progress = Progress()
    print(f"starting the local Airflow stack in {settings.data_dir} ...", flush=True)
    print(f"CloudAgent: {settings.cloudagent()}", flush=True)
    if warning := callback_warning(settings, f"http://{LOOPBACK}:{settings.receiver_port}"):
        print(warning, flush=True)
    campaigns = ", ".join(settings.campaigns) or "none set (set the Variable cloudagent_campaigns in the UI)"
    print(f"campaigns: {campaigns}", flush=True)
    if settings.celery:
        print(f"executor: CeleryExecutor, {settings.workers} workers, broker {settings.broker()}", flush=True)
    try:
        state = start_stack(settings, progress=progress)
    except (RuntimeError, KeyboardInterrupt) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print("timings:")
    print(progress.summary())
    print(describe(state, settings.data_dir))
    print("processes       " + ", ".join(f"{p.name}={p.pid}" for p in state.processes))
    print(f"status          {make_command(settings.data_dir, 'airflow-status')}")
    print(f"stop with       {make_command(settings.data_dir)}")
    return 0


def _stop(paths: StackPaths) -> int:
    state = recorded_stack(paths)
    if state is not None and still_running(state.processes):
        survivors = stop_stack(paths)
        if survivors:
            print(f"still running after stop (state kept in {paths.state_path}): " + "; ".join(survivors),
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"the local stack in {paths.data_dir} is stopped: none of its processes is running")
        elsewhere = elsewhere_report(paths)
        if elsewhere:
            print(f"still running elsewhere:\n{elsewhere}")
        return 0
    if state is not None:
        stop_stack(paths)
        print(f"the local stack recorded in {paths.data_dir} had already exited; removed its state file")
    else:
        print(f"no local stack recorded in {paths.data_dir}: nothing stopped there")
    elsewhere = elsewhere_report(paths)
    if elsewhere:
        print(elsewhere)
        return 3
    print(f"no other local stack is running (registry {paths.registry_path})")
    return 0


def _status(paths: StackPaths) -> int:
    state = recorded_stack(paths)
    code = 3
    if state is None:
        print(f"no local stack recorded in {paths.data_dir}")
    else:
        alive = [item.process() is not None for item in state.processes]
        code = 0 if alive and all(alive) else 1 if any(alive) else 3
        verdict = {0: "running", 1: "partly running (restart: make airflow-stop, then make airflow)",
                   3: "not running (its processes exited)"}[code]  # fmt: skip
        print(f"the local stack in {paths.data_dir} is {verdict}")
        for item, up in zip(state.processes, alive, strict=True):
            print(f"  {item.name:<14} pid {item.pid:<8} {'alive' if up else 'exited':<7} log {item.log_path}")
        print(describe(state, paths.data_dir))
        print(f"stop with       {make_command(paths.data_dir)}")
    elsewhere = elsewhere_report(paths)
    if elsewhere:
        print(elsewhere)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudagent_dev.localstack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("action", choices=["start", "stop", "status", "airflow"])
    parser.add_argument("airflow_args", nargs=argparse.REMAINDER, help="after `airflow`: its CLI arguments")
    parsed = parser.parse_args(argv)
    action, paths = parsed.action, StackPaths.from_env()
    if action == "stop":
        return _stop(paths)
    if action == "status":
        return _status(paths)
    try:
        settings = StackSettings.from_env()
    except ConfigurationError as exc:
        print(f"refused, nothing started: {exc}", file=sys.stderr)
        return 2
    if action == "start":
        return _start(settings)
    # `airflow ...` in the stack's environment, so that e.g. `airflow backfill create` uses its metadata DB.
    state = running_stack(settings)
    if state is None:
        elsewhere = elsewhere_report(settings)
        print(f"the local stack in {settings.data_dir} is not running (make airflow)", file=sys.stderr)
        if elsewhere:
            print(elsewhere, file=sys.stderr)
        return 3
    env = stack_airflow_env(settings, state.receiver_url, state.simulator_url)
    command = [str(VENV_BIN / "airflow"), *parsed.airflow_args]
    return subprocess.run(command, env=env, check=False).returncode  # noqa: S603


if __name__ == "__main__":
    sys.exit(main())
