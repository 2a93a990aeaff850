"""Static checks of the docker-compose deployment (no Docker engine runs on the development machines).

Schema validity comes from the Compose specification itself; the semantic checks encode what the
deployment promises: no literal secrets, every variable documented, health-gated start-up, pinned images.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ["docker-compose.yaml", "docker-compose.celery.yaml"]
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN|FERNET", re.IGNORECASE)
IMAGE_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor")
LONG_RUNNING = (
    "postgres",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "receiver",
    "simulator",
)


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def env_example_names() -> set[str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if line and not line.startswith("#") and "=" in line}


@pytest.fixture(scope="module")
def main_services() -> dict[str, Any]:
    return load("docker-compose.yaml")["services"]


def test_compose_files_are_valid_against_the_compose_specification() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", *COMPOSE_FILES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_variable_used_is_documented_in_env_example(name: str) -> None:
    used = set(VARIABLE.findall((ROOT / name).read_text()))
    assert used, "the compose file reads no variables: expected the secrets to come from .env"
    assert used - env_example_names() == set()


def _depended_on(services: dict[str, Any]) -> dict[str, str]:
    conditions: dict[str, str] = {}
    for service in services.values():
        depends = service.get("depends_on") or {}
        for target, spec in depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends):
            conditions[target] = spec.get("condition", "service_started")
    return conditions


def test_dependencies_wait_for_health_or_completion(main_services: dict[str, Any]) -> None:
    depended_on = _depended_on(main_services)
    # The database every service needs and the one-shot migration job gate the start-up.
    assert {"postgres", "airflow-init"} <= set(depended_on), f"start-up is not gated: {depended_on}"
    for target, condition in depended_on.items():
        if condition == "service_completed_successfully":
            assert "restart" not in main_services[target], f"{target} is a one-shot job and must not restart"
        else:
            assert condition == "service_healthy", f"depends_on {target} must wait for it to be healthy"
            assert "healthcheck" in main_services[target], f"{target} is depended on but has no healthcheck"


def test_every_long_running_service_has_a_healthcheck(main_services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        assert "test" in main_services[name].get("healthcheck", {}), f"{name} has no healthcheck"


def test_the_celery_override_gates_on_redis_health_and_runs_workers() -> None:
    services = load("docker-compose.celery.yaml")["services"]
    assert "test" in services["redis"]["healthcheck"]
    assert services["airflow-worker"]["command"] == "celery worker"
    assert services["airflow-scheduler"]["depends_on"]["redis"]["condition"] == "service_healthy"
    executors = {
        name: s["environment"]["AIRFLOW__CORE__EXECUTOR"]
        for name, s in services.items()
        if "environment" in s
    }
    assert {"airflow-scheduler", "airflow-worker"} <= set(executors), executors
    assert set(executors.values()) == {"CeleryExecutor"}, executors


def test_the_project_is_installed_in_the_image_and_only_dags_are_mounted(
    main_services: dict[str, Any],
) -> None:
    """As in any existing Airflow: the package (and its provider) pip-installed, the DAG files dropped in."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY --chown=airflow:0 include /opt/cloudagent/include" in dockerfile
    assert "pip install --no-cache-dir --no-deps /opt/cloudagent" in dockerfile
    for name in (*IMAGE_SERVICES, "airflow-triggerer", "receiver", "simulator"):
        service = main_services[name]
        assert "PYTHONPATH" not in service.get("environment", {}), f"{name} still relies on PYTHONPATH"
        sources = {volume.split(":")[0] for volume in service.get("volumes", [])}
        assert sources & {"./include", "./plugins"} == set(), f"{name} mounts code the image installs"
    for name in IMAGE_SERVICES:
        mounted = {v.split(":")[0] for v in main_services[name]["volumes"]}
        assert "./dags" in mounted, f"{name} does not mount dags/"
    connection = main_services["airflow-scheduler"]["environment"]["AIRFLOW_CONN_CLOUDAGENT_DEFAULT"]
    assert '"conn_type": "cloudagent"' in connection  # the provider's type: its form and its hook


