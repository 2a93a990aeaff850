"""The DAGs' preflight: the checks of :mod:`cloudagent_etl.preflight` on the settings Airflow holds.

The accounts to sync (the run's ``accounts`` / ``campaigns`` params, else the Variable
``cloudagent_accounts``, else ``cloudagent_default`` with the Variable ``cloudagent_campaigns``), each
account's connection (of type ``cloudagent``, complete), ``cloudagent_db`` (the project database) and
``CLOUDAGENT_CALLBACK_BASE_URL``, and the pseudonym key (``cloudagent_pseudonym``).
Each message names the connection, field, Variable or environment variable to fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from cloudagent_airflow.hooks import CloudAgentDbHook, CloudAgentHook, pseudonym_key_setting
from cloudagent_etl.accounts import ACCOUNTS_VARIABLE, CAMPAIGNS_SETTINGS
from cloudagent_etl.settings import ApiSettings

if TYPE_CHECKING:
    from datetime import date

    from sqlalchemy import Engine

    from cloudagent_etl.preflight import Check

log = logging.getLogger(__name__)


def preflight_or_fail(params: dict, *, callback: bool = True, day: date | None = None) -> None:
    """Run every check, log one line each, and fail the task (no retry) listing each failed one.

    ``day``: the IST day of the run's window (a new campaign's coverage starts there).
    """
    from cloudagent_airflow.errors import terminal_errors_fail_fast
    from cloudagent_etl.preflight import raise_for_problems

    checks = run_preflight(params, callback=callback, day=day)
    for check in checks:
        log.info("%s", check.line())
    with terminal_errors_fail_fast():
        raise_for_problems(checks)


def run_preflight(params: dict, *, callback: bool = True, day: date | None = None) -> list[Check]:
    """Every check, in order; ``callback=False`` skips the callback URL and the account check (a DAG that
    requests nothing)."""
    from cloudagent_airflow.accounts import run_accounts
    from cloudagent_etl import preflight
    from cloudagent_etl.accounts import shared_campaigns
    from cloudagent_etl.errors import ConfigurationError

    checks: list[Check] = []
    try:
        accounts = run_accounts(params)
    except ConfigurationError as exc:
        checks.append(preflight.Check("the accounts and campaigns to sync", str(exc)))
        accounts = {}
    else:
        listed = "; ".join(f"{conn_id}: {', '.join(names)}" for conn_id, names in accounts.items())
        checks.append(preflight.Check("the accounts and campaigns to sync", found=listed))
    user_names = {}
    to_check = []
    for conn_id, campaigns in accounts.items():
        check, api = _api_connection_check(conn_id)
        checks.append(check)
        if api is not None:
            user_names[conn_id] = api.user_name
            to_check.append(preflight.AccountToCheck(conn_id, api, campaigns, f"connection {conn_id}"))
    for problem in shared_campaigns(user_names, accounts):
        checks.append(preflight.Check(f"Variable {ACCOUNTS_VARIABLE}", problem))
    setting, key = pseudonym_key_setting()
    checks.append(preflight.check_pseudonym_key(key, setting=setting))
    base_url = os.environ.get("CLOUDAGENT_CALLBACK_BASE_URL")
    if callback and (public := preflight.check_callback_public(base_url, [a.api.base_url for a in to_check])):
        checks.append(public)
    db_setting = f"connection {CloudAgentDbHook.default_conn_name}"
    with _project_database(db_setting) as (engine, problem):
        if engine is None:
            checks.append(preflight.Check(db_setting, problem))
            return checks
        checks.append(preflight.check_database(engine, setting=db_setting))
        if not (callback and checks[-1].ok):
            return checks
        checks.append(preflight.check_callback_url(engine, base_url))
        if not preflight.account_check_enabled():
            log.info("%s=off: CloudAgent is not asked about the accounts", preflight.ACCOUNT_CHECK_SETTING)
        elif to_check and all(check.ok for check in checks):
            found, news = preflight.check_accounts_with_cloudagent(
                engine, to_check, campaigns_setting=CAMPAIGNS_SETTINGS, day=day
            )
            # A rejected account or campaign is left out of the run (exports_to_sync), not a reason to stop
            # the others: it is logged, shown on the page as rejected and alerted once.
            for check in found:
                if check.rejected:
                    log.warning("rejected, left out of this run: %s", check.problem)
            checks += [check for check in found if not check.rejected]
            _alert_rejections(news)
    return checks


def _alert_rejections(news: list[str]) -> None:
    """A rejection is alerted once, when first seen with this configuration (the grid shows it since)."""
    from airflow.sdk import get_current_context

    from cloudagent_airflow.alerts import send_alert
    from cloudagent_etl.alerts import rejection_alert

    alert = rejection_alert(news)
    if alert is not None:
        send_alert(alert, get_current_context())


def _api_connection_check(conn_id: str) -> tuple[Check, ApiSettings | None]:
    """The account's connection: defined, of type ``cloudagent``, complete; and its settings when it is."""
    from cloudagent_etl import preflight
    from cloudagent_etl.settings import DEFAULT_BASE_URL

    setting = f"connection {conn_id}"
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return preflight.Check(setting, f"not defined (add it, or set AIRFLOW_CONN_{conn_id.upper()})"), None
    if conn.conn_type != CloudAgentHook.conn_type:
        kind = f"of type {conn.conn_type!r}" if conn.conn_type else "without a type"
        return preflight.Check(setting, f"is {kind}: a CloudAgent account is a connection of type "
                               f"{CloudAgentHook.conn_type!r}"), None  # fmt: skip
    parts = {
        "host": f"its host (the CloudAgent base URL, e.g. {DEFAULT_BASE_URL})",
        "login": "its login (the CloudAgent userName)",
        "password": "its password (the apiKey)",
    }
    check = preflight.check_api_connection(
        conn.host, conn.login, conn.password, conn.extra_dejson, setting=setting, parts=parts
    )
    if not check.ok:
        return check, None
    return check, ApiSettings.from_connection(conn.host, conn.login, conn.password, conn.extra_dejson)


@contextmanager
def _project_database(setting: str) -> Iterator[tuple[Engine | None, str]]:
    """An engine on ``cloudagent_db``, or None and why there is none."""
    from cloudagent_etl.errors import ConfigurationError

    hook = CloudAgentDbHook()
    try:
        hook.get_uri()
    except AirflowNotFoundException:
        yield None, f"not defined (add it, or set AIRFLOW_CONN_{hook.cloudagent_db_conn_id.upper()})"
        return
    except ConfigurationError as exc:
        yield None, str(exc)
        return
    with hook.engine() as engine:
        yield engine, ""
