"""The simulator's own copy of the documented Campaign Dial Status contract, and request validation.

Deliberately independent of ``cloudagent_etl.api``: if the client and the simulator shared one table of
error messages, a mistake in it would pass both sides' tests. Everything here is transcribed from
docs/cloudagent-contract.md (from Ozonetel's reference page).

Check order (the first failing check answers; every answer is HTTP 200):

1. ``apiKey`` (header ``apiKey``, else body field ``apiKey``) missing, misspelt or empty
   -> ``apiKey is invalid``
2. ``userName`` key missing/misspelt or value empty -> ``userName is invalid``
3. ``apiKey`` or ``userName`` value wrong -> ``Authentication failed``: the (userName, apiKey) pair is not
   one of the configured accounts (the right key of another account is as wrong as any other)
4. ``campaignName`` missing, empty, not text or not one of *that account's* campaigns
   -> ``campaignName is invalid``
5. ``callBackUrl`` missing, empty, not text or not containing ``http``/``https`` -> the callBackUrl message
6. The parameters the documentation gives no error body for (our choice, same shape):
   ``fromDate``/``toDate`` missing or not ``YYYY-MM-DD HH:MM:SS`` (wall clock in the account's time zone)
   -> ``fromDate is invalid`` /
   ``toDate is invalid``; ``fromDate`` later than ``toDate`` -> ``fromDate must not be later than toDate``;
   ``sortby`` not "0"/"1"/"2" -> ``sortby is invalid`` (absent means "0", all data);
   ``status``, ``dialstatus``, ``dispositions`` missing or not an allowed value -> ``status is invalid``,
   ``dialstatus is invalid``, ``dispositions is invalid``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo

ENDPOINT = "/endpoint/dailer/data/preview/download"
#: fromDate/toDate and every time in a record are wall-clock times of the account's zone, without an
#: offset; this is the zone of an account that names none (CloudAgent India: IST).
TIMEZONE = ZoneInfo("Asia/Kolkata")
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

SORTBY_VALUES = ("0", "1", "2")  # all data, created date, updated date
LEAD_STATUSES = ("All", "Fail", "Success", "Pending")
DIAL_STATUSES = ("ALL", "Fail", "NoAnswer", "user_disconnected", "answered")
ALL_DISPOSITIONS = "ALL"

API_KEY_INVALID = "apiKey is invalid"
AUTHENTICATION_FAILED = "Authentication failed"
USER_NAME_INVALID = "userName is invalid"
CAMPAIGN_NAME_INVALID = "campaignName is invalid"
CALLBACK_URL_INVALID = "callBackUrl cannot be empty (OR) it should contain 'http' or 'https'"
MAX_LIMIT_EXCEEDED = "Max limit exceeded"
FROM_AFTER_TO = "fromDate must not be later than toDate"
ACCEPTED_MESSAGE = "Request accepted; the data will be posted to the callBackUrl"


def error_body(message: str) -> dict[str, str]:
    """A documented error answer (HTTP 200)."""
    return {"status": "error", "message": message, "uniqueId": ""}


def rate_limited_body() -> dict[str, str]:
    """The rate-limit answer: as on CloudAgent's sibling APIs, it has no ``uniqueId``."""
    return {"status": "error", "message": MAX_LIMIT_EXCEEDED}


def accepted_body(unique_id: str) -> dict[str, str]:
    return {"status": "queued", "message": ACCEPTED_MESSAGE, "uniqueId": unique_id}


class Account(Protocol):
    """What the checks need to know of a configured account."""

    @property
    def user(self) -> str: ...

    @property
    def api_key(self) -> str: ...

    @property
    def campaigns(self) -> Collection[str]: ...

    @property
    def zone(self) -> tzinfo: ...


@dataclass(frozen=True)
class _OneAccount:
    user: str
    api_key: str = field(repr=False)
    campaigns: Collection[str]
    zone: tzinfo = TIMEZONE


