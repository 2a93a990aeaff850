"""Fixtures shared by every test: databases, simulator, receiver and Airflow (see ``tests/fixtures/``)."""

pytest_plugins = [
    "tests.fixtures.airflow",
    "tests.fixtures.databases",
    "tests.fixtures.simulator",
    "tests.fixtures.receiver",
]
