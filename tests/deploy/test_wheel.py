"""The built wheel: the product and the provider with their data and entry points, and nothing of the
development tooling. Built from a copy of the sources, so the checkout is left as it was."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(
        ROOT / "include", source / "include", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    uv = Path(sys.executable).with_name("uv")
    subprocess.run([str(uv), "build", "--wheel", "-q", "-o", str(out), str(source)], check=True, timeout=600)
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


@pytest.mark.slow
def test_the_wheel_carries_the_product_and_the_provider_but_not_the_dev_tools(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"cloudagent_etl", "cloudagent_airflow"}
    assert not [name for name in names if "cloudagent_dev" in name or name.startswith("tests/")]
    assert "cloudagent_etl/migrations/versions/0001_landing_and_limiter.py" in names
    assert "cloudagent_etl/migrations/script.py.mako" in names
    assert "cloudagent_airflow/static/cloudagent.js" in names
    assert "cloudagent_etl/databases/postgresql.py" in names


@pytest.mark.slow
def test_the_wheel_registers_the_provider_the_plugin_the_backfill_command_and_the_cli(
    wheel: zipfile.ZipFile,
) -> None:
    (entry_points,) = [name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    for line in (
        "provider_info = cloudagent_airflow:get_provider_info",
        "cloudagent = cloudagent_airflow.plugin:CloudAgentPlugin",
        "airflow = cloudagent_airflow.backfills:backfill_command",
        "cloudagent-etl = cloudagent_etl.cli:main",
    ):
        assert line in text
