"""The simulator server's pure parts: rolling rate-limit window, URL masking, body styles, behaviour."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import pytest

from cloudagent_etl.simulator import contract
from cloudagent_etl.simulator.accounts import SimulatedAccount, seed_for
from cloudagent_etl.simulator.data import DISPOSITIONS
from cloudagent_etl.simulator.server import (
    Behaviour,
    SimulatorSettings,
    SimulatorState,
    callback_body,
    export_records,
    mask_callback_url,
)

RECORDS = [{"CampaignName": "Alpha", "UCID": "9007199254740993"}]


def test_rate_limit_window_is_rolling_and_per_account():
    settings = SimulatorSettings(user="u", api_key="k", campaigns=("A",), rate_limit_per_minute=3)
    state = SimulatorState(settings)
    assert [state.admit("u", t) for t in (0.0, 10.0, 20.0, 30.0)] == [True, True, True, False]
    assert state.admit("other", 30.0)
    assert not state.admit("u", 59.9)  # refused calls do not extend the block ...
    assert state.admit("u", 60.0)  # ... the call at 0.0 left the window at 60.0
    assert not state.admit("u", 60.5)
    state.reset()
    assert state.admit("u", 60.5)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("http://127.0.0.1:8000/callbacks/dial-status/req-1/s3cret", "http://127.0.0.1:8000/callbacks/dial-status/req-1/***"),
        ("https://user:pw@example.com/cb/tok/?x=s3cret", "https://example.com/cb/***"),
    ],
)  # fmt: skip
def test_mask_callback_url_hides_the_token(url, masked):
    assert mask_callback_url(url) == masked


def test_callback_body_styles_carry_the_same_records():
    array, array_type = callback_body("json-array", "u1", RECORDS)
    obj, obj_type = callback_body("json-object", "u1", RECORDS)
    form, form_type = callback_body("form", "u1", RECORDS)
    assert (array_type, obj_type, form_type) == (
        "application/json", "application/json", "application/x-www-form-urlencoded",
    )  # fmt: skip
    assert json.loads(array) == RECORDS
    assert json.loads(obj) == {"uniqueId": "u1", "data": RECORDS}
    assert json.loads(parse_qs(form.decode())["data"][0]) == RECORDS


def test_behaviour_updates_are_checked():
    behaviour = Behaviour().updated({"delivery": "form", "late_delay_s": 1, "duplicate_deliveries": 2})
    assert (behaviour.delivery, behaviour.late_delay_s, behaviour.duplicate_deliveries) == ("form", 1, 2)
    assert behaviour.updated({"late_delay_s": None}).late_delay_s is None
    for bad, message in [
        ({"delivery": "xml"}, "delivery must be one of"),
        ({"nope": 1}, "unknown setting"),
        ({"never_deliver": 1}, "wrong type"),
        ({"records_per_day": 1.5}, "wrong type"),
        ({"callback_delay_s": -1}, "must not be negative"),
        ({"delivery_attempts": 0}, "at least 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            behaviour.updated(bad)


CLIENT_A = SimulatedAccount("client_a", "key-a-SECRET", ("Alpha", "Beta"))
CLIENT_B = SimulatedAccount("client_b", "key-b-SECRET", ("Alpha", "Delta"), timezone="Asia/Dubai")
SAME_SEED_AS_A = SimulatedAccount("client_c", "k", ("Alpha",), seed=CLIENT_A.data_seed)
REQUEST = {
    "campaignName": "Alpha",
    "callBackUrl": "http://127.0.0.1:9/callbacks/x/token",
    "fromDate": "2025-03-01 00:00:00",
    "toDate": "2025-03-03 00:00:00",
    "sortby": "0",
    "status": "All",
    "dialstatus": "ALL",
    "dispositions": "ALL",
}


def accepted(settings: SimulatorSettings, user: str, api_key: str, **changes: str) -> list[dict[str, str]]:
    """What the server does with a valid request: authenticate, then generate the account's records."""
    body = {**REQUEST, "userName": user, **changes}
    export = contract.validate_for_accounts(
        body, api_key, accounts=settings.accounts, dispositions=DISPOSITIONS
    )
    account = settings.account(export.user_name)
    assert account is not None
    return export_records(account, export, settings.behaviour)


def test_the_one_account_fields_become_the_single_ist_account_with_seed_42():
    """Every existing caller passes user/api_key/campaigns: that stays the one-account case."""
    settings = SimulatorSettings(user="u", api_key="k", campaigns=("A", "B"))
    assert settings.accounts == (SimulatedAccount("u", "k", ("A", "B"), 42, "Asia/Kolkata"),)
    assert settings.account("u") is settings.accounts[0]
    assert settings.account("other") is None


