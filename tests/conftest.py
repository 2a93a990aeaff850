"""Fixtures shared by every test: databases, simulator, receiver and Airflow (see ``tests/fixtures/``)."""

pytest_plugins = [
    "tests.fixtures.airflow",
    "tests.fixtures.databases",
    "tests.fixtures.simulator",
    "tests.fixtures.receiver",
    "tests.fixtures.dbt",
]


def pytest_collection_modifyitems(items: list) -> None:
    """Slow tests first (file order kept), so that under xdist the longest ones do not start last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
