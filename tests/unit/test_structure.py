"""The layering, proved by code: who may import what, and who may write the landing tables."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = REPO / "include" / "cloudagent_etl"
PRODUCT_SOURCES = sorted(p for p in PRODUCT.rglob("*.py") if "migrations" not in p.parts)
#: Code that runs in production: the product, the Airflow adapters and the DAGs.
DEPLOYED_SOURCES = [
    *PRODUCT_SOURCES,
    *sorted((REPO / "include" / "cloudagent_airflow").rglob("*.py")),
    *sorted((REPO / "dags").rglob("*.py")),
]
LANDING_TABLES = ("export_requests", "callback_payloads", "callback_payload_chunks")
_TABLES = "|".join(LANDING_TABLES)
#: A statement that writes a landing table, as SQLAlchemy Core or as SQL text.
LANDING_WRITE = re.compile(
    rf"\b(?:insert|update|delete)\(\s*(?:landing\.)?(?:{_TABLES})\b"
    rf"|\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(?:{_TABLES})\b",
    re.IGNORECASE,
)


def imported_modules(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("forbidden", ["airflow", "cloudagent_airflow", "cloudagent_dev", "tests"])
def test_the_product_package_imports_neither_airflow_nor_the_dev_tools(forbidden: str) -> None:
    offenders = {
        relative(path): module
        for path in PRODUCT_SOURCES
        for module in imported_modules(path)
        if module == forbidden or module.startswith(forbidden + ".")
    }
    assert offenders == {}


def test_normalize_is_pure_it_does_not_even_load_sqlalchemy() -> None:
    """Bytes in, frames out: checked in a fresh interpreter, so indirect imports count too."""
    probe = (
        "import sys, cloudagent_etl.normalize; "
        "print(sorted(m for m in sys.modules if m.startswith('sqlalchemy')))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_only_landing_writes_the_landing_tables() -> None:
    writers = {
        relative(path): sorted(set(LANDING_WRITE.findall(path.read_text())))
        for path in DEPLOYED_SOURCES
        if LANDING_WRITE.search(path.read_text())
    }
    landing = "include/cloudagent_etl/landing.py"
    assert writers.pop(landing), "the rule found no write in landing.py itself: it would prove nothing"
    assert writers == {}


def test_only_landing_reads_a_request_state() -> None:
    """Everyone else asks landing (``callback_status``, ``is_loaded``...) instead of comparing states."""
    readers = [relative(p) for p in DEPLOYED_SOURCES if ".c.state" in p.read_text()]
    assert readers == ["include/cloudagent_etl/landing.py"]


@pytest.mark.parametrize(
    ("folder", "forbidden"), [("tests", "benchmarks"), ("benchmarks", "tests"), ("include", "benchmarks")]
)
def test_tests_and_benchmarks_share_only_the_dev_tools(folder: str, forbidden: str) -> None:
    offenders = {
        relative(path): module
        for path in (REPO / folder).rglob("*.py")
        for module in imported_modules(path)
        if module == forbidden or module.startswith(forbidden + ".")
    }
    assert offenders == {}


def test_no_test_module_imports_another() -> None:
    offenders = {
        relative(path): module
        for path in (REPO / "tests").rglob("test_*.py")
        for module in imported_modules(path)
        if module.startswith("tests.") and module.rsplit(".", 1)[-1].startswith("test_")
    }
    assert offenders == {}
