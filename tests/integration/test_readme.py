"""The README stays true: its SQL runs on both databases; its data dictionary, receiver limits: the code's."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from cloudagent_etl.cli import data_dictionary_markdown
from cloudagent_etl.pipeline import load_payloads
from cloudagent_etl.settings import RECEIVER_LIMITS
from cloudagent_etl.simulator.data import generate_records
from tests.factories import land, new_request

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SQL_BLOCKS = re.findall(r"```sql\n(.*?)```", README, re.DOTALL)
WINDOW = (datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 3, tzinfo=UTC))


def test_the_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    assert "make demo" in first_block
    assert "make test" in first_block


def test_the_data_dictionary_in_the_readme_is_the_one_in_the_code() -> None:
    start, end = "<!-- data-dictionary:start -->\n", "<!-- data-dictionary:end -->"
    embedded = README.split(start, 1)[1].split(end, 1)[0]
    assert embedded.strip() == data_dictionary_markdown().strip()


def test_the_receiver_limits_in_the_readme_are_the_codes() -> None:
    """Every limit, its variable and its default, in the receiver section's table; nothing else."""
    start, end = "<!-- receiver-limits:start -->\n", "<!-- receiver-limits:end -->"
    table = README.split(start, 1)[1].split(end, 1)[0]
    rows = re.findall(r"^\| `(CLOUDAGENT_RECEIVER_\w+)` \| `([\d.]+)`", table, re.MULTILINE)
    expected = [(variable, f"{default:.12g}") for _name, variable, default, _meaning in RECEIVER_LIMITS]
    assert rows == expected


@pytest.fixture
def warehouse(engine: Engine) -> Engine:
    """Two campaigns loaded from simulator data, and one request whose callback never came."""
    for campaign in ("Sales", "Support"):
        request_id = new_request(engine, campaign, window=WINDOW).request_id
        land(engine, request_id, generate_records(campaign, *WINDOW, seed=7, records_per_day=40))
        load_payloads(engine, request_id)
    new_request(engine, "Renewals", window=WINDOW)
    return engine


@pytest.mark.parametrize("sql", SQL_BLOCKS, ids=[f"query{i}" for i in range(len(SQL_BLOCKS))])
def test_every_sql_block_in_the_readme_runs_and_answers(warehouse: Engine, sql: str) -> None:
    with warehouse.connect() as conn:
        rows = conn.execute(text(sql)).all()
    assert rows, f"no rows from:\n{sql}"


def test_the_readme_has_the_five_analyst_queries() -> None:
    assert len(SQL_BLOCKS) >= 5