#: The images each compose file names (the others build or inherit theirs).
PINNED_IMAGES = {
    "docker-compose.yaml": ("postgres", "airflow-scheduler", "receiver"),
    "docker-compose.celery.yaml": ("redis",),
}


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_images_are_pinned(name: str) -> None:
    images = {
        service_name: s["image"] for service_name, s in load(name)["services"].items() if s.get("image")
    }
    assert set(PINNED_IMAGES[name]) <= set(images), f"{name}: images expected, found {sorted(images)}"
    for service_name, image in images.items():
        repository, _, tag = image.rpartition(":")
        assert repository, f"{service_name}: {image} has no tag"
        assert tag != "latest", f"{service_name}: {image} is not pinned"
        assert re.search(r"\d", tag), f"{service_name}: {image} is not pinned to a version"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2-python3\.11$", dockerfile, re.MULTILINE)


def test_the_receiver_port_is_published(main_services: dict[str, Any]) -> None:
    ports = main_services["receiver"]["ports"]
    assert any(str(port).endswith(":8000") for port in ports)
    assert main_services["receiver"]["command"][:1] == ["receiver"]


def _walk_environment(services: dict[str, Any]):
    for service_name, service in services.items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            yield service_name, key, str(value)


#: Settings that carry a secret in each compose file: the check below must have seen them.
SECRET_SETTINGS = {
    "docker-compose.yaml": {
        "POSTGRES_PASSWORD",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW_CONN_CLOUDAGENT_DB",
        "AIRFLOW_CONN_CLOUDAGENT_DEFAULT",
        "CLOUDAGENT_CALLBACK_TOKEN",
    },
    "docker-compose.celery.yaml": {"AIRFLOW__CELERY__RESULT_BACKEND"},
}


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_no_literal_secrets(name: str) -> None:
    checked: set[str] = set()
    for service_name, key, value in _walk_environment(load(name)["services"]):
        if SECRET_NAME.search(key) and not key.endswith("_FILE"):
            assert value.startswith("${"), f"{service_name}.{key} holds a literal value, not a ${{VAR}}"
            checked.add(key)
        # Credentials inside URLs (user:password@host) must come from variables too (a ${VAR:?message}
        # has spaces: read up to its closing brace).
        for credential in re.findall(r"://[^:/@\s]+:(\$\{[^}]*\}|[^@\s]+)@", value):
            assert credential.startswith("${"), f"{service_name}.{key} embeds a literal password"
            checked.add(key)
        if key.startswith("AIRFLOW_CONN_") and '"password"' in value:
            assert re.search(r'"password": "\$\{[A-Z_]+\}"', value), f"{service_name}.{key}"
            checked.add(key)
    missing = SECRET_SETTINGS[name] - checked
    assert not missing, f"{name}: secret-bearing settings not found (the check saw none of them): {missing}"


# --- the distributed deployment: the local Celery stack, the compose override, the README's Helm values -----

#: Celery's two addresses: the broker (compared by kind) and the result backend (the metadata database).
ADDRESSES = ("AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND")


def _local_stack_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    from cloudagent_dev.localstack import StackSettings, stack_airflow_env

    env = {
        "CLOUDAGENT_LOCALSTACK_DIR": str(tmp_path),
        "CLOUDAGENT_AIRFLOW_DB_URL": "postgresql://airflow@127.0.0.1:5432/airflow",
        **settings,
    }
    return stack_airflow_env(StackSettings.from_env(env), "http://127.0.0.1:8081", "http://127.0.0.1:8765")


