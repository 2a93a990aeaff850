"""The analysts' dbt project on the PostgreSQL warehouse, loaded with the simulator's data: ``dbt build`` is
green and its marts say what the warehouse says; a seeded bad row fails the build naming the test that
caught it; ``dbt docs generate`` documents the models from the data dictionary.

dbt runs from its own venv, which the ``dbt_venv`` fixture makes with ``make dbt-venv`` (a no-op once made).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, text

from cloudagent_etl import analytics
from cloudagent_etl.pipeline import load_payloads
from cloudagent_etl.simulator.data import generate_records
from cloudagent_etl.warehouse.tables import dial_status
from tests.factories import land, new_request

WINDOW = (datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 3, tzinfo=UTC))
#: Two accounts with a campaign of the same name: the marts must keep them apart.
LOADS = (("acme", "Sales", 7), ("acme", "Support", 8), ("globex", "Sales", 9))
MARTS = ("daily_funnel", "daily_dispositions", "attempts_to_answer", "agent_dispositions", "lead_recency")
STAGING = "analytics_staging.stg_cloudagent__dial_status"
#: The spellings of an answered call in the seeded warehouse.
ANSWERED = ("answered", "ANSWERED")


@pytest.fixture
def warehouse(pg_url: str, engine: Engine) -> str:
    """The simulator's records of three campaigns of two accounts, loaded as the pipeline loads them.

    The simulator names an agent on answered calls only; a real export may name one on a call the lead
    hung up: a few unanswered leads get one, which the agents' mart must not count. Some dial statuses
    are spelled otherwise ("ANSWERED", "No Answer"), which the staging model normalizes."""
    for account, campaign, seed in LOADS:
        request_id = new_request(engine, campaign, window=WINDOW, account=account).request_id
        land(engine, request_id, generate_records(campaign, *WINDOW, seed=seed, records_per_day=60))
        load_payloads(engine, request_id)
    with engine.begin() as conn:
        hung_up = conn.execute(
            text(
                "UPDATE dial_status SET agent_id = 'AG101', disposition = 'Callback' "
                "WHERE dial_status_last = 'user_disconnected'"
            )
        )
        assert hung_up.rowcount > 0
        for spelled, status in (("ANSWERED", "answered"), ("No Answer", "NoAnswer")):
            respelled = conn.execute(
                text(
                    "UPDATE dial_status SET dial_status_last = :spelled "
                    "WHERE dial_status_last = :status AND record_key LIKE '%3'"
                ),
                {"spelled": spelled, "status": status},
            )
            assert respelled.rowcount > 0
    return pg_url


@pytest.fixture
def db_kind() -> str:
    return "postgres"


def build(db_url: str, target: Path, *args: str) -> list[dict]:
    """``dbt build``; the results of its nodes (raises DbtError when any failed)."""
    analytics.run_dbt(["build", *args], db_url, target_path=target)
    return json.loads((target / "run_results.json").read_text())["results"]


def rows(engine: Engine, sql: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(text(sql)).mappings()]


@pytest.mark.slow
@pytest.mark.timeout(900)  # three dbt commands: 263 s at load ~14
def test_dbt_build_is_green_its_marts_say_what_the_warehouse_says_and_its_docs_generate(
    dbt_venv: Path, warehouse: str, engine: Engine, tmp_path: Path
) -> None:
    """One build (35 s at load ~10) serves every check of a good warehouse."""
    target = tmp_path / "target"
    results = build(warehouse, target)

    statuses = Counter(result["status"] for result in results)
    assert set(statuses) == {"success", "pass", "warn"}, statuses
    warned = [result["unique_id"].split(".")[2] for result in results if result["status"] == "warn"]
    # The other spellings warn at the source (the table, the history view and their analyst views), and
    # nowhere downstream.
    assert {name.split("_dial_status_last__")[0] for name in warned} == {
        "source_accepted_values_warehouse_dial_status",
        "source_accepted_values_warehouse_dial_status_history",
        "source_accepted_values_warehouse_analyst_dial_status",
        "source_accepted_values_warehouse_analyst_dial_status_history",
    }, warned
    tested = {result["unique_id"].split(".")[2] for result in results if result["status"] == "pass"}
    for expected in ("accepted_values_", "relationships_", "unique_combination_", "not_null_", "unique_"):
        assert any(name.startswith(expected) for name in tested), (expected, sorted(tested))
    assert any("fresh_per_group" in name for name in tested)

    with engine.connect() as conn:
        current = [dict(row) for row in conn.execute(select(dial_status)).mappings()]
    assert {(row["account"], row["campaign_name"]) for row in current} == {(a, c) for a, c, _ in LOADS}

    # The funnel: leads, attempts and answered per account x campaign, whatever the day split.
    expected_funnel: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in current:
        totals = expected_funnel[(row["account"], row["campaign_name"])]
        totals[0] += 1
        totals[1] += row["attempts"] or 0
        totals[2] += row["dial_status_last"] in ANSWERED
    funnel = rows(
        engine,
        "SELECT account, campaign, SUM(leads) AS leads, SUM(attempts) AS attempts, "
        "SUM(answered) AS answered, "
        "MIN(connect_rate) AS low, MAX(connect_rate) AS high FROM analytics_marts.daily_funnel "
        "GROUP BY account, campaign",
    )
    assert {
        (r["account"], r["campaign"]): [r["leads"], r["attempts"], r["answered"]] for r in funnel
    } == dict(expected_funnel)
    assert all(0 <= r["low"] <= r["high"] <= 1 for r in funnel)
    assert any(r["high"] > 0 for r in funnel), "the simulator's data has answered calls"

    # Agent outcomes count answered calls only.
    answered_by_agent = Counter(
        (row["account"], row["campaign_name"], row["agent_id"], row["disposition"] or "(none)")
        for row in current
        if row["dial_status_last"] in ANSWERED and row["agent_id"] is not None
    )
    agents = rows(
        engine,
        "SELECT account, campaign, agent_id, disposition, answered_calls "
        "FROM analytics_marts.agent_dispositions",
    )
    assert {
        (r["account"], r["campaign"], r["agent_id"], r["disposition"]): r["answered_calls"] for r in agents
    } == (dict(answered_by_agent))
    assert answered_by_agent
    assert any(r["dial_status_last"] not in ANSWERED and r["agent_id"] for r in current), (
        "the rule is exercised"
    )

    # Attempts to answer: the distribution sums to the answered leads, its cumulative share ends at 1.
    distribution = rows(
        engine,
        "SELECT account, campaign, attempts, answered_leads, cumulative_share "
        "FROM analytics_marts.attempts_to_answer ORDER BY account, campaign, attempts",
    )
    per_campaign: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in distribution:
        per_campaign[(r["account"], r["campaign"])].append(r)
    for key, attempts in per_campaign.items():
        assert sum(r["answered_leads"] for r in attempts) == expected_funnel[key][2]
        assert float(attempts[-1]["cumulative_share"]) == 1.0

    # One spelling per dial status in the staging model, whatever the source spelled.
    staged = rows(engine, f"SELECT DISTINCT last_dial_status FROM {STAGING}")
    normalized = {"answered", "no_answer", "fail", "user_disconnected"}
    assert {r["last_dial_status"] for r in staged} - {None} == normalized

    # Lead recency: one row per lead, days since the last attempt never negative.
    recency = rows(engine, "SELECT days_since_last_attempt FROM analytics_marts.lead_recency")
    assert len(recency) == len(current)
    assert all(r["days_since_last_attempt"] >= 0 for r in recency)

    assert_no_model_shows_the_phone_number_or_the_name(engine)
    assert_docs_generate_from_the_data_dictionary(warehouse, target)


def assert_no_model_shows_the_phone_number_or_the_name(engine: Engine) -> None:
    columns = rows(
        engine,
        "SELECT table_schema, table_name, column_name FROM information_schema.columns "
        "WHERE table_schema IN ('analytics_staging', 'analytics_marts')",
    )
    assert {c["table_name"] for c in columns} >= {"stg_cloudagent__dial_status", *MARTS}
    exposed = {c["column_name"] for c in columns} & {
        "phone_number",
        "phone_number_raw",
        "customer_name",
        "extra",
    }
    assert exposed == set()
    with engine.connect() as conn:
        phones = {p for p in conn.scalars(select(dial_status.c.phone_number)) if p}
        names = {n for n in conn.scalars(select(dial_status.c.customer_name)) if n}
    assert phones
    assert names
    for relation in {f"{c['table_schema']}.{c['table_name']}" for c in columns}:
        dumped = json.dumps(rows(engine, f"SELECT * FROM {relation}"), default=str)
        assert not any(phone in dumped for phone in phones), relation
        assert not any(f'"{name}"' in dumped for name in names), relation


@pytest.mark.slow
def test_a_seeded_bad_row_fails_the_build_naming_the_tests_that_caught_it(
    dbt_venv: Path, warehouse: str, engine: Engine, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        good = dict(conn.execute(select(dial_status).limit(1)).mappings().one())
        conn.execute(
            insert(dial_status).values(
                {**good, "record_key": "seeded-bad-row", "lead_status": "Maybe", "load_run_id": 987654321}
            )
        )

    with pytest.raises(analytics.DbtError) as failed:
        build(warehouse, tmp_path / "target")

    results = json.loads((tmp_path / "target" / "run_results.json").read_text())["results"]
    failing = {result["unique_id"].split(".")[2] for result in results if result["status"] == "fail"}
    assert any(
        name.startswith("source_accepted_values_warehouse_dial_status_lead_status") for name in failing
    ), failing
    assert any(
        name.startswith("source_relationships_warehouse_dial_status_load_run_id") for name in failing
    ), failing
    assert all("lead_status" in name or "load_run_id" in name for name in failing), failing
    # The error ends with dbt's last lines, which name failed tests (the bad row fails in the analyst views
    # too).
    assert any(name in str(failed.value) for name in failing), str(failed.value)
    skipped = {result["unique_id"].split(".")[2] for result in results if result["status"] == "skipped"}
    assert set(MARTS) <= skipped, "no mart is built from a source that failed its tests"


def assert_docs_generate_from_the_data_dictionary(warehouse: str, target: Path) -> None:
    analytics.run_dbt(["docs", "generate"], warehouse, target_path=target)
    freshness = analytics.run_dbt(["source", "freshness"], warehouse, target_path=target)

    manifest = json.loads((target / "manifest.json").read_text())
    staging = manifest["nodes"]["model.cloudagent.stg_cloudagent__dial_status"]
    assert (
        staging["columns"]["lead_status"]["description"]
        == "lead status (Status): Success, Fail, Pending, ..."
    )
    catalog = json.loads((target / "catalog.json").read_text())
    assert {node.split(".")[-1] for node in catalog["nodes"]} >= {"stg_cloudagent__dial_status", *MARTS}
    assert (target / "index.html").is_file()
    assert "PASS freshness of warehouse.dial_status" in freshness.stdout
