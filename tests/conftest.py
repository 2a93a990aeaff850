"""Fixtures shared by every test: databases, simulator, receiver and Airflow (see ``tests/fixtures/``)."""

import os

#: The pseudonym key of every load in the tests (and of the processes they start, which inherit it); a test
#: of a missing key takes it out of its own environment.
TEST_PSEUDONYM_KEY = "test-pseudonym-key-0123456789abcdef"
os.environ.setdefault("CLOUDAGENT_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY)

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