@pytest.fixture
def local_celery_settings(tmp_path: Path) -> dict[str, str]:
    """What ``make airflow EXECUTOR=celery`` changes in every Airflow process's environment, compared with
    ``make airflow``: the settings that make the deployment distributed."""
    local = _local_stack_env(tmp_path)
    celery = _local_stack_env(tmp_path, CLOUDAGENT_EXECUTOR="celery")
    assert set(local) <= set(celery), "the Celery stack drops a setting of the local one"
    # The stack's own wrapper command (for pasted backfill commands) names its executor: not a deployment
    # setting, compose and Helm run `airflow` itself.
    return {
        key: value
        for key, value in celery.items()
        if local.get(key) != value and key != "CLOUDAGENT_AIRFLOW_COMMAND"
    }


def _unchecked(url: str) -> str:
    """A compose URL with ``${VAR:?message}`` written as ``${VAR}`` (the same value once set)."""
    return re.sub(r"\$\{([A-Z0-9_]+):\?[^}]*\}", r"${\1}", url)


def test_the_compose_override_has_the_local_celery_stacks_settings(
    local_celery_settings: dict[str, str], main_services: dict[str, Any]
) -> None:
    override = load("docker-compose.celery.yaml")
    compose = {key: str(value) for key, value in override["x-celery-env"].items()}

    assert set(compose) == set(local_celery_settings), "the two deployments set different keys"
    assert {k: v for k, v in compose.items() if k not in ADDRESSES} == {
        k: v for k, v in local_celery_settings.items() if k not in ADDRESSES
    }
    # Both: a Redis broker, and Airflow's own metadata database as the result backend.
    for settings, metadata in (
        (compose, main_services["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]),
        (local_celery_settings, "postgresql://airflow@127.0.0.1:5432/airflow"),
    ):
        assert settings["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert settings["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + _unchecked(metadata)
    for name in ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "airflow-worker"):  # fmt: skip
        assert override["services"][name]["environment"] == override["x-celery-env"], name


def _readme_helm_values() -> dict[str, Any]:
    readme = (ROOT / "README.md").read_text()
    (block,) = [
        b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL) if "apache-airflow/airflow" in b
    ]
    return yaml.safe_load(block)


def test_the_readme_helm_values_have_the_local_celery_stacks_settings(
    local_celery_settings: dict[str, str],
) -> None:
    values = _readme_helm_values()
    assert values["executor"] == local_celery_settings["AIRFLOW__CORE__EXECUTOR"]
    config = {
        f"AIRFLOW__{section.upper()}__{key.upper()}": str(value)
        for section, options in values["config"].items()
        for key, value in options.items()
    }
    expected = {k: v for k, v in local_celery_settings.items() if k not in ADDRESSES}
    del expected["AIRFLOW__CORE__EXECUTOR"]
    assert config == expected
    # The chart's Redis is the broker; the result backend defaults to the metadata database.
    assert values["redis"]["enabled"] is True
    assert values["triggerer"]["enabled"] is True, "wait_for_callback defers: a triggerer is required"


def test_only_the_local_workers_get_a_name_and_a_receiver_of_their_own(tmp_path: Path) -> None:
    """Several workers on one machine need distinct names (tasks report them) and alternate between two
    receivers; on a cluster each worker has its own host and one receiver URL: not deployment settings."""
    from cloudagent_dev.localstack import worker_env, worker_hostnames

    env = _local_stack_env(tmp_path, CLOUDAGENT_EXECUTOR="celery")
    hostnames = worker_hostnames(3)
    assert len(set(hostnames)) == 3
    assert all(re.fullmatch(r"worker-\d@.+", name) for name in hostnames)
    added = {
        k: v for k, v in worker_env(env, hostnames[1], "http://127.0.0.1:8082").items() if env.get(k) != v
    }
    assert added == {
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "cloudagent_dev.localstack.worker_hostname",
        "CLOUDAGENT_WORKER_HOSTNAME": hostnames[1],
        "CLOUDAGENT_CALLBACK_BASE_URL": "http://127.0.0.1:8082",
    }
