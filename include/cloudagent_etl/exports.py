"""An export: one campaign's dial-status data for one window, as the pipeline asks CloudAgent for it.

:class:`Export` is passed whole from the DAG to the API call and stored on the export request, so a load or
a re-request needs nothing else: whose account it is, which campaign and window, the filters, the account's
time zone (the window and the records' times are wall clock in it) and the callback base URL given.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cloudagent_etl.api.request import DialStatusRequest, ExportFilters
from cloudagent_etl.errors import ConfigurationError
from cloudagent_etl.settings import DEFAULT_TIMEZONE, ApiSettings


@dataclass(frozen=True)
class Export:
    """What one export asks for (see the module docstring); its :attr:`key` says when two are the same."""

    account: str
    campaign_name: str
    window_start: datetime
    window_end: datetime
    filters: ExportFilters = field(default_factory=ExportFilters)
    timezone: str = DEFAULT_TIMEZONE
    #: The base of the callBackUrl given to CloudAgent (never the per-request token).
    callback_base_url: str | None = None
    #: The Airflow connection of the account (how messages name it; not part of what makes it the same).
    conn_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("window_start", "window_end"):
            moment: datetime = getattr(self, name)
            if moment.tzinfo is None or moment.utcoffset() is None:
                raise ConfigurationError(f"{name} must be timezone-aware, got {moment.isoformat()}")

    @classmethod
    def of(
        cls,
        api: ApiSettings,
        campaign_name: str,
        window: tuple[datetime, datetime],
        filters: ExportFilters,
        callback_base_url: str,
        conn_id: str | None = None,
    ) -> Export:
        """The export of ``campaign_name`` and ``window`` from the account ``api`` (of ``conn_id``)."""
        return cls(api.user_name, campaign_name, *window, filters, api.timezone, callback_base_url, conn_id)

    @property
    def key(self) -> str:
        """What makes two exports the same: account, campaign, window (as UTC instants) and filters."""
        identity = {
            "account": self.account,
            "campaign_name": self.campaign_name,
            "window": [moment.astimezone(UTC).isoformat() for moment in (self.window_start, self.window_end)],
            "filters": dict(sorted(self.filters.as_dict().items())),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def api_request(self, callback_url: str) -> DialStatusRequest:
        """The API request of this export, answered to ``callback_url`` (which carries a secret token)."""
        return DialStatusRequest(
            campaign_name=self.campaign_name,
            user_name=self.account,
            from_date=self.window_start,
            to_date=self.window_end,
            callback_url=callback_url,
            filters=self.filters,
        )

    def describe(self) -> str:
        """'campaign X, window A .. B': how messages name an export."""
        return (
            f"campaign {self.campaign_name!r}, window {self.window_start.isoformat()} .. "
            f"{self.window_end.isoformat()}"
        )
