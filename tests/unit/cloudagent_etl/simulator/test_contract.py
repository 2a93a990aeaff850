"""The simulator's request validation: the documented order of checks and its choices for the rest."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cloudagent_etl.simulator import contract
from cloudagent_etl.simulator.data import DISPOSITIONS

VALID = {
    "apiKey": "key-1",
    "userName": "user_1",
    "campaignName": "Alpha",
    "callBackUrl": "http://127.0.0.1:9/callbacks/x/token",
    "fromDate": "2025-03-01 00:00:00",
    "toDate": "2025-03-02 00:00:00",
    "sortby": "2",
    "status": "All",
    "dialstatus": "ALL",
    "dispositions": "ALL",
}


def validate(body: dict, header: str | None = None) -> contract.ExportRequest:
    return contract.validate_export_request(
        body, header, user_name="user_1", api_key="key-1", campaigns=("Alpha",), dispositions=DISPOSITIONS
    )


def message(body: dict, header: str | None = None) -> str:
    with pytest.raises(contract.InvalidRequest) as caught:
        validate(body, header)
    return caught.value.message


def test_valid_request_gives_the_ist_window_and_filters():
    request = validate(VALID)
    ist = ZoneInfo("Asia/Kolkata")
    assert request.window_start == datetime(2025, 3, 1, tzinfo=ist)
    assert request.window_end == datetime(2025, 3, 2, tzinfo=ist)
    assert (request.campaign_name, request.sortby, request.dispositions) == ("Alpha", "2", "ALL")


def test_api_key_from_the_header_wins_over_the_body():
    assert validate({**VALID, "apiKey": "wrong"}, header="key-1").user_name == "user_1"
    assert message(VALID, header="wrong") == "Authentication failed"
    assert message({k: v for k, v in VALID.items() if k != "apiKey"}, header="") == "apiKey is invalid"


def test_checks_run_in_the_documented_order():
    everything_wrong = {"apiKey": "", "userName": "", "campaignName": "", "callBackUrl": "", "fromDate": "x"}
    assert message(everything_wrong) == "apiKey is invalid"
    assert message({**everything_wrong, "apiKey": "nope"}) == "userName is invalid"
    assert message({**everything_wrong, "apiKey": "nope", "userName": "user_1"}) == "Authentication failed"
    valid_auth = {**everything_wrong, "apiKey": "key-1", "userName": "user_1"}
    assert message(valid_auth) == "campaignName is invalid"
    assert message({**valid_auth, "campaignName": "Alpha"}) == contract.CALLBACK_URL_INVALID
    assert message({**VALID, "fromDate": "x"}) == "fromDate is invalid"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"fromDate": "2025-03-01"}, "fromDate is invalid"),
        ({"toDate": None}, "toDate is invalid"),
        ({"toDate": "2025-02-28 23:59:59"}, "fromDate must not be later than toDate"),
        ({"sortby": 2}, "sortby is invalid"),
        ({"status": "all"}, "status is invalid"),
        ({"status": None}, "status is invalid"),
        ({"dialstatus": "Answered"}, "dialstatus is invalid"),
        ({"dispositions": ""}, "dispositions is invalid"),
        ({"dispositions": "Converted,Unknown"}, "dispositions is invalid"),
    ],
)
def test_undocumented_parameters_get_a_named_error(change, expected):
    assert message({**VALID, **change}) == expected


def test_sortby_defaults_to_all_data_and_dispositions_may_be_a_list():
    body = {k: v for k, v in VALID.items() if k != "sortby"}
    assert validate({**body, "dispositions": "Converted, Call Back"}).sortby == "0"


def test_the_simulator_imports_nothing_from_the_client():
    """Its own copy of the contract: a shared mistake would pass both sides' tests."""
    package = Path(contract.__file__).parent
    imported = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert "cloudagent_etl.simulator.contract" in imported
    assert not any(name.startswith("cloudagent_etl.api") for name in imported)


IST, DUBAI = ZoneInfo("Asia/Kolkata"), ZoneInfo("Asia/Dubai")


@dataclass(frozen=True)
class Account:
    user: str
    api_key: str
    campaigns: tuple[str, ...]
    zone: ZoneInfo = IST


# Two accounts with a campaign of the same name, as BPOs have; B keeps Dubai time.
CLIENT_A = Account("client_a", "key-a", ("Alpha", "Beta"))
CLIENT_B = Account("client_b", "key-b", ("Alpha", "Delta"), DUBAI)


def validate_two(body: dict, header: str | None = None) -> contract.ExportRequest:
    return contract.validate_for_accounts(
        body, header, accounts=(CLIENT_A, CLIENT_B), dispositions=DISPOSITIONS
    )


def message_two(body: dict, header: str | None = None) -> str:
    with pytest.raises(contract.InvalidRequest) as caught:
        validate_two(body, header)
    return caught.value.message


def as_account(account: Account, **changes: str) -> dict:
    return {**VALID, "userName": account.user, "apiKey": account.api_key, **changes}


def test_each_account_authenticates_with_its_own_pair_only():
    """A key is only right for its own user: another account's key fails like any wrong key."""
    assert validate_two(as_account(CLIENT_A)).user_name == "client_a"
    assert validate_two(as_account(CLIENT_B)).user_name == "client_b"
    assert message_two(as_account(CLIENT_A, apiKey="key-b")) == "Authentication failed"
    assert message_two(as_account(CLIENT_B), header="key-a") == "Authentication failed"
    assert message_two(as_account(CLIENT_A, userName="client_c")) == "Authentication failed"


def test_campaign_is_judged_against_the_requesting_account():
    assert validate_two(as_account(CLIENT_A, campaignName="Alpha")).campaign_name == "Alpha"
    assert validate_two(as_account(CLIENT_B, campaignName="Alpha")).campaign_name == "Alpha"
    assert message_two(as_account(CLIENT_A, campaignName="Delta")) == "campaignName is invalid"
    assert message_two(as_account(CLIENT_B, campaignName="Beta")) == "campaignName is invalid"


def test_the_order_of_checks_is_the_same_with_two_accounts():
    """Authentication is still judged before the campaign, the campaign before the callback URL."""
    wrong = {"campaignName": "Beta", "callBackUrl": "", "fromDate": "x"}
    assert message_two(as_account(CLIENT_B, apiKey="key-a", **wrong)) == "Authentication failed"
    assert message_two(as_account(CLIENT_B, **wrong)) == "campaignName is invalid"
    assert message_two(as_account(CLIENT_B, **{**wrong, "campaignName": "Delta"})) == (
        contract.CALLBACK_URL_INVALID
    )


def test_an_account_in_another_zone_gets_its_dates_read_in_that_zone():
    """CloudAgent's fromDate/toDate are the account's wall clock: 00:00 in Dubai is 01:30 in IST."""
    in_dubai = validate_two(as_account(CLIENT_B))
    assert in_dubai.window_start == datetime(2025, 3, 1, tzinfo=DUBAI)
    assert in_dubai.window_start.astimezone(ZoneInfo("UTC")) == datetime(
        2025, 2, 28, 20, tzinfo=ZoneInfo("UTC")
    )
    in_india = validate_two(as_account(CLIENT_A))
    assert in_dubai.window_start - in_india.window_start == timedelta(hours=1, minutes=30)
