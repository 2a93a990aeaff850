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
    for target, condition in _depended_on(main_services).items():
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
    assert all(
        s["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        for s in services.values()
        if "environment" in s
    )


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


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_images_are_pinned(name: str) -> None:
    for service_name, service in load(name)["services"].items():
        image = service.get("image")
        if image is None:
            continue
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


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_no_literal_secrets(name: str) -> None:
    for service_name, key, value in _walk_environment(load(name)["services"]):
        if SECRET_NAME.search(key) and not key.endswith("_FILE"):
            assert value.startswith("${"), f"{service_name}.{key} holds a literal value, not a ${{VAR}}"
        # Credentials inside URLs (user:password@host) must come from variables too.
        for credential in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
            assert credential.startswith("${"), f"{service_name}.{key} embeds a literal password"
        if key.startswith("AIRFLOW_CONN_") and '"password"' in value:
            assert re.search(r'"password": "\$\{[A-Z_]+\}"', value), f"{service_name}.{key}"
