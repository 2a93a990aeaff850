"""The layering, proved by code: who may import what, who may touch the landing tables, where the SQL of
each database lives, and how big a module may grow."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
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
LANDING = PRODUCT / "landing"
#: Where each database's SQL lives (and, per database, its migrations).
DATABASES = PRODUCT / "databases"
LANDING_TABLES = ("export_requests", "callback_payloads", "callback_payload_chunks", "export_request_runs")
#: SQLAlchemy's names of the databases we run on, and of those we may run on next.
DIALECT_NAMES = frozenset({"postgresql", "postgres", "sqlite", "mysql", "mariadb"})
#: The longest a product module may grow (lines); past it, split it by concern.
MAX_MODULE_LINES = 700


def imported_modules(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def inside(path: Path, folder: Path) -> bool:
    return folder in path.parents


def _docstrings(tree: ast.AST) -> set[int]:
    """Ids of the string constants that are docstrings (prose may name anything)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def code_words(path: Path) -> Iterator[str]:
    """Every identifier, attribute and word of a string literal in the code (not in docstrings/comments)."""
    tree = ast.parse(path.read_text())
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.alias):
            yield node.asname or node.name.rsplit(".", 1)[-1]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield from re.findall(r"\w+", node.value)


def dialect_branches(path: Path) -> list[str]:
    """What in ``path`` asks which database it runs on, or says something only one database understands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy.dialects"):
            found.append(f"{line}: imports {node.module}")
        elif isinstance(node, ast.Attribute) and node.attr in ("dialect", "get_backend_name"):
            found.append(f"{line}: .{node.attr}")
        elif isinstance(node, ast.keyword) and node.arg and node.arg.split("_")[0] in DIALECT_NAMES:
            found.append(f"{line}: {node.arg}=")
        elif isinstance(node, ast.Compare | ast.Dict | ast.Match):
            constants = [
                child.value
                for child in ast.walk(node)
                if isinstance(child, ast.Constant) and isinstance(child.value, str)
            ]
            found += [f"{line}: compares with {name!r}" for name in constants if name in DIALECT_NAMES]
    return found


def offenders(
    paths: Iterable[Path], check: Callable[[Path], list[str]], *, skip: Iterable[Path] = ()
) -> dict[str, list[str]]:
    skipped = tuple(skip)
    return {
        relative(path): found
        for path in paths
        if not any(inside(path, folder) for folder in skipped) and (found := check(path))
    }


@pytest.mark.parametrize("forbidden", ["airflow", "cloudagent_airflow", "cloudagent_dev", "tests"])
def test_the_product_package_imports_neither_airflow_nor_the_dev_tools(forbidden: str) -> None:
    found = offenders(
        PRODUCT_SOURCES,
        lambda path: [m for m in imported_modules(path) if m == forbidden or m.startswith(forbidden + ".")],
    )
    assert found == {}


def test_normalize_is_pure_it_does_not_even_load_sqlalchemy() -> None:
    """Bytes in, frames out: checked in a fresh interpreter, so indirect imports count too."""
    probe = (
        "import sys, cloudagent_etl.normalize; "
        "print(sorted(m for m in sys.modules if m.startswith('sqlalchemy')))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_only_landing_and_the_database_modules_on_its_behalf_touch_the_landing_tables() -> None:
    """Everyone else asks landing (``callback_status``, ``requests_overlapping``...): no other module reads
    a request's state, writes a payload, or names a landing table in a query."""

    def touches(path: Path) -> list[str]:
        return sorted({word for word in code_words(path) if word in LANDING_TABLES})

    assert touches(LANDING / "schema.py"), "the rule found no landing table in landing itself"
    assert offenders(DEPLOYED_SOURCES, touches, skip=[LANDING, DATABASES]) == {}


def test_the_warehouse_never_calls_into_landing() -> None:
    """The pipeline drives a payload's load: landing hands out the body, the warehouse merges it."""
    warehouse = sorted((PRODUCT / "warehouse").rglob("*.py"))
    found = offenders(warehouse, lambda path: [m for m in imported_modules(path) if "landing" in m])
    assert warehouse
    assert found == {}


def test_nothing_outside_the_database_modules_asks_which_database_it_runs_on() -> None:
    assert dialect_branches(DATABASES / "postgresql.py"), (
        "the rule found nothing where it must: it proves nothing"
    )
    assert offenders(DEPLOYED_SOURCES, dialect_branches, skip=[DATABASES]) == {}


def test_every_database_module_implements_the_whole_interface() -> None:
    from cloudagent_etl.databases import DATABASES as SUPPORTED

    assert [database.name for database in SUPPORTED] == ["postgresql", "sqlite"]
    for database in SUPPORTED:
        assert not getattr(type(database), "__abstractmethods__", None), database.name


def test_no_product_module_grows_past_its_limit() -> None:
    sizes = {relative(path): len(path.read_text().splitlines()) for path in DEPLOYED_SOURCES}
    assert max(sizes.values()) > 100, "the sizes were not read"
    assert {path: lines for path, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}


@pytest.mark.parametrize(
    ("folder", "forbidden"), [("tests", "benchmarks"), ("benchmarks", "tests"), ("include", "benchmarks")]
)
def test_tests_and_benchmarks_share_only_the_dev_tools(folder: str, forbidden: str) -> None:
    found = offenders(
        (REPO / folder).rglob("*.py"),
        lambda path: [m for m in imported_modules(path) if m == forbidden or m.startswith(forbidden + ".")],
    )
    assert found == {}


def test_no_test_module_imports_another() -> None:
    found = offenders(
        (REPO / "tests").rglob("test_*.py"),
        lambda path: [
            m
            for m in imported_modules(path)
            if m.startswith("tests.") and m.rsplit(".", 1)[-1].startswith("test_")
        ],
    )
    assert found == {}


def test_the_rules_catch_what_they_forbid(tmp_path: Path) -> None:
    """Each rule fails on a module that breaks it (so a green run means something)."""
    branching = tmp_path / "branching.py"
    branching.write_text(
        "from sqlalchemy.dialects import postgresql\n"
        "def f(engine):\n"
        "    if engine.dialect.name == 'sqlite':\n"
        "        return {'postgresql': 1}\n"
        "    return Index('i', 'c', postgresql_where='x')\n"
    )
    assert len(dialect_branches(branching)) == 5
    querying = tmp_path / "querying.py"
    querying.write_text(
        '"""Docstrings may name export_requests."""\n'
        "from cloudagent_etl.landing import export_request_runs\n"
        "SQL = 'SELECT state FROM callback_payloads'\n"
    )
    assert sorted(set(code_words(querying)) & set(LANDING_TABLES)) == [
        "callback_payloads",
        "export_request_runs",
    ]
