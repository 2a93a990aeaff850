"""The simulator over real HTTP on loopback: documented error bodies, rate limit, callbacks in every style.

Callbacks go to a small ``http.server`` started by the test (``callback_sink``) that records every body and
answers with the status codes the test queues (200 once the queue is empty).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import httpx
import pytest

from cloudagent_etl.simulator.accounts import SimulatedAccount, seed_for
from cloudagent_etl.simulator.data import generate_records
from tests.timing import DEADLINE_S

CALLBACK_TOKEN = "tok-SECRET-9f2c"
CALLBACK_BASE_PATH = "/callbacks/dial-status/req-1"
CALLBACK_URL_MESSAGE = "callBackUrl cannot be empty (OR) it should contain 'http' or 'https'"


@dataclass
class Delivery:
    path: str
    content_type: str
    body: bytes
    at: float


@dataclass
class CallbackSink:
    """A loopback HTTP server that records callback deliveries."""

    base_url: str = ""
    received: list[Delivery] = field(default_factory=list)
    answers: deque[int] = field(default_factory=deque)

    @property
    def callback_url(self) -> str:
        return f"{self.base_url}{CALLBACK_BASE_PATH}/{CALLBACK_TOKEN}"

    def wait_for(self, count: int, timeout: float = DEADLINE_S) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} of {count} deliveries after {timeout}s")
            time.sleep(0.02)
        return self.received


@pytest.fixture
def callback_sink() -> Iterator[CallbackSink]:
    sink = CallbackSink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status = sink.answers.popleft() if sink.answers else 200
            sink.received.append(
                Delivery(self.path, self.headers.get("Content-Type", ""), body, time.monotonic())
            )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sink
    server.shutdown()
    server.server_close()
    thread.join(timeout=DEADLINE_S)
    assert not thread.is_alive(), f"the callback sink's server thread still runs after {DEADLINE_S:g} s"


def valid_body(simulator, callback_url: str = "http://127.0.0.1:9/callbacks/x/y", **changes: Any) -> dict:
    body = {
        "userName": simulator.user,
        "campaignName": "Alpha",
        "callBackUrl": callback_url,
        "fromDate": "2025-03-01 00:00:00",
        "toDate": "2025-03-02 00:00:00",
        "sortby": "2",
        "status": "All",
        "dialstatus": "ALL",
        "dispositions": "ALL",
    }
    body.update(changes)
    return {key: value for key, value in body.items() if value is not None}


def post(simulator, body: dict, api_key: str | None = None, key_in: str = "header") -> httpx.Response:
    headers = {}
    if api_key is not None and key_in == "header":
        headers["apiKey"] = api_key
    elif api_key is not None:
        body = {**body, "apiKey": api_key}
    return httpx.post(simulator.endpoint_url, json=body, headers=headers, timeout=10)


def export(simulator, callback_url: str = "http://127.0.0.1:9/callbacks/x/y", **changes: Any) -> dict:
    """Send a valid export request (with ``changes``) and return the answer's body."""
    return post(simulator, valid_body(simulator, callback_url, **changes), simulator.api_key).json()


def error(message: str) -> dict:
    return {"status": "error", "message": message, "uniqueId": ""}


