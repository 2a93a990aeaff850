"""``make airflow``: the whole stack on this machine, without Docker, and the Airflow plumbing it shares with
``make demo``.

``start`` runs, detached and on loopback only, under ``CLOUDAGENT_LOCALSTACK_DIR`` (default
``./data/airflow-local``):

- the CloudAgent simulator (``CLOUDAGENT_SIMULATOR_PORT``, default 8765) with the demo account and
  campaigns — unless ``CLOUDAGENT_API_BASE_URL``, ``CLOUDAGENT_API_USER`` and ``CLOUDAGENT_API_KEY`` point at
  a real CloudAgent;
- the callback receiver (``CLOUDAGENT_RECEIVER_PORT``, default 8081);
- Airflow's api-server (UI and REST API, ``CLOUDAGENT_AIRFLOW_PORT``, default 8080), scheduler
  (LocalExecutor), dag-processor and triggerer (the wait for the callback is deferred to it), each as its
  own process group. Their log servers are off: every component reads the same local log folder.

The warehouse is ``CLOUDAGENT_DB_URL`` (default: a SQLite file in the folder, migrated at start). Airflow's
metadata is ``CLOUDAGENT_AIRFLOW_DB_URL`` (PostgreSQL, for heavier use) or a SQLite file in the Airflow
home: enough for one laptop. The connections ``cloudagent_default``/``cloudagent_db`` and the Variable
``cloudagent_campaigns`` (``CLOUDAGENT_CAMPAIGNS``, comma-separated) are ``AIRFLOW_CONN_*``/``AIRFLOW_VAR_*``
in every Airflow process's environment; the pool ``cloudagent_api`` (1 slot) is set in the metadata DB; DAGs
start unpaused. The UI login is ``admin`` with the password Airflow generates into the Airflow home.

Every started process is recorded (PID = process group id, and its start time, so a reused PID is never
mistaken for ours) in ``localstack.json`` as soon as it starts. ``stop`` signals exactly those process
groups (and the task processes that Airflow put in groups of their own), waits, checks that none is left
and removes the state file. A second ``start`` while the recorded stack is alive starts nothing.

This module never imports Airflow: Airflow is run as subprocesses from this interpreter's ``bin`` folder.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from cloudagent_dev.processes import (
    LOOPBACK,
    StartedProcess,
    answers,
    log_tail,
    port_is_free,
    start_process,
    still_running,
    stop_processes,
    wait_until,
)
from cloudagent_dev.servers import start_server
from cloudagent_etl.db import migrate

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DAG_ID = "cloudagent_dial_status"
DEMO_USER = "demo_user"
DEMO_API_KEY = "demo-api-key"
DEMO_CAMPAIGNS = ("Sales", "Support", "Renewals")
POOL = ("cloudagent_api", "1", "CloudAgent API: one export request at a time")
ADMIN_USER = "admin"
STATE_FILE = "localstack.json"


# --- Airflow: one way to build its environment and to run its CLI ----------------------------------------


def connection_uri(db_url: str) -> str:
    """The ``cloudagent_db`` connection URI for a database URL (the hook picks the driver itself)."""
    return db_url.replace("postgresql+psycopg://", "postgresql://")


def airflow_env(
    airflow_home: Path,
    *,
    metadata_db_url: str,
    warehouse_db_url: str,
    api_connection: Mapping[str, str],
    callback_base_url: str,
    campaigns: Sequence[str] | None,
) -> dict[str, str]:
    """The environment every Airflow process of ours runs with: home, this repo's DAGs, the
    metadata DB, the connections ``cloudagent_default``/``cloudagent_db``, the campaign Variable, the
    receiver's URL, and the venv's ``bin`` first on PATH (Airflow starts ``airflow`` sub-commands by name).
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
    }
    if campaigns:
        env["AIRFLOW_VAR_CLOUDAGENT_CAMPAIGNS"] = json.dumps(list(campaigns))
    return env


