"""Which accounts and campaigns a run syncs: the Variable, the run's params, the order they take turns in."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloudagent_etl import pipeline
from cloudagent_etl.accounts import (
    SyncTarget,
    accounts_of_run,
    parse_accounts,
    shared_campaigns,
    sync_targets,
)
from cloudagent_etl.errors import ConfigurationError


def test_the_variable_is_a_json_object_of_connection_ids_and_campaign_lists() -> None:
    assert parse_accounts('{"acme": ["Sales", " Sales ", "Renewals"], "globex": "Sales, Support"}') == {
        "acme": ["Sales", "Renewals"],
        "globex": ["Sales", "Support"],
    }


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("{not json", "Variable cloudagent_accounts is not valid JSON"),
        ('["Sales"]', "must be a JSON object mapping connection ids to campaign lists"),
        ("{}", "must be a JSON object"),
        ('{"acme": []}', "Variable cloudagent_accounts, connection 'acme': no campaigns to sync"),
        ('{"acme": [1]}', "connection 'acme': campaign names must be text"),
        ('{" ": ["Sales"]}', "a connection id must be non-empty text"),
    ],
)
def test_a_malformed_variable_is_refused_naming_it_and_what_is_wrong(value: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        parse_accounts(value)


def test_a_runs_params_narrow_the_configuration() -> None:
    configured = {"acme": ["Sales", "Renewals"], "globex": ["Sales"]}
    assert accounts_of_run({"globex": ["Sales"]}, None, configured) == {"globex": ["Sales"]}
    assert accounts_of_run(None, None, configured) == configured
    assert accounts_of_run(None, ["Renewals"], {"acme": ["Sales"]}) == {"acme": ["Renewals"]}
    with pytest.raises(ConfigurationError, match="cannot say which of 2 accounts it means"):
        accounts_of_run(None, ["Sales"], configured)


def test_the_accounts_take_turns_and_name_their_instances() -> None:
    targets = sync_targets({"cloudagent_default": ["A", "B", "C"], "globex": ["A"]})
    assert targets == [
        SyncTarget("cloudagent_default", "A"),
        SyncTarget("globex", "A"),
        SyncTarget("cloudagent_default", "B"),
        SyncTarget("cloudagent_default", "C"),
    ]
    assert [target.label for target in targets[:2]] == ["A", "globex/A"]


def test_one_account_under_two_connections_may_not_list_a_campaign_twice() -> None:
    users = {"acme": "acme_user", "acme_copy": "acme_user", "globex": "globex_user"}
    accounts = {"acme": ["Sales", "Support"], "acme_copy": ["Sales"], "globex": ["Sales"]}
    assert shared_campaigns(users, accounts) == [
        "campaign 'Sales' is listed under connections acme and acme_copy, which are both the account "
        "'acme_user': list it under one"
    ]


def test_each_account_exports_the_same_local_times_of_its_own_day() -> None:
    interval = (datetime(2025, 5, 31, 22, 0, tzinfo=UTC), datetime(2025, 6, 1, 22, 0, tzinfo=UTC))
    ist = pipeline.export_window(*interval, 15)
    dubai = pipeline.export_window(*interval, 15, timezone="Asia/Dubai")
    assert ist == (datetime(2025, 5, 31, 21, 45, tzinfo=UTC), interval[1])  # 03:30 IST, 15 min early
    assert dubai == (datetime(2025, 5, 31, 23, 15, tzinfo=UTC), datetime(2025, 6, 1, 23, 30, tzinfo=UTC))
    plans = pipeline.plan_exports(
        {"a": ["X"], "b": ["X"]}, {"a": "Asia/Kolkata", "b": "Asia/Dubai"}, *interval, 15
    )
    assert [(plan["label"], plan["window_end"]) for plan in plans] == [
        ("a/X", "2025-06-01T22:00:00+00:00"),
        ("b/X", "2025-06-02T03:30:00+04:00"),
    ]
    with pytest.raises(ConfigurationError, match="unknown time zone 'Mars/Base'"):
        pipeline.export_window(*interval, 15, timezone="Mars/Base")