API_KEY, USER, CAMPAIGN, CALLBACK = (
    "apiKey is invalid", "userName is invalid", "campaignName is invalid", CALLBACK_URL_MESSAGE,
)  # fmt: skip
AUTH = "Authentication failed"
# (case, body changes, apiKey sent ("KEY" = the right one), where) -> message. A change to None drops the key.
DOCUMENTED_CASES = [
    ("apiKey key missing", {}, None, "header", API_KEY),
    ("apiKey key invalid", {"apikey": "test-api-key-SECRET123"}, None, "header", API_KEY),
    ("apiKey value missing (header)", {}, "", "header", API_KEY),
    ("apiKey value missing (body)", {}, "", "body", API_KEY),
    ("apiKey value wrong (header)", {}, "wrong-key", "header", AUTH),
    ("apiKey value wrong (body)", {}, "wrong-key", "body", AUTH),
    ("userName key missing", {"userName": None}, "KEY", "header", USER),
    ("userName key invalid", {"userName": None, "username": "test_user"}, "KEY", "header", USER),
    ("userName value missing", {"userName": ""}, "KEY", "header", USER),
    ("userName value wrong", {"userName": "someone_else"}, "KEY", "header", AUTH),
    ("campaignName key missing", {"campaignName": None}, "KEY", "header", CAMPAIGN),
    ("campaignName key invalid", {"campaignName": None, "campaignname": "Alpha"}, "KEY", "header", CAMPAIGN),
    ("campaignName value missing", {"campaignName": ""}, "KEY", "header", CAMPAIGN),
    ("campaignName value invalid", {"campaignName": "NoSuchCampaign"}, "KEY", "header", CAMPAIGN),
    ("callBackUrl key missing", {"callBackUrl": None}, "KEY", "header", CALLBACK),
    ("callBackUrl key invalid", {"callBackUrl": None, "callbackUrl": "http://x"}, "KEY", "header", CALLBACK),
    ("callBackUrl value missing", {"callBackUrl": ""}, "KEY", "header", CALLBACK),
    ("callBackUrl value invalid", {"callBackUrl": "ftp://example.com/cb"}, "KEY", "header", CALLBACK),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "api_key", "key_in", "message"),
    [case[1:] for case in DOCUMENTED_CASES],
    ids=[case[0] for case in DOCUMENTED_CASES],
)
def test_documented_error_cases_return_the_exact_body(fresh_simulator, changes, api_key, key_in, message):
    api_key = fresh_simulator.api_key if api_key == "KEY" else api_key
    response = post(fresh_simulator, valid_body(fresh_simulator, **changes), api_key, key_in)
    assert response.status_code == 200
    assert response.json() == error(message)
    [logged] = fresh_simulator.requests_log()
    assert (logged["outcome"], logged["message"], logged["unique_id"]) == ("error", message, "")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fromDate": "2025-03-01"}, "fromDate is invalid"),
        ({"toDate": None}, "toDate is invalid"),
        ({"toDate": "2025-02-01 00:00:00"}, "fromDate must not be later than toDate"),
        ({"sortby": "5"}, "sortby is invalid"),
        ({"status": "Done"}, "status is invalid"),
        ({"dialstatus": None}, "dialstatus is invalid"),
        ({"dispositions": "Unknown"}, "dispositions is invalid"),
    ],
)
def test_other_parameters_get_a_named_error_body(fresh_simulator, changes, message):
    response = post(fresh_simulator, valid_body(fresh_simulator, **changes), fresh_simulator.api_key)
    assert response.json() == error(message)


def test_a_body_that_is_not_a_json_object_counts_as_empty(fresh_simulator):
    response = httpx.post(
        fresh_simulator.endpoint_url, content=b"not json", headers={"apiKey": "x"}, timeout=10
    )
    assert response.json() == error("userName is invalid")


def test_the_eleventh_request_within_60_s_is_refused_per_account(fresh_simulator):
    bodies = [valid_body(fresh_simulator), valid_body(fresh_simulator, campaignName="Nope")] * 5
    answers = [post(fresh_simulator, body, fresh_simulator.api_key).json() for body in bodies]
    assert all(answer != {"status": "error", "message": "Max limit exceeded"} for answer in answers)
    refused = post(fresh_simulator, valid_body(fresh_simulator), fresh_simulator.api_key)
    assert refused.status_code == 200
    assert refused.json() == {"status": "error", "message": "Max limit exceeded"}
    other_account = post(fresh_simulator, valid_body(fresh_simulator, userName="intruder"), "wrong")
    assert other_account.json() == error("Authentication failed")

    log = fresh_simulator.requests_log()
    assert len(log) == 12
    assert [entry["arrived_at"] for entry in log] == sorted(entry["arrived_at"] for entry in log)
    assert [entry["account"] for entry in log] == ["test_user"] * 11 + ["intruder"]
    assert log[10]["outcome"] == "error"
    assert log[10]["message"] == "Max limit exceeded"
    assert sum(entry["outcome"] == "accepted" for entry in log) == 5


