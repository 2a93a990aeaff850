"""DialStatusRequest validates every parameter on construction and renders the documented body."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from cloudagent_etl.api import DialStatusRequest, ExportFilters
from cloudagent_etl.errors import ConfigurationError, ValidationError

CALLBACK = "https://etl.example.com/callbacks/dial-status/req-1/tok-SECRET"


def make(**overrides: Any) -> DialStatusRequest:
    """A valid request with ``overrides``; a filter's name (``sortby``...) overrides that filter."""
    filters = {
        name: overrides.pop(name) for name in list(overrides) if name in ExportFilters.__dataclass_fields__
    }
    fields: dict[str, Any] = {
        "campaign_name": "Alpha",
        "user_name": "test_user",
        "from_date": datetime(2026, 1, 1, 18, 30, tzinfo=UTC),
        "to_date": datetime(2026, 1, 2, 18, 29, 59, tzinfo=UTC),
        "callback_url": CALLBACK,
    }
    return DialStatusRequest(**{**fields, **overrides}, filters=ExportFilters(**filters))


def test_body_has_every_documented_field_with_dates_in_the_account_zone() -> None:
    body = make().to_body("Asia/Kolkata")
    assert body == {
        "fromDate": "2026-01-02 00:00:00",
        "toDate": "2026-01-02 23:59:59",
        "sortby": "2",
        "status": "All",
        "dialstatus": "ALL",
        "dispositions": "ALL",
        "campaignName": "Alpha",
        "userName": "test_user",
        "callBackUrl": CALLBACK,
    }


def test_body_renders_dates_in_another_zone_whatever_zone_they_were_given_in() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    request = make(
        from_date=datetime(2026, 1, 2, 0, 0, tzinfo=ist), to_date=datetime(2026, 1, 2, 1, 0, tzinfo=ist)
    )
    body = request.to_body("UTC")
    assert (body["fromDate"], body["toDate"]) == ("2026-01-01 18:30:00", "2026-01-01 19:30:00")


def test_equal_from_and_to_dates_are_allowed() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    assert make(from_date=moment, to_date=moment).to_body("UTC")["fromDate"] == "2026-01-01 00:00:00"


def test_unknown_timezone_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="Mars/Olympus"):
        make().to_body("Mars/Olympus")


@pytest.mark.parametrize(
    ("field", "value", "parameter", "allowed"),
    [
        ("sortby", "3", "sortby", "'0', '1', '2'"),
        ("sortby", 2, "sortby", "'0', '1', '2'"),
        ("status", "all", "status", "'All', 'Fail', 'Success', 'Pending'"),
        ("status", "", "status", "'All', 'Fail', 'Success', 'Pending'"),
        ("dialstatus", "All", "dialstatus", "'ALL', 'Fail', 'NoAnswer', 'user_disconnected', 'answered'"),
        ("dialstatus", "busy", "dialstatus", "'ALL', 'Fail', 'NoAnswer', 'user_disconnected', 'answered'"),
        ("dispositions", "", "dispositions", "'ALL' or a disposition configured on the campaign"),
        ("dispositions", "   ", "dispositions", "'ALL' or a disposition configured on the campaign"),
        ("campaign_name", "", "campaignName", "a non-empty campaign name"),
        ("campaign_name", None, "campaignName", "a non-empty campaign name"),
        ("user_name", " ", "userName", "a non-empty CloudAgent user name"),
        ("user_name", None, "userName", "a non-empty CloudAgent user name"),
    ],
)
def test_invalid_choice_or_text_names_the_parameter_and_allowed_values(
    field: str, value: Any, parameter: str, allowed: str
) -> None:
    with pytest.raises(ValidationError) as info:
        make(**{field: value})
    assert info.value.parameter == parameter
    assert str(info.value).startswith(f"{parameter}: must be")
    assert allowed in str(info.value)


@pytest.mark.parametrize("value", ["Fail", "Success", "Pending", "All"])
def test_every_documented_status_is_accepted(value: str) -> None:
    assert make(status=value).to_body("UTC")["status"] == value


@pytest.mark.parametrize("value", ["ALL", "Fail", "NoAnswer", "user_disconnected", "answered"])
def test_every_documented_dialstatus_is_accepted(value: str) -> None:
    assert make(dialstatus=value).to_body("UTC")["dialstatus"] == value


@pytest.mark.parametrize("value", ["0", "1", "2"])
def test_every_documented_sortby_is_accepted(value: str) -> None:
    assert make(sortby=value).to_body("UTC")["sortby"] == value


def test_a_campaign_disposition_is_accepted() -> None:
    assert make(dispositions="Interested").to_body("UTC")["dispositions"] == "Interested"


@pytest.mark.parametrize(("field", "parameter"), [("from_date", "fromDate"), ("to_date", "toDate")])
def test_naive_datetime_is_refused(field: str, parameter: str) -> None:
    with pytest.raises(ValidationError, match=rf"^{parameter}: must be a timezone-aware datetime.*naive"):
        make(**{field: datetime(2026, 1, 1, 12, 0)})


@pytest.mark.parametrize(("field", "parameter"), [("from_date", "fromDate"), ("to_date", "toDate")])
def test_non_datetime_is_refused(field: str, parameter: str) -> None:
    with pytest.raises(ValidationError, match=rf"^{parameter}: must be a timezone-aware datetime; got str"):
        make(**{field: "2026-01-01 00:00:00"})


def test_from_date_after_to_date_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"^fromDate: must not be after toDate") as info:
        make(from_date=datetime(2026, 1, 3, tzinfo=UTC))
    assert info.value.parameter == "fromDate"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "etl.example.com/callbacks/x",
        "ftp://etl.example.com/callbacks/x",
        "https:///no-host",
        "http//missing-colon.example.com",
        "https://[broken/tok-SECRET",
        None,
    ],
)
def test_callback_url_must_be_absolute_http_and_is_never_quoted(url: Any) -> None:
    with pytest.raises(
        ValidationError, match=r"^callBackUrl: must be an absolute http:// or https:// URL"
    ) as info:
        make(callback_url=url)
    assert "tok-SECRET" not in str(info.value)


def test_http_callback_url_is_accepted() -> None:
    assert (
        make(callback_url="http://127.0.0.1:8080/cb/1/t").to_body("UTC")["callBackUrl"]
        == "http://127.0.0.1:8080/cb/1/t"
    )


def test_repr_hides_the_callback_token() -> None:
    request = make()
    assert "tok-SECRET" not in repr(request)
    assert "Alpha" in repr(request)


def test_request_is_immutable_and_replace_revalidates() -> None:
    request = make()
    with pytest.raises(AttributeError):
        request.filters.sortby = "1"  # type: ignore[misc]
    with pytest.raises(ValidationError, match=r"^sortby"):
        replace(request, filters=replace(request.filters, sortby="9"))
    with pytest.raises(ValidationError, match=r"^filters"):
        replace(request, filters={"sortby": "2"})
