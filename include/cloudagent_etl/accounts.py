"""Which CloudAgent accounts a run syncs, and which campaigns of each.

An account is one Airflow connection of type ``cloudagent`` (its host, ``userName``, apiKey and time zone).
The Airflow Variable ``cloudagent_accounts`` maps connection ids to campaign lists::

    {"cloudagent_acme": ["Sales", "Renewals"], "cloudagent_globex": ["Sales"]}

Without it, a deployment syncs one account as it always has: the connection ``cloudagent_default`` with
the campaigns of the Variable ``cloudagent_campaigns``. A run's ``accounts`` param (the same shape) replaces
the configuration for that run; its ``campaigns`` param replaces the campaign list of a deployment with
one account (with several, a run names its accounts). Two connections of one account (the same
``userName``) may not list the same campaign: their rows would be one, written twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cloudagent_etl.errors import ConfigurationError
from cloudagent_etl.settings import DEFAULT_CONNECTION

#: The Variables that configure accounts.
ACCOUNTS_VARIABLE = "cloudagent_accounts"
CAMPAIGNS_VARIABLE = "cloudagent_campaigns"
#: Where a run's campaign list comes from, for messages that ask to correct a campaign name.
CAMPAIGNS_SETTINGS = (
    f"the Variable {ACCOUNTS_VARIABLE} (or {CAMPAIGNS_VARIABLE}), or the run's accounts param"
)


def parse_campaigns(value: object) -> list[str]:
    """The campaign names in ``value``: a list, a JSON list or a comma-separated string.

    Names are stripped and de-duplicated (first occurrence wins, order kept); an empty result is an
    error because a run that syncs nothing would look like a successful night.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigurationError(f"campaigns is not a valid JSON list: {exc}") from None
        else:
            value = text.split(",")
    if not isinstance(value, list | tuple):
        raise ConfigurationError(f"campaigns must be a list of campaign names, not {type(value).__name__}")
    names: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ConfigurationError(f"campaign names must be text, not {item!r}")
        name = item.strip()
        if name and name not in names:
            names.append(name)
    if not names:
        raise ConfigurationError(
            "no campaigns to sync: set the Airflow Variable cloudagent_campaigns (a JSON list) "
            "or the run's `campaigns` param"
        )
    return names


@dataclass(frozen=True)
class SyncTarget:
    """One campaign of one account: what one mapped instance of a run syncs."""

    conn_id: str
    campaign: str

    @property
    def label(self) -> str:
        """How the UI names the instance: the campaign, prefixed with the connection unless the default."""
        return self.campaign if self.conn_id == DEFAULT_CONNECTION else f"{self.conn_id}/{self.campaign}"

    def describe(self) -> str:
        """'campaign 'Sales' of connection cloudagent_acme': how messages name it."""
        return f"campaign {self.campaign!r} of connection {self.conn_id}"


def parse_accounts(value: object, *, setting: str = f"Variable {ACCOUNTS_VARIABLE}") -> dict[str, list[str]]:
    """Connection id -> campaigns, from a JSON object (or its text); ``setting`` names it in errors."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{setting} is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping) or not value:
        raise ConfigurationError(
            f"{setting} must be a JSON object mapping connection ids to campaign lists, "
            f'e.g. {{"cloudagent_default": ["Sales"]}}; got {type(value).__name__}'
        )
    accounts: dict[str, list[str]] = {}
    for conn_id, campaigns in value.items():
        if not isinstance(conn_id, str) or not conn_id.strip():
            raise ConfigurationError(f"{setting}: a connection id must be non-empty text, not {conn_id!r}")
        try:
            accounts[conn_id.strip()] = parse_campaigns(campaigns)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{setting}, connection {conn_id!r}: {exc}") from None
    return accounts


def accounts_of_run(
    accounts_param: object, campaigns_param: object, configured: Mapping[str, list[str]]
) -> dict[str, list[str]]:
    """The accounts and campaigns a run syncs: its ``accounts`` param, else the configuration with its
    ``campaigns`` param as the campaign list of a one-account deployment."""
    if accounts_param:
        return parse_accounts(accounts_param, setting="the run's accounts param")
    if not campaigns_param:
        return dict(configured)
    if len(configured) != 1:
        raise ConfigurationError(
            f"the run's campaigns param cannot say which of {len(configured)} accounts it means "
            f"({', '.join(configured)}): give the accounts param instead, e.g. "
            f'{{"{next(iter(configured))}": ["Sales"]}}'
        )
    (conn_id,) = configured
    return {conn_id: parse_campaigns(campaigns_param)}


def sync_targets(accounts: Mapping[str, list[str]]) -> list[SyncTarget]:
    """Every campaign of every account, the accounts taking turns (first campaigns of each first), so that
    with one pool slot per account each account's campaigns run side by side with the others'."""
    queues = [
        [SyncTarget(conn_id, campaign) for campaign in campaigns] for conn_id, campaigns in accounts.items()
    ]
    return [target for turn in _turns(queues) for target in turn]


def _turns(queues: list[list[SyncTarget]]) -> Iterable[list[SyncTarget]]:
    for index in range(max((len(queue) for queue in queues), default=0)):
        yield [queue[index] for queue in queues if index < len(queue)]


def shared_campaigns(user_names: Mapping[str, str], accounts: Mapping[str, list[str]]) -> list[str]:
    """Campaigns listed under two connections of one account (``user_names``: connection id -> userName)."""
    seen: dict[tuple[str, str], str] = {}
    problems = []
    for conn_id, campaigns in accounts.items():
        user = user_names.get(conn_id)
        if user is None:
            continue
        for campaign in campaigns:
            other = seen.setdefault((user, campaign), conn_id)
            if other != conn_id:
                problems.append(
                    f"campaign {campaign!r} is listed under connections {other} and {conn_id}, which are "
                    f"both the account {user!r}: list it under one"
                )
    return problems