def records_of(delivery: Delivery, style: str) -> list[dict]:
    if style == "json-array":
        return json.loads(delivery.body)
    if style == "json-object":
        document = json.loads(delivery.body)
        assert set(document) == {"uniqueId", "data"}
        return document["data"]
    return json.loads(parse_qs(delivery.body.decode())["data"][0])


@pytest.mark.parametrize(
    ("style", "content_type"),
    [
        ("json-array", "application/json"),
        ("json-object", "application/json"),
        ("form", "application/x-www-form-urlencoded"),
    ],
)
def test_accepted_request_is_delivered_in_each_style(fresh_simulator, callback_sink, style, content_type):
    fresh_simulator.configure(delivery=style)
    body = export(fresh_simulator, callback_sink.callback_url)
    assert body["status"] == "queued"
    assert len(body["uniqueId"]) == 32

    [delivery] = callback_sink.wait_for(1)
    truth = fresh_simulator.ground_truth(body["uniqueId"])
    assert truth
    assert delivery.path == f"{CALLBACK_BASE_PATH}/{CALLBACK_TOKEN}"
    assert delivery.content_type == content_type
    assert records_of(delivery, style) == truth
    if style == "json-object":
        assert json.loads(delivery.body)["uniqueId"] == body["uniqueId"]
    assert all("2025-03-01 00:00:00" <= record["UpdatedDate"] < "2025-03-02 00:00:00" for record in truth)
    assert {(r["UserName"], r["Apikey"]) for r in truth} == {(fresh_simulator.user, fresh_simulator.api_key)}

    [attempt] = fresh_simulator.wait_for_deliveries(body["uniqueId"])
    assert attempt["callback_url"] == f"{callback_sink.base_url}{CALLBACK_BASE_PATH}/***"
    assert (attempt["kind"], attempt["attempt"], attempt["status_code"]) == ("primary", 1, 200)
    assert attempt["error"] is None
    assert CALLBACK_TOKEN not in fresh_simulator.log()
    assert fresh_simulator.api_key not in fresh_simulator.log()


def test_same_window_gives_the_same_records_and_filters_apply(fresh_simulator):
    first, again = (export(fresh_simulator)["uniqueId"] for _ in range(2))
    everything = fresh_simulator.ground_truth(first)
    assert everything == fresh_simulator.ground_truth(again)
    filtered = export(fresh_simulator, status="Fail", dialstatus="NoAnswer")["uniqueId"]
    expected = [r for r in everything if r["Status"] == "Fail" and r["DialStatus"].endswith("NoAnswer")]
    assert expected
    assert fresh_simulator.ground_truth(filtered) == expected


def test_credentials_in_records_can_be_switched_off(fresh_simulator):
    fresh_simulator.configure(embed_credentials=False)
    truth = fresh_simulator.ground_truth(export(fresh_simulator)["uniqueId"])
    assert truth
    assert not any({"UserName", "Apikey"} & set(record) for record in truth)


def test_ground_truth_of_an_unknown_unique_id_is_404(fresh_simulator):
    response = httpx.get(f"{fresh_simulator.base_url}/_sim/ground-truth/nope", timeout=10)
    assert response.status_code == 404


def test_delivery_without_a_2xx_is_retried_with_backoff(fresh_simulator, callback_sink):
    fresh_simulator.configure(delivery_backoff_s=0.1)
    callback_sink.answers.extend([503, 500])
    unique_id = export(fresh_simulator, callback_sink.callback_url)["uniqueId"]
    attempts = fresh_simulator.wait_for_deliveries(unique_id)
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 503), (2, 500), (3, 200)]
    received = callback_sink.wait_for(3)
    assert len({d.body for d in received}) == 1
    assert received[1].at - received[0].at >= 0.1
    assert received[2].at - received[1].at >= 0.2


