"""The Campaign Dial Status export request, validated before anything is sent.

CloudAgent answers a malformed request with a terse error body (or silently filters nothing), so every
parameter of the contract (``docs/cloudagent-contract.md``) is checked here, on construction, with an
error that names the parameter (as the API spells it) and the values it accepts. The apiKey is not part
of the request: it comes from :class:`~cloudagent_etl.settings.ApiSettings` and is added by the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cloudagent_etl.errors import ValidationError
from cloudagent_etl.settings import zone

SORTBY_VALUES = ("0", "1", "2")
"""``"0"`` all data, ``"1"`` by created date, ``"2"`` by updated date."""
STATUS_VALUES = ("All", "Fail", "Success", "Pending")
DIALSTATUS_VALUES = ("ALL", "Fail", "NoAnswer", "user_disconnected", "answered")
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def _one_of(parameter: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValidationError(
            parameter, f"must be one of {', '.join(repr(v) for v in allowed)}; got {value!r}"
        )


def _non_empty_text(parameter: str, value: object, allowed: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(parameter, f"must be {allowed}; got {value!r}")


def _aware_datetime(parameter: str, value: object) -> None:
    if not isinstance(value, datetime):
        raise ValidationError(parameter, f"must be a timezone-aware datetime; got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            parameter, f"must be a timezone-aware datetime; got the naive {value.isoformat()} (zone unknown)"
        )


def _callback_url(value: object) -> None:
    # The URL carries a per-request secret token, so it is never quoted in the message.
    allowed = "an absolute http:// or https:// URL with a host"
    if not isinstance(value, str):
        raise ValidationError("callBackUrl", f"must be {allowed}; got {type(value).__name__}")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValidationError(
            "callBackUrl", f"must be {allowed}; the value does not parse as a URL"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("callBackUrl", f"must be {allowed}; got scheme {parts.scheme!r}")


@dataclass(frozen=True)
class ExportFilters:
    """Which records of the window an export includes, as the API names its parameters.

    The defaults here are the one definition of "everything, by updated date": the DAG's params, the
    pipeline and the API request all take them from this class. Invalid values are refused on
    construction, naming the parameter and the values it accepts.
    """

    sortby: str = "2"
    status: str = "All"
    dialstatus: str = "ALL"
    dispositions: str = "ALL"

    def __post_init__(self) -> None:
        _one_of("sortby", self.sortby, SORTBY_VALUES)
        _one_of("status", self.status, STATUS_VALUES)
        _one_of("dialstatus", self.dialstatus, DIALSTATUS_VALUES)
        _non_empty_text(
            "dispositions", self.dispositions, "'ALL' or a disposition configured on the campaign"
        )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ExportFilters:
        """The filters of run params (or a stored request's): a missing or empty one takes its default."""
        given = {name: params.get(name) for name in cls.__dataclass_fields__}
        return cls(**{name: str(value) for name, value in given.items() if value not in (None, "")})

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class DialStatusRequest:
    """One Campaign Dial Status export: one campaign, one window, filters.

    ``from_date``/``to_date`` are timezone-aware; :meth:`to_body` renders them in the account's zone.
    ``callback_url`` is left out of the repr because it carries the request's secret token.
    """

    campaign_name: str
    user_name: str
    from_date: datetime
    to_date: datetime
    callback_url: str = field(repr=False)
    filters: ExportFilters = field(default_factory=ExportFilters)

    def __post_init__(self) -> None:
        _non_empty_text("campaignName", self.campaign_name, "a non-empty campaign name")
        _non_empty_text("userName", self.user_name, "a non-empty CloudAgent user name")
        _aware_datetime("fromDate", self.from_date)
        _aware_datetime("toDate", self.to_date)
        if self.from_date > self.to_date:
            raise ValidationError(
                "fromDate",
                f"must not be after toDate; got fromDate={self.from_date.isoformat()} "
                f"toDate={self.to_date.isoformat()}",
            )
        _callback_url(self.callback_url)
        if not isinstance(self.filters, ExportFilters):
            raise ValidationError("filters", f"must be ExportFilters; got {type(self.filters).__name__}")

    def to_body(self, timezone: str) -> dict[str, str]:
        """The JSON body fields (all but apiKey), with the window as wall-clock times in ``timezone``."""
        tz = zone(timezone)
        return {
            "fromDate": self.from_date.astimezone(tz).strftime(DATE_FORMAT),
            "toDate": self.to_date.astimezone(tz).strftime(DATE_FORMAT),
            **self.filters.as_dict(),
            "campaignName": self.campaign_name,
            "userName": self.user_name,
            "callBackUrl": self.callback_url,
        }
