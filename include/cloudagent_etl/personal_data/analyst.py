"""The analyst views: dial status without a number or a name in clear, and the role allowed to read them.

``analyst_dial_status`` (current rows) and ``analyst_dial_status_history`` (every version) show the phone
number's pseudonym and its last four digits, the customer's initial, the lead id (NULL where the record key
is a hash of the number) and, of the custom upload fields in ``extra``, only those of the allow-list
``CLOUDAGENT_ANALYST_FIELDS``. On PostgreSQL the role ``cloudagent_analyst`` (no login: grant it to people)
may read these views and the aggregate views, and nothing else. ``cloudagent-etl analyst-fields`` makes
the views again with today's allow-list.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Final

from sqlalchemy import Connection

from cloudagent_etl.databases import database_for
from cloudagent_etl.errors import ConfigurationError
from cloudagent_etl.warehouse.tables import ANALYST_PASSED_THROUGH

ANALYST_FIELDS_SETTING: Final = "CLOUDAGENT_ANALYST_FIELDS"
ANALYST_ROLE: Final = "cloudagent_analyst"
#: The analyst views, and the view each one reads.
ANALYST_VIEWS: Final[Mapping[str, str]] = {
    "analyst_dial_status": "dial_status",
    "analyst_dial_status_history": "dial_status_history",
}
#: Views without personal data (counts per day, coverage) the analyst role may read as well.
AGGREGATE_VIEWS: Final = ("dial_status_daily_summary", "dial_status_daily_dispositions", "export_coverage")


def analyst_fields(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The custom fields analysts see: ``CLOUDAGENT_ANALYST_FIELDS``, a JSON list or comma-separated names
    (default none)."""
    value = (os.environ if env is None else env).get(ANALYST_FIELDS_SETTING, "").strip()
    if not value:
        return ()
    if value.startswith("["):
        try:
            names = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{ANALYST_FIELDS_SETTING} is not a JSON list: {exc}") from None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ConfigurationError(f"{ANALYST_FIELDS_SETTING} must be a JSON list of field names")
    else:
        names = value.split(",")
    fields = tuple(dict.fromkeys(name.strip() for name in names if name.strip()))
    return fields


def analyst_view_sql(conn: Connection, view: str, fields: tuple[str, ...]) -> str:
    """The ``SELECT`` of one analyst view over its source, passing ``fields`` of ``extra`` through."""
    source = ANALYST_VIEWS[view]
    custom = database_for(conn).json_fields_sql("extra", fields)
    passed_through = ", ".join(ANALYST_PASSED_THROUGH)
    return f"""
        SELECT account, campaign_name,
               CASE WHEN substr(record_key, 1, 7) = 'sha256:' THEN NULL ELSE record_key END AS lead_id,
               phone_pseudonym,
               CASE WHEN phone_e164 IS NULL THEN NULL
                    ELSE '*' || substr(phone_e164, length(phone_e164) - 3) END AS phone_last4,
               CASE WHEN customer_name IS NULL THEN NULL
                    ELSE substr(customer_name, 1, 1) || '***' END AS customer_name_masked,
               {passed_through},
               {custom} AS custom_fields,
               load_run_id, loaded_at
        FROM {source}
    """


def create_analyst_views(conn: Connection, fields: tuple[str, ...]) -> None:
    """(Re)make the analyst views with the allow-list ``fields``, then the analyst role's grants."""
    for view in ANALYST_VIEWS:
        database_for(conn).replace_view(conn, view, analyst_view_sql(conn, view, fields))
    grant_analyst_access(conn)


def grant_analyst_access(conn: Connection) -> None:
    """The analyst role reads the analyst and aggregate views only. Call it again after a migration makes
    one of these views again (a view made anew has no grants)."""
    database_for(conn).grant_analyst_access(conn, (*ANALYST_VIEWS, *AGGREGATE_VIEWS), ANALYST_ROLE)
