"""The simulator server's pure parts: rolling rate-limit window, URL masking, body styles, behaviour."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from cloudagent_etl.simulator.server import (
    Behaviour,
    SimulatorSettings,
    SimulatorState,
    callback_body,
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