def run_airflow(args: Sequence[str], env: Mapping[str, str], log_path: Path) -> float:
    """Run the venv's ``airflow <args>``, output to ``log_path``; return seconds taken (raise on failure)."""
    started = time.perf_counter()
    with log_path.open("ab") as log:
        result = subprocess.run(  # noqa: S603  (the venv's airflow, fixed arguments)
            [str(VENV_BIN / "airflow"), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"`airflow {' '.join(args)}` failed ({result.returncode}); last lines:\n{log_tail(log_path)}"
        )
    return time.perf_counter() - started


def prepare_airflow_metadata(env: Mapping[str, str], log_path: Path) -> dict[str, float]:
    """Migrate Airflow's metadata DB and set the ``cloudagent_api`` pool; return the seconds each took."""
    return {
        "airflow db migrate": run_airflow(["db", "migrate"], env, log_path),
        "airflow pools set": run_airflow(["pools", "set", *POOL], env, log_path),
    }


# --- the local stack ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackSettings:
    """Where and how ``make airflow`` runs; every field has an environment variable (see the module doc)."""

    data_dir: Path
    airflow_port: int
    receiver_port: int
    simulator_port: int
    warehouse_db_url: str
    metadata_db_url: str
    real_api: Mapping[str, str] | None  # host/login/password of a real CloudAgent; None = the simulator
    callback_base_url: str | None  # public URL of the receiver when CloudAgent is real
    campaigns: tuple[str, ...]

    @property
    def airflow_home(self) -> Path:
        return self.data_dir / "airflow"

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackSettings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("CLOUDAGENT_LOCALSTACK_DIR", "data/airflow-local")).absolute()
        api = [env.get(f"CLOUDAGENT_API_{name}", "") for name in ("BASE_URL", "USER", "KEY")]
        real_api = dict(zip(("host", "login", "password"), api, strict=True)) if all(api) else None
        default_campaigns = "" if real_api else ",".join(DEMO_CAMPAIGNS)
        campaigns = env.get("CLOUDAGENT_CAMPAIGNS", default_campaigns)
        return cls(
            data_dir=data_dir,
            airflow_port=int(env.get("CLOUDAGENT_AIRFLOW_PORT", "8080")),
            receiver_port=int(env.get("CLOUDAGENT_RECEIVER_PORT", "8081")),
            simulator_port=int(env.get("CLOUDAGENT_SIMULATOR_PORT", "8765")),
            warehouse_db_url=env.get("CLOUDAGENT_DB_URL") or f"sqlite:///{data_dir / 'cloudagent.db'}",
            metadata_db_url=env.get("CLOUDAGENT_AIRFLOW_DB_URL")
            or f"sqlite:///{data_dir / 'airflow' / 'airflow.db'}",
            real_api=real_api,
            callback_base_url=env.get("CLOUDAGENT_CALLBACK_BASE_URL") or None,
            campaigns=tuple(name.strip() for name in campaigns.split(",") if name.strip()),
        )


@dataclass(frozen=True)
class StackState:
    """What ``localstack.json`` records: the addresses and every process started."""

    airflow_url: str
    receiver_url: str
    simulator_url: str | None
    airflow_home: str
    processes: tuple[StartedProcess, ...]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> StackState:
        data = json.loads(path.read_text())
        data["processes"] = tuple(StartedProcess(**item) for item in data["processes"])
        return cls(**data)

    def admin_password(self) -> str | None:
        """The admin password Airflow's simple auth manager generated (None until the api-server made it)."""
        path = Path(self.airflow_home) / "simple_auth_manager_passwords.json.generated"
        try:
            return str(json.loads(path.read_text())[ADMIN_USER])
        except (OSError, ValueError, KeyError):
            return None


def running_stack(settings: StackSettings) -> StackState | None:
    """The recorded stack if any of its processes is still alive."""
    if not settings.state_path.exists():
        return None
    state = StackState.load(settings.state_path)
    return state if still_running(state.processes) else None


def _airflow_health(base_url: str) -> bool:
    """True when the metadata DB, scheduler, triggerer and dag-processor report healthy."""

    def healthy(response: httpx.Response) -> bool:
        if response.status_code != 200:
            return False
        body = response.json()
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return all((body.get(part) or {}).get("status") == "healthy" for part in parts)

    return answers(f"{base_url}/api/v2/monitor/health", healthy)


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
    """The environment of every Airflow process of the stack (and of ``localstack airflow ...`` commands)."""
    if settings.real_api is None:
        assert simulator_url is not None, "the stack runs the simulator when no real CloudAgent is configured"
        api_connection = {"host": simulator_url, "login": DEMO_USER, "password": DEMO_API_KEY}
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
        ),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{airflow_url}/execution/",
        "AIRFLOW__API__BASE_URL": airflow_url,
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        # Every component signs and checks task and UI tokens with the same key, kept in the Airflow home.
        "AIRFLOW__API_AUTH__JWT_SECRET": _jwt_secret(settings.airflow_home),
    }


