"""The accounts a deployment syncs, read from Airflow when a task runs (never when a DAG file is parsed).

The Variable ``cloudagent_accounts`` (connection id -> campaigns), else the connection ``cloudagent_default``
with the Variable ``cloudagent_campaigns``: see :mod:`cloudagent_etl.accounts`. A run's ``accounts`` and
``campaigns`` params narrow it.
"""

from __future__ import annotations

from datetime import date

from airflow.sdk import Variable

from cloudagent_etl.accounts import (
    ACCOUNTS_VARIABLE,
    CAMPAIGNS_VARIABLE,
    accounts_of_run,
    parse_accounts,
    parse_campaigns,
)
from cloudagent_etl.errors import ConfigurationError
from cloudagent_etl.settings import DEFAULT_CONNECTION


def configured_accounts() -> dict[str, list[str]]:
    """Connection id -> campaigns as configured (a connection without campaigns: none configured yet)."""
    accounts, _setting = _configuration()
    return accounts


def _configuration() -> tuple[dict[str, list[str]], str]:
    """The configured accounts and the setting they came from (for messages)."""
    value = Variable.get(ACCOUNTS_VARIABLE, default=None)
    if value is not None:
        return parse_accounts(value), f"Variable {ACCOUNTS_VARIABLE}"
    setting = f"Variable {CAMPAIGNS_VARIABLE}"
    campaigns = Variable.get(CAMPAIGNS_VARIABLE, default=None)
    try:
        return {DEFAULT_CONNECTION: [] if campaigns is None else parse_campaigns(campaigns)}, setting
    except ConfigurationError as exc:
        raise ConfigurationError(f"{setting}: {exc}") from None


def sync_start() -> date | None:
    """The Variable ``cloudagent_sync_start``: the first IST day coverage counts for every campaign (None:
    each campaign's first configured or requested day)."""
    from cloudagent_etl.targets import SYNC_START_VARIABLE, parse_sync_start

    return parse_sync_start(
        Variable.get(SYNC_START_VARIABLE, default=None), setting=f"Variable {SYNC_START_VARIABLE}"
    )


def run_accounts(params: dict) -> dict[str, list[str]]:
    """What a run syncs: its ``accounts`` param, else the configuration (its ``campaigns`` param as the
    campaign list of a one-account deployment). Raises ``ConfigurationError`` naming the setting."""
    if params.get("accounts"):
        return accounts_of_run(params["accounts"], None, {})
    try:
        configured, setting = _configuration()
    except ConfigurationError:
        if not params.get("campaigns"):
            raise
        configured, setting = {DEFAULT_CONNECTION: []}, "the run's campaigns param"
    accounts = accounts_of_run(None, params.get("campaigns"), configured)
    empty = [conn_id for conn_id, campaigns in accounts.items() if not campaigns]
    if empty:
        raise ConfigurationError(
            f"{setting}: no campaigns to sync for connection {', '.join(empty)}: set {setting} (a JSON list) "
            "or the run's campaigns param"
        )
    return accounts