def test_delivery_gives_up_after_the_configured_attempts(fresh_simulator, callback_sink):
    fresh_simulator.configure(delivery_backoff_s=0.05, delivery_attempts=3)
    callback_sink.answers.extend([500] * 5)
    export(fresh_simulator, callback_sink.callback_url)
    callback_sink.wait_for(3)
    time.sleep(0.5)  # an absence: nothing to wait for (a busy machine can only hide a 4th, not invent one)
    assert len(callback_sink.received) == 3
    assert [d["status_code"] for d in fresh_simulator.deliveries()] == [500, 500, 500]


def test_duplicate_deliveries_send_identical_bodies(fresh_simulator, callback_sink):
    fresh_simulator.configure(duplicate_deliveries=2, delivery="form")
    unique_id = export(fresh_simulator, callback_sink.callback_url)["uniqueId"]
    attempts = fresh_simulator.wait_for_deliveries(unique_id, count=3)
    assert [a["kind"] for a in attempts] == ["primary", "duplicate", "duplicate"]
    received = callback_sink.wait_for(3)
    assert len({d.body for d in received}) == 1


def test_late_delivery_repeats_the_body_after_the_delay(fresh_simulator, callback_sink):
    fresh_simulator.configure(late_delay_s=0.6)
    unique_id = export(fresh_simulator, callback_sink.callback_url)["uniqueId"]
    attempts = fresh_simulator.wait_for_deliveries(unique_id, count=2)
    assert [a["kind"] for a in attempts] == ["primary", "late"]
    first, late = callback_sink.wait_for(2)
    assert first.body == late.body
    assert late.at - first.at >= 0.6


def test_never_deliver_keeps_the_ground_truth_but_posts_nothing(fresh_simulator, callback_sink):
    fresh_simulator.configure(never_deliver=True)
    unique_id = export(fresh_simulator, callback_sink.callback_url)["uniqueId"]
    time.sleep(1.0)  # five times the callback delay; an absence, so a pause (it cannot fail spuriously)
    assert callback_sink.received == []
    assert fresh_simulator.deliveries() == []
    assert fresh_simulator.ground_truth(unique_id)


def test_config_rejects_unknown_settings_and_reset_restores_the_start(fresh_simulator):
    response = httpx.post(f"{fresh_simulator.base_url}/_sim/config", json={"colour": "red"}, timeout=10)
    assert response.status_code == 422
    assert "unknown setting" in response.json()["detail"]
    assert fresh_simulator.configure(records_per_day=5)["records_per_day"] == 5
    fresh_simulator.reset()
    assert fresh_simulator.configure() == fresh_simulator.startup_behaviour
    assert fresh_simulator.startup_behaviour["callback_delay_s"] == 0.2


# Several accounts in one process (the ``two_account_simulator`` fixture): client_a in IST, client_b in
# Dubai time, both with campaigns Alpha and Beta.


def send_as(
    simulator, account: SimulatedAccount, callback_url: str = "http://127.0.0.1:9/cb/x", **changes: Any
) -> dict:
    """A request of ``account`` (its user, its key in the header); the answer's body."""
    body = valid_body(account, callback_url, **changes)  # valid_body reads only ``.user``
    return httpx.post(
        simulator.endpoint_url, json=body, headers={"apiKey": account.api_key}, timeout=10
    ).json()