@dataclass(frozen=True)
class ExportRequest:
    """A request that passed every check: the account, the campaign, the window and the filters."""

    user_name: str
    campaign_name: str
    callback_url: str
    window_start: datetime  # aware, in the account's zone
    window_end: datetime  # aware, in the account's zone
    sortby: str
    status: str
    dialstatus: str
    dispositions: str


class InvalidRequest(Exception):
    """The request failed a check; ``message`` is the body's message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _text(body: Mapping[str, Any], key: str) -> str:
    """The text value of ``key`` as sent, or "" when it is missing, blank or not text."""
    value = body.get(key)
    return value if isinstance(value, str) and value.strip() else ""


def _parse_date(body: Mapping[str, Any], key: str, zone: tzinfo) -> datetime:
    try:
        return datetime.strptime(_text(body, key), DATE_FORMAT).replace(tzinfo=zone)
    except ValueError:
        raise InvalidRequest(f"{key} is invalid") from None


def validate_export_request(
    body: Mapping[str, Any],
    header_api_key: str | None,
    *,
    user_name: str,
    api_key: str,
    campaigns: Collection[str],
    dispositions: Collection[str],
) -> ExportRequest:
    """The checks for one account in IST (see :func:`validate_for_accounts`); raise InvalidRequest."""
    account = _OneAccount(user_name, api_key, campaigns)
    return validate_for_accounts(body, header_api_key, accounts=(account,), dispositions=dispositions)


def validate_for_accounts(
    body: Mapping[str, Any],
    header_api_key: str | None,
    *,
    accounts: Iterable[Account],
    dispositions: Collection[str],
) -> ExportRequest:
    """Check a request body (and the ``apiKey`` header) in the documented order; raise InvalidRequest.

    Authentication matches the (userName, apiKey) pair against ``accounts``; the campaign and the window
    are then judged by the account it names: its campaigns, its time zone.
    """
    given_key = header_api_key if header_api_key is not None else _text(body, "apiKey")
    if not given_key.strip():
        raise InvalidRequest(API_KEY_INVALID)
    given_user = _text(body, "userName")
    if not given_user:
        raise InvalidRequest(USER_NAME_INVALID)
    account = next((a for a in accounts if a.user == given_user and a.api_key == given_key), None)
    if account is None:
        raise InvalidRequest(AUTHENTICATION_FAILED)
    campaign = _text(body, "campaignName")
    if campaign not in account.campaigns:
        raise InvalidRequest(CAMPAIGN_NAME_INVALID)
    callback_url = _text(body, "callBackUrl")
    if "http" not in callback_url:  # the documented rule: non-empty and containing http or https
        raise InvalidRequest(CALLBACK_URL_INVALID)

    window_start = _parse_date(body, "fromDate", account.zone)
    window_end = _parse_date(body, "toDate", account.zone)
    if window_start > window_end:
        raise InvalidRequest(FROM_AFTER_TO)
    sortby = body.get("sortby", "0")
    if sortby not in SORTBY_VALUES:
        raise InvalidRequest("sortby is invalid")
    status = body.get("status")
    if status not in LEAD_STATUSES:
        raise InvalidRequest("status is invalid")
    dialstatus = body.get("dialstatus")
    if dialstatus not in DIAL_STATUSES:
        raise InvalidRequest("dialstatus is invalid")
    wanted_dispositions = _text(body, "dispositions")
    if wanted_dispositions != ALL_DISPOSITIONS and (
        not wanted_dispositions
        or any(value.strip() not in dispositions for value in wanted_dispositions.split(","))
    ):
        raise InvalidRequest("dispositions is invalid")
    return ExportRequest(
        user_name=given_user,
        campaign_name=campaign,
        callback_url=callback_url,
        window_start=window_start,
        window_end=window_end,
        sortby=str(sortby),
        status=str(status),
        dialstatus=str(dialstatus),
        dispositions=wanted_dispositions,
    )