def test_the_default_account_exports_what_it_did_before_accounts_existed():
    """Byte-identical to the single-account simulator: digest taken from the code before this change."""
    settings = SimulatorSettings(user="test_user", api_key="k", campaigns=("Alpha",))
    records = accepted(settings, "test_user", "k")
    assert len(records) == 583
    digest = hashlib.sha256(json.dumps(records).encode()).hexdigest()
    assert digest == "cfff4b39132b5b4ecc64c784fd234187393220d5fbb2a9e7c3755575a4b9bb50"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accounts": (CLIENT_A, SimulatedAccount("client_a", "other", ("X",)))}, "own user name"),
        ({"accounts": (CLIENT_A, SAME_SEED_AS_A)}, "same seed"),
        ({"accounts": (CLIENT_A,), "user": "u"}, "either accounts or"),
        ({"accounts": (CLIENT_A,), "seed": 7}, "either accounts or"),
        ({"user": "u", "api_key": "k", "campaigns": ()}, "at least one campaign"),
        ({"user": "", "api_key": "k", "campaigns": ("A",)}, "must not be empty"),
        ({"accounts": (CLIENT_A,), "rate_limit_per_minute": 0}, "at least 1"),
    ],
)  # fmt: skip
def test_settings_refuse_ambiguous_or_empty_accounts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimulatorSettings(**kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("u", "k", ()), "at least one campaign"),
        (("u", "k", "Alpha,Beta"), "not one string"),
        (("u", "k", ("Alpha", " ")), "campaign name is empty"),
        (("u", "k", ("Alpha", "Alpha")), "named twice"),
        (("u", " ", ("Alpha",)), "must not be empty"),
        (("u", "k", ("Alpha",), None, "Asia/Nowhere"), "unknown time zone"),
    ],
)
def test_an_account_needs_credentials_campaigns_and_a_real_zone(args, message):
    with pytest.raises(ValueError, match=message):
        SimulatedAccount(*args)


def test_an_account_never_shows_its_key():
    """Settings end up in logs and tracebacks; the key must not."""
    settings = SimulatorSettings(accounts=(CLIENT_A, CLIENT_B))
    assert "SECRET" not in repr(settings)
    with pytest.raises(ValueError, match="'client_a'") as caught:
        SimulatedAccount("client_a", "key-a-SECRET", ())
    assert "SECRET" not in str(caught.value)


def test_default_seeds_come_from_the_user_name():
    assert CLIENT_A.data_seed == seed_for("client_a") != CLIENT_B.data_seed
    assert SimulatedAccount("client_a", "another-key", ("Z",)).data_seed == CLIENT_A.data_seed
    assert SimulatedAccount("client_a", "k", ("Z",), seed=5).data_seed == 5


def test_accounts_get_their_own_records_for_the_same_campaign_and_window():
    """Two clients' "Alpha" are different campaigns; each record carries the requester's credentials."""
    settings = SimulatorSettings(accounts=(CLIENT_A, CLIENT_B))
    of_a = accepted(settings, "client_a", "key-a-SECRET")
    of_b = accepted(settings, "client_b", "key-b-SECRET")
    assert of_a
    assert of_b
    assert {r["PhoneNumber"] for r in of_a}.isdisjoint({r["PhoneNumber"] for r in of_b})
    assert {(r["UserName"], r["Apikey"]) for r in of_a} == {("client_a", "key-a-SECRET")}
    assert {(r["UserName"], r["Apikey"]) for r in of_b} == {("client_b", "key-b-SECRET")}
    assert {r["CampaignName"] for r in of_a + of_b} == {"Alpha"}


def test_an_account_in_another_zone_gets_records_on_its_own_wall_clock():
    """Client B's window is Dubai time: its records' times fall inside it when read as Dubai time."""
    settings = SimulatorSettings(accounts=(CLIENT_A, CLIENT_B))
    of_b = accepted(settings, "client_b", "key-b-SECRET", sortby="2", fromDate="2025-03-01 00:00:00")
    assert of_b
    assert all("2025-03-01 00:00:00" <= r["UpdatedDate"] < "2025-03-03 00:00:00" for r in of_b)
    # The same records, generated for instants in IST, read 1.5 hours later: the zone was applied.
    dubai = ZoneInfo("Asia/Dubai")
    export = contract.ExportRequest(
        user_name="client_b", campaign_name="Alpha", callback_url="http://x",
        window_start=datetime(2025, 3, 1, 1, 30, tzinfo=ZoneInfo("Asia/Kolkata")),
        window_end=datetime(2025, 3, 3, tzinfo=dubai),
        sortby="2", status="All", dialstatus="ALL", dispositions="ALL",
    )  # fmt: skip
    assert export_records(CLIENT_B, export, Behaviour()) == of_b


def test_embedded_credentials_can_be_switched_off_for_every_account():
    settings = SimulatorSettings(accounts=(CLIENT_A, CLIENT_B), behaviour=Behaviour(embed_credentials=False))
    assert not any({"UserName", "Apikey"} & set(r) for r in accepted(settings, "client_b", "key-b-SECRET"))


def test_rate_limit_windows_of_two_accounts_are_independent():
    """Each account has its own 10 per 60 s: one client's backfill must not starve another's."""
    state = SimulatorState(SimulatorSettings(accounts=(CLIENT_A, CLIENT_B)))
    assert all(state.admit("client_a", second) for second in range(10))
    assert not state.admit("client_a", 10.0)
    assert all(state.admit("client_b", 10.0 + second) for second in range(10))
    assert not state.admit("client_b", 20.0)
    assert not state.admit("client_a", 59.5)
    assert state.admit("client_a", 60.0)  # a's first call left its window; b's window is untouched
    assert not state.admit("client_b", 60.0)
