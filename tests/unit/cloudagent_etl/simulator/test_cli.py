"""``cloudagent-etl simulate`` flags: the old one-account flags unchanged, repeatable ``--account``."""

from __future__ import annotations

import logging

import pytest

from cloudagent_etl.cli import build_parser, main
from cloudagent_etl.simulator.accounts import SimulatedAccount, seed_for
from cloudagent_etl.simulator.cli import parse_account, settings_from_args
from cloudagent_etl.simulator.server import SimulatorSettings


def settings(*flags: str) -> SimulatorSettings:
    return settings_from_args(build_parser().parse_args(["simulate", *flags]))


def test_without_accounts_the_flags_describe_the_same_one_account_as_before():
    """The demo, the local stack and the fixtures start it this way; their data must not change."""
    assert settings().accounts == (SimulatedAccount("demo_user", "demo-api-key", ("A", "B", "C"), 42),)
    old_style = settings("--user", "u", "--api-key", "k", "--campaigns", "X, Y", "--seed", "7")
    assert old_style.accounts == (SimulatedAccount("u", "k", ("X", "Y"), 7, "Asia/Kolkata"),)
    assert settings("--timezone", "Asia/Dubai").accounts[0].timezone == "Asia/Dubai"


def test_repeated_account_flags_give_one_account_each():
    parsed = settings(
        "--campaigns", "Sales,Support",
        "--timezone", "Asia/Singapore",
        "--account", "client_a:key-a",
        "--account", "client_b:key-b:Sales,Renewals",
        "--account", "client_c:key-c:Sales:Asia/Dubai",
    )  # fmt: skip
    assert [(a.user, a.api_key, a.campaigns, a.timezone) for a in parsed.accounts] == [
        ("client_a", "key-a", ("Sales", "Support"), "Asia/Singapore"),
        ("client_b", "key-b", ("Sales", "Renewals"), "Asia/Singapore"),
        ("client_c", "key-c", ("Sales",), "Asia/Dubai"),
    ]
    assert [a.data_seed for a in parsed.accounts] == [
        seed_for(u) for u in ("client_a", "client_b", "client_c")
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("only-a-KEY1", "must be USER:APIKEY"),
        ("client_a:KEY1:Sales:Asia/Dubai:extra", "more than 4 fields"),
        ("client_a:KEY1::Asia/Dubai", "campaign name is empty"),
        ("client_a:KEY1:Sales,,Support", "campaign name is empty"),
        ("client_a:KEY1:Sales:", "TIMEZONE is empty"),
        ("client_a:KEY1:Sales:Mars/Olympus", "unknown time zone"),
        ("client_a:", "must not be empty"),
    ],
)
def test_a_malformed_account_is_refused_without_quoting_its_key(value, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_account(value, default_campaigns=("Sales",), default_timezone="Asia/Kolkata")
    assert "KEY1" not in str(caught.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--account", "a:k1", "--user", "u"], "--user describe the one default account"),
        (["--account", "a:k1", "--seed", "1"], "--seed describe"),
        (["--account", "a:k1", "--account", "a:k2"], "own user name"),
    ],
)
def test_account_flags_that_contradict_each_other_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        settings(*flags)


def test_invalid_settings_exit_2_and_the_log_names_no_key(caplog):
    """Before the server starts: the process exits 2 and its log is safe to share."""
    with caplog.at_level(logging.INFO):
        assert main(["simulate", "--account", "client_a:KEY-SECRET-1:Sales:Mars/Olympus"]) == 2
    assert "unknown time zone 'Mars/Olympus'" in caplog.text
    assert "KEY-SECRET-1" not in caplog.text