def test_two_accounts_get_their_own_records_for_the_same_campaign_at_their_own_callbacks(
    two_account_simulator, callback_sink
):
    """One BPO, two clients, both with a campaign "Alpha": each export carries only its account's data."""
    client_a, client_b = two_account_simulator.accounts
    assert (client_a.timezone, client_b.timezone) == ("Asia/Kolkata", "Asia/Dubai")
    urls = {
        a.user: f"{callback_sink.base_url}/callbacks/dial-status/{a.user}/{CALLBACK_TOKEN}"
        for a in (client_a, client_b)
    }
    answers = {a.user: send_as(two_account_simulator, a, urls[a.user]) for a in (client_a, client_b)}
    assert {answer["status"] for answer in answers.values()} == {"queued"}

    received = {delivery.path.split("/")[3]: delivery for delivery in callback_sink.wait_for(2)}
    assert set(received) == {"client_a", "client_b"}
    truth = {}
    for account in (client_a, client_b):
        unique_id = answers[account.user]["uniqueId"]
        truth[account.user] = two_account_simulator.ground_truth(unique_id)
        assert json.loads(received[account.user].body) == truth[account.user]
        # The same records the generator gives for this account's seed, with the window on its wall clock.
        zone = ZoneInfo(account.timezone)
        expected = generate_records(
            "Alpha", datetime(2025, 3, 1, tzinfo=zone), datetime(2025, 3, 2, tzinfo=zone),
            seed=seed_for(account.user), records_per_day=200, sortby="2", timezone=zone,
        )  # fmt: skip
        assert truth[account.user] == [
            {**r, "UserName": account.user, "Apikey": account.api_key} for r in expected
        ]
        [export] = two_account_simulator.exports(account=account.user)
        assert (export["unique_id"], export["campaign_name"], export["timezone"]) == (
            unique_id,
            "Alpha",
            account.timezone,
        )
        assert (export["from_date"], export["records"]) == ("2025-03-01 00:00:00", len(expected))
        [attempt] = two_account_simulator.wait_for_deliveries(unique_id)
        assert two_account_simulator.deliveries(account=account.user) == [attempt]
        assert attempt["account"] == account.user
        assert [e["unique_id"] for e in two_account_simulator.requests_log(account=account.user)] == [
            unique_id
        ]

    phones = [{r["PhoneNumber"] for r in truth[user]} for user in ("client_a", "client_b")]
    assert phones[0].isdisjoint(phones[1])
    log = two_account_simulator.log()
    assert [secret for secret in (client_a.api_key, client_b.api_key, CALLBACK_TOKEN) if secret in log] == []


def test_each_account_is_authenticated_and_judged_by_its_own_settings(two_account_simulator):
    """The other client's key, or the other client's campaign, is refused as CloudAgent would."""
    client_a, client_b = two_account_simulator.accounts
    a_with_b_key = valid_body(client_a)
    answer = httpx.post(
        two_account_simulator.endpoint_url,
        json=a_with_b_key,
        headers={"apiKey": client_b.api_key},
        timeout=10,
    )
    assert answer.json() == error("Authentication failed")
    assert send_as(two_account_simulator, client_a, campaignName="Delta") == error("campaignName is invalid")
    assert send_as(two_account_simulator, client_b, campaignName="Gamma") == error("campaignName is invalid")
    assert send_as(two_account_simulator, client_b, campaignName="Delta")["status"] == "queued"


def test_each_account_has_its_own_10_requests_per_60_s(two_account_simulator):
    """One client's backfill using up its limit must not refuse the other client's requests."""
    two_account_simulator.configure(never_deliver=True, records_per_day=5)
    client_a, client_b = two_account_simulator.accounts
    limited = {"status": "error", "message": "Max limit exceeded"}
    # Valid and invalid requests alike count against the account.
    a_answers = [
        send_as(two_account_simulator, client_a, campaignName=name) for name in ["Alpha", "Nope"] * 5
    ]
    assert limited not in a_answers
    assert send_as(two_account_simulator, client_a) == limited
    b_answers = [send_as(two_account_simulator, client_b, campaignName=name) for name in ["Beta", "Nope"] * 5]
    assert limited not in b_answers
    assert sum(answer["status"] == "queued" for answer in b_answers) == 5
    assert send_as(two_account_simulator, client_b) == limited
    assert send_as(two_account_simulator, client_a) == limited

    for account, refused in ((client_a, 2), (client_b, 1)):
        outcomes = [entry["message"] for entry in two_account_simulator.requests_log(account=account.user)]
        assert outcomes[10:] == ["Max limit exceeded"] * refused
        assert "Max limit exceeded" not in outcomes[:10]
