"""The dbt project's generated files are the data dictionary's; dbt is given the warehouse, never a secret."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cloudagent_etl import analytics
from cloudagent_etl.cli import main
from cloudagent_etl.warehouse.tables import DATA_DICTIONARY

PROJECT = analytics.REPO / "dbt"


def test_the_generated_dbt_files_are_what_the_data_dictionary_gives() -> None:
    """Fails when the dictionary changed and `make dbt-docs` was not run (or a generated file was edited)."""
    assert analytics.drifted_files(PROJECT) == []


def test_a_hand_edit_of_a_generated_file_is_caught_and_rewritten(tmp_path: Path, monkeypatch, capsys) -> None:
    project = tmp_path / "dbt"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("target", "logs"))
    sources = project / analytics.SOURCES_FILE
    sources.write_text(sources.read_text().replace("lead status (Status)", "lead state"))
    (project / analytics.DOC_BLOCKS_FILE).unlink()
    monkeypatch.setenv("CLOUDAGENT_DBT_PROJECT_DIR", str(project))

    assert main(["dbt-docs"]) == 1
    assert sorted(capsys.readouterr().out.splitlines()) == sorted(
        f"{project / name} differs from the data dictionary: run `make dbt-docs`"
        for name in (analytics.SOURCES_FILE, analytics.DOC_BLOCKS_FILE)
    )
    assert main(["dbt-docs", "--write"]) == 0
    assert main(["dbt-docs"]) == 0
    assert "lead status (Status)" in sources.read_text()


def test_every_column_of_the_dictionary_is_described_in_the_sources() -> None:
    (source,) = yaml.safe_load(analytics.sources_yaml())["sources"]
    described = {
        table["name"]: {column["name"]: column["description"] for column in table["columns"]}
        for table in source["tables"]
    }
    assert described == DATA_DICTIONARY


def test_the_sources_test_keys_relationships_and_the_contracts_values() -> None:
    (source,) = yaml.safe_load(analytics.sources_yaml())["sources"]
    tables = {table["name"]: table for table in source["tables"]}
    dial_status = {
        column["name"]: column.get("data_tests", []) for column in tables["dial_status"]["columns"]
    }
    assert dial_status["lead_status"] == [
        {"accepted_values": {"arguments": {"values": ["Fail", "Success", "Pending"]}}}
    ]
    assert dial_status["dial_status_last"] == [
        {
            "accepted_values": {
                "arguments": {"values": ["Fail", "NoAnswer", "user_disconnected", "answered"]},
                "config": {"severity": "warn"},  # other spellings: the staging model normalizes them
            }
        }
    ]
    relationship = {
        "relationships": {"arguments": {"to": "source('warehouse', 'load_runs')", "field": "load_run_id"}}
    }
    for table in ("dial_status", "dial_status_superseded", "dial_status_rejects"):
        load_run_id = next(c for c in tables[table]["columns"] if c["name"] == "load_run_id")
        assert relationship in load_run_id["data_tests"], table
    assert {
        "unique_combination": {"arguments": {"columns": ["account", "campaign_name", "record_key"]}}
    } in tables["dial_status"]["data_tests"]
    assert tables["dial_status"]["config"]["loaded_at_field"] == "loaded_at"


def test_the_doc_blocks_name_every_dictionary_column() -> None:
    blocks = analytics.doc_blocks_markdown()
    for table, columns in DATA_DICTIONARY.items():
        for column, meaning in columns.items():
            assert f"{{% docs {table}__{column} %}}{meaning}{{% enddocs %}}" in blocks


def test_dbt_gets_the_warehouse_from_the_url_and_only_postgresql() -> None:
    env = analytics.profile_env("postgresql+psycopg://etl:s3cret@db.internal:6543/warehouse")
    assert env == {
        "CLOUDAGENT_DBT_HOST": "db.internal",
        "CLOUDAGENT_DBT_PORT": "6543",
        "CLOUDAGENT_DBT_USER": "etl",
        "CLOUDAGENT_DBT_PASSWORD": "s3cret",
        "CLOUDAGENT_DBT_DATABASE": "warehouse",
    }
    with pytest.raises(analytics.DbtError, match="PostgreSQL only, not sqlite") as refused:
        analytics.profile_env("sqlite:////tmp/warehouse.db")
    assert "s3cret" not in str(refused.value)


def test_a_missing_dbt_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(analytics.DbtError, match="make dbt-venv"):
        analytics.run_dbt(["build"], "postgresql://u:p@h/db", executable=tmp_path / "no-dbt")


def test_a_table_new_to_the_dictionary_gets_its_source_and_the_contracts_tests(monkeypatch) -> None:
    """A view added to the dictionary (say, an analysts' view of dial_status) needs no change here."""
    view = {"lead_status": "lead status", "dial_status_last": "last leg", "load_run_id": "load run"}
    monkeypatch.setitem(DATA_DICTIONARY, "analyst_view", view)

    (source,) = yaml.safe_load(analytics.sources_yaml())["sources"]

    (table,) = [table for table in source["tables"] if table["name"] == "analyst_view"]
    tests = {column["name"]: column["data_tests"] for column in table["columns"]}
    assert [next(iter(test)) for test in tests["lead_status"]] == ["accepted_values"]
    assert [next(iter(test)) for test in tests["dial_status_last"]] == ["accepted_values"]
    assert tests["load_run_id"][0] == "not_null"
    assert "relationships" in tests["load_run_id"][1]
