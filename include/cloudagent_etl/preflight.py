"""Checks that fail a run in seconds, naming the setting to fix, before any export is requested.

Run by the DAG's ``preflight`` task (settings from Airflow connections and the Variable) and by
``cloudagent-etl doctor`` (settings from the environment); each check says which setting it read, so the
message names what to change. Without them a wrong callback URL shows only after the callback timeout
(60 minutes by default), and an unmigrated database or a half-filled connection fails deep in a task.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Engine, text

from cloudagent_etl import identity
from cloudagent_etl.accounts import parse_accounts, parse_campaigns, shared_campaigns
from cloudagent_etl.databases import database_for
from cloudagent_etl.errors import ConfigurationError, redact
from cloudagent_etl.settings import ALLOWED_CONNECTION_EXTRAS, ApiSettings

#: How long the callback URL may take to answer the probe.
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    """One check: what was checked (``name``, naming the setting), and the problem found or None."""

    name: str
    problem: str | None = None
    found: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.found if self.ok else self.problem}"


class PreflightFailed(ConfigurationError):
    """At least one check failed; the message lists every failed check."""

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = list(checks)
        failed = [check for check in checks if not check.ok]
        super().__init__("preflight failed:\n" + "\n".join(f"- {c.name}: {c.problem}" for c in failed))


def raise_for_problems(checks: Sequence[Check]) -> None:
    if any(not check.ok for check in checks):
        raise PreflightFailed(checks)


def check_api_connection(
    host: str | None,
    login: str | None,
    password: str | None,
    extra: Mapping[str, Any] | None,
    *,
    setting: str,
    parts: Mapping[str, str],
) -> Check:
    """The CloudAgent account is complete and its extras are known and valid.

    ``parts`` names where each of host, login and password is set (a connection field or an environment
    variable), for the message.
    """
    missing = [parts[name] for name, value in (("host", host), ("login", login), ("password", password))
               if not (value or "").strip()]  # fmt: skip
    if missing:
        return Check(setting, f"{', '.join(missing)} not set")
    unknown = sorted(set(extra or {}) - ALLOWED_CONNECTION_EXTRAS)
    if unknown:
        allowed = ", ".join(sorted(ALLOWED_CONNECTION_EXTRAS))
        return Check(setting, f"unknown extra {', '.join(unknown)} (the extras read are: {allowed})")
    try:
        api = ApiSettings.from_connection(host, login, password, extra)
    except ConfigurationError as exc:
        return Check(setting, str(exc))
    return Check(setting, found=f"{api.base_url} as {api.user_name}, time zone {api.timezone}")


def check_database(engine: Engine, *, setting: str) -> Check:
    """The project database answers and is migrated to the head revision of this code."""
    from alembic.runtime.migration import MigrationContext

    from cloudagent_etl.db import head_revision

    head = head_revision()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:  # any driver error: the URL, the server, the credentials
        reason = redact(_first_line(exc), [engine.url.password])
        return Check(setting, f"the database does not answer ({type(exc).__name__}: {reason})")
    if current != head:
        state = "not migrated" if current is None else f"at revision {current}"
        return Check(
            setting, f"the database is {state}, this code needs {head}: run `cloudagent-etl migrate`"
        )
    return Check(setting, found=f"{database_for(engine).name}, revision {head}")


def check_callback_url(
    engine: Engine,
    callback_base_url: str | None,
    *,
    setting: str = "CLOUDAGENT_CALLBACK_BASE_URL",
    transport: httpx.BaseTransport | None = None,
) -> Check:
    """The callback URL reaches our receiver, writing to this database (see :mod:`identity`).

    Reached from here, which is necessary, not sufficient: CloudAgent calls from the internet.
    """
    url = (callback_base_url or "").rstrip("/")
    if not url.startswith(("http://", "https://")):
        return Check(setting, f"must be the receiver's public http(s) URL, got {url or 'nothing'!r}")
    nonce = identity.new_nonce()
    try:
        with httpx.Client(timeout=PROBE_TIMEOUT_S, transport=transport, follow_redirects=False) as client:
            response = client.get(f"{url}/healthz", params={identity.PROBE_PARAMETER: nonce})
    except httpx.HTTPError as exc:
        return Check(
            setting,
            f"{url} cannot be reached ({type(exc).__name__}: {_first_line(exc)}); set it to the URL under "
            "which the receiver is reachable (CloudAgent must reach it from the internet)",
        )
    body = _json_object(response)
    if response.status_code == 503 and body.get("status") == "unavailable":
        return Check(
            setting, f"{url} reaches a receiver that cannot store callbacks now: {body.get('reason')}"
        )
    if response.status_code != 200 or identity.PROBE_PARAMETER not in body:
        return Check(
            setting,
            f"{url} answers (HTTP {response.status_code}) but not as a cloudagent-etl receiver: check the "
            "URL and that the proxy forwards /healthz and /callbacks/ to the receiver",
        )
    expected = identity.probe_answer(identity.probe_secret(engine), nonce)
    if not identity.answers_match(expected, body[identity.PROBE_PARAMETER]):
        return Check(
            setting,
            f"{url} reaches a cloudagent-etl receiver that writes to another database: its callbacks would "
            "never be seen by this pipeline (point the URL at the receiver of this database, or that "
            "receiver's CLOUDAGENT_DB_URL at this database)",
        )
    return Check(setting, found=f"{url} reaches the receiver of this database")


def check_pseudonym_key(value: str | None, *, setting: str) -> Check:
    """The pseudonym key is there and long enough: without it no record may be stored (never shown)."""
    from cloudagent_etl.personal_data.phones import PseudonymKey

    if not (value or "").strip():
        return Check(
            setting,
            "not set: every record is stored with its phone number's pseudonym, keyed by this secret "
            "(generate one with `openssl rand -hex 32` and keep it outside the warehouse)",
        )
    try:
        PseudonymKey(value or "")
    except ConfigurationError as exc:
        return Check(setting, str(exc))
    return Check(setting, found="set (not shown)")


def check_campaigns(value: object, *, setting: str) -> Check:
    try:
        names = parse_campaigns(value)
    except ConfigurationError as exc:
        return Check(setting, str(exc))
    return Check(setting, found=", ".join(names))


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def checks_from_env(env: Mapping[str, str] | None = None, *, database_url: str | None = None) -> list[Check]:
    """``cloudagent-etl doctor``: the checks on the environment's settings (what the CLI, the receiver and
    a local stack read), in the DAG preflight's order.

    The accounts: with ``AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS``, each connection it lists, as
    ``AIRFLOW_CONN_<ID>`` gives it (what Airflow processes with this environment read); else the one
    account of ``CLOUDAGENT_API_*``.
    """
    from cloudagent_etl import settings
    from cloudagent_etl.db import create_db_engine
    from cloudagent_etl.personal_data.phones import PSEUDONYM_KEY_SETTING

    env = os.environ if env is None else env
    checks = _account_checks_from_env(env)
    checks.append(check_pseudonym_key(env.get(PSEUDONYM_KEY_SETTING), setting=PSEUDONYM_KEY_SETTING))
    engine = create_db_engine(database_url or settings.database_url(env))
    try:
        checks.append(check_database(engine, setting="database (CLOUDAGENT_DB_URL)"))
        if checks[-1].ok:
            checks.append(check_callback_url(engine, env.get("CLOUDAGENT_CALLBACK_BASE_URL")))
    finally:
        engine.dispose()
    if "CLOUDAGENT_CAMPAIGNS" in env and ACCOUNTS_ENV not in env:
        checks.append(check_campaigns(env["CLOUDAGENT_CAMPAIGNS"], setting="CLOUDAGENT_CAMPAIGNS"))
    return checks


#: The environment form of the Variable ``cloudagent_accounts``.
ACCOUNTS_ENV = "AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS"


def _account_checks_from_env(env: Mapping[str, str]) -> list[Check]:
    from cloudagent_etl import settings

    if ACCOUNTS_ENV not in env:
        return [
            check_api_connection(
                *settings.api_connection_from_env(env),
                setting="CloudAgent account (CLOUDAGENT_API_*)",
                parts=settings.API_ENV_VARIABLES,
            )
        ]
    try:
        accounts = parse_accounts(env[ACCOUNTS_ENV], setting=ACCOUNTS_ENV)
    except ConfigurationError as exc:
        return [Check(ACCOUNTS_ENV, str(exc))]
    checks = [Check(ACCOUNTS_ENV, found="; ".join(f"{c}: {', '.join(n)}" for c, n in accounts.items()))]
    user_names = {}
    for conn_id in accounts:
        variable = f"AIRFLOW_CONN_{conn_id.upper()}"
        try:
            found = settings.airflow_connection_from_env(conn_id, env)
        except ConfigurationError as exc:
            checks.append(Check(variable, str(exc)))
            continue
        if found is None:
            checks.append(Check(variable, f"not set: connection {conn_id} is listed in {ACCOUNTS_ENV}"))
            continue
        conn_type, host, login, password, extra = found
        if conn_type != "cloudagent":
            checks.append(
                Check(variable, f"is of type {conn_type!r}: a CloudAgent account is of type 'cloudagent'")
            )
            continue
        parts = {
            "host": "its host",
            "login": "its login (the userName)",
            "password": "its password (the apiKey)",
        }
        checks.append(check_api_connection(host, login, password, extra, setting=variable, parts=parts))
        if checks[-1].ok and login:
            user_names[conn_id] = login
    checks += [Check(ACCOUNTS_ENV, problem) for problem in shared_campaigns(user_names, accounts)]
    return checks