def _jwt_secret(airflow_home: Path) -> str:
    path = airflow_home / "jwt_secret"
    if not path.exists():
        airflow_home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def start_stack(settings: StackSettings, timeout: float = 240) -> StackState:
    """Start the stack (see the module doc) and return its state once the UI answers and the DAG is parsed.

    On any failure everything started so far is stopped again and the state file removed.
    """
    if (state := running_stack(settings)) is not None:
        print(f"the local stack is already running: {state.airflow_url} (state in {settings.state_path})")
        return state
    ports = {"airflow": settings.airflow_port, "receiver": settings.receiver_port}
    if settings.real_api is None:
        ports["simulator"] = settings.simulator_port
    busy = [f"{name} port {port}" for name, port in ports.items() if not port_is_free(port)]
    if busy:
        raise RuntimeError(
            f"{', '.join(busy)} already in use on {LOOPBACK}; choose others with CLOUDAGENT_AIRFLOW_PORT, "
            "CLOUDAGENT_RECEIVER_PORT, CLOUDAGENT_SIMULATOR_PORT"
        )
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    started: list[StartedProcess] = []
    airflow_url = f"http://{LOOPBACK}:{settings.airflow_port}"

    def record(receiver_url: str = "", simulator_url: str | None = None) -> StackState:
        state = StackState(
            airflow_url, receiver_url, simulator_url, str(settings.airflow_home), tuple(started)
        )
        state.save(settings.state_path)
        return state

    try:
        timings = {"warehouse migrate": _timed(lambda: migrate(settings.warehouse_db_url))}
        server_env = {
            "CLOUDAGENT_DB_URL": settings.warehouse_db_url,
            "CLOUDAGENT_DATA_DIR": str(settings.data_dir),
        }
        simulator_url = None
        if settings.real_api is None:
            simulator_args = ["simulate", "--user", DEMO_USER, "--api-key", DEMO_API_KEY]
            simulator_args += ["--campaigns", ",".join(settings.campaigns or DEMO_CAMPAIGNS)]
            simulator = start_server(
                "simulator", simulator_args, settings.simulator_port, log_dir / "simulator.log", server_env
            )
            started.append(simulator.started)
            simulator_url = simulator.base_url
            record(simulator_url=simulator_url)
        receiver = start_server(
            "receiver", ["receiver"], settings.receiver_port, log_dir / "receiver.log", server_env
        )
        started.append(receiver.started)
        receiver_url = receiver.base_url
        record(receiver_url, simulator_url)
        env = stack_airflow_env(settings, receiver_url, simulator_url)
        timings.update(prepare_airflow_metadata(env, log_dir / "airflow-setup.log"))
        components = {
            "api-server": ["api-server"],
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer", "--skip-serve-logs"],
        }
        for name, args in components.items():
            command = [str(VENV_BIN / "airflow"), *args]
            started.append(start_process(name, command, env, log_dir / f"airflow-{name}.log"))
            record(receiver_url, simulator_url)
        state = record(receiver_url, simulator_url)
        began = time.perf_counter()
        wait_until("Airflow (api-server, scheduler, triggerer, dag-processor)",
                   lambda: _airflow_health(airflow_url), started, timeout)  # fmt: skip
        wait_until(f"DAG {DAG_ID} in Airflow", lambda: _dag_registered(airflow_url, state), started, timeout)
        timings["airflow components ready"] = time.perf_counter() - began
    except BaseException:
        survivors = stop_processes(started)
        settings.state_path.unlink(missing_ok=True)
        if survivors:
            print(f"could not stop: {survivors}", file=sys.stderr)
        raise
    for step, seconds in timings.items():
        print(f"  {step:<26} {seconds:6.1f} s")
    return state


def _timed(step: Callable[[], object]) -> float:
    began = time.perf_counter()
    step()
    return time.perf_counter() - began


def stop_stack(settings: StackSettings) -> list[str]:
    """Stop every recorded process group, check that none is left, remove the state file; return survivors."""
    if not settings.state_path.exists():
        print(f"no local stack recorded in {settings.state_path}")
        return []
    state = StackState.load(settings.state_path)
    survivors = stop_processes(state.processes)
    if survivors:
        return survivors
    settings.state_path.unlink()
    return []


def describe(state: StackState) -> str:
    password = (
        state.admin_password() or "(see simple_auth_manager_passwords.json.generated in the Airflow home)"
    )
    lines = [
        f"Airflow UI      {state.airflow_url}   login: {ADMIN_USER} / {password}",
        f"receiver        {state.receiver_url}",
        f"simulator       {state.simulator_url or '(none: a real CloudAgent is configured)'}",
        f"Airflow home    {state.airflow_home} (logs in {Path(state.airflow_home).parent / 'logs'})",
        "processes       " + ", ".join(f"{p.name}={p.pid}" for p in state.processes),
        "stop with       make airflow-stop",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudagent_etl.localstack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("action", choices=["start", "stop", "status", "airflow"])
    parser.add_argument("airflow_args", nargs=argparse.REMAINDER, help="after `airflow`: its CLI arguments")
    parsed = parser.parse_args(argv)
    action, settings = parsed.action, StackSettings.from_env()
    if action == "airflow":
        # The stack's own environment, so that e.g. `airflow backfill create` uses its metadata DB.
        state = running_stack(settings)
        if state is None:
            print("the local stack is not running (make airflow)", file=sys.stderr)
            return 3
        env = stack_airflow_env(settings, state.receiver_url, state.simulator_url)
        command = [str(VENV_BIN / "airflow"), *parsed.airflow_args]
        return subprocess.run(command, env=env, check=False).returncode  # noqa: S603
    if action == "start":
        print(f"starting the local Airflow stack in {settings.data_dir} ...")
        try:
            state = start_stack(settings)
        except (RuntimeError, KeyboardInterrupt) as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
        print(describe(state))
        return 0
    if action == "stop":
        survivors = stop_stack(settings)
        if survivors:
            print("still running after stop: " + "; ".join(survivors), file=sys.stderr)
            return 1
        print("the local stack is stopped")
        return 0
    running = running_stack(settings)
    print(describe(running) if running else "the local stack is not running")
    return 0 if running else 3


if __name__ == "__main__":
    sys.exit(main())
