"""Checks that fail a run in seconds, naming the setting to fix, before any export is requested.

Run by the DAG's ``preflight`` task (settings from Airflow connections and the Variable) and by
``cloudagent-etl doctor`` (settings from the environment); each check says which setting it read, so the
message names what to change. Without them a wrong callback URL shows only after the callback timeout
(60 minutes by default), and an unmigrated database or a half-filled connection fails deep in a task.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, text

from cloudagent_etl import identity
from cloudagent_etl.accounts import parse_accounts, parse_campaigns, shared_campaigns
from cloudagent_etl.api.client import RetryPolicy
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
    #: CloudAgent refused the account or campaign (recorded in ``sync_targets``): a run leaves it out and
    #: syncs the rest; ``doctor`` reports it as a problem.
    rejected: bool = False

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
    from cloudagent_etl.db import create_db_engine, database_missing
    from cloudagent_etl.personal_data.phones import PSEUDONYM_KEY_SETTING

    env = os.environ if env is None else env
    checks, accounts = _account_checks_from_env(env)
    checks.append(check_pseudonym_key(env.get(PSEUDONYM_KEY_SETTING), setting=PSEUDONYM_KEY_SETTING))
    if "CLOUDAGENT_CAMPAIGNS" in env and ACCOUNTS_ENV not in env:
        checks.append(check_campaigns(env["CLOUDAGENT_CAMPAIGNS"], setting="CLOUDAGENT_CAMPAIGNS"))
    callback_url = env.get("CLOUDAGENT_CALLBACK_BASE_URL")
    public = check_callback_public(callback_url, [account.api.base_url for account in accounts])
    if public is not None:
        checks.append(public)
    url = database_url or settings.database_url(env)
    db_setting = "database (--database-url)" if database_url else "database (CLOUDAGENT_DB_URL)"
    if missing := database_missing(url):
        checks.append(Check(db_setting, missing))
        return checks
    engine = create_db_engine(url)
    try:
        checks.append(check_database(engine, setting=db_setting))
        if not checks[-1].ok:
            return checks
        checks.append(check_callback_url(engine, callback_url))
        if not account_check_enabled(env):
            checks.append(
                Check(ACCOUNT_CHECK_SETTING, found="off: CloudAgent is not asked about the accounts")
            )
        elif accounts:
            found, _news = check_accounts_with_cloudagent(
                engine, accounts, campaigns_setting=_campaigns_setting(env)
            )
            checks += found
    finally:
        engine.dispose()
    return checks


def _campaigns_setting(env: Mapping[str, str]) -> str:
    return ACCOUNTS_ENV if ACCOUNTS_ENV in env else "CLOUDAGENT_CAMPAIGNS"


#: The environment form of the Variable ``cloudagent_accounts``.
ACCOUNTS_ENV = "AIRFLOW_VAR_CLOUDAGENT_ACCOUNTS"


def _account_checks_from_env(env: Mapping[str, str]) -> tuple[list[Check], list[AccountToCheck]]:
    """The checks of the accounts' settings, and the accounts that passed them with their campaigns (what
    the account check asks CloudAgent about)."""
    from cloudagent_etl import settings

    if ACCOUNTS_ENV not in env:
        check = check_api_connection(
            *settings.api_connection_from_env(env),
            setting="CloudAgent account (CLOUDAGENT_API_*)",
            parts=settings.API_ENV_VARIABLES,
        )
        accounts = []
        campaigns = _campaigns_from_env(env)
        if check.ok:
            api = ApiSettings.from_env(env)
            accounts.append(AccountToCheck(settings.DEFAULT_CONNECTION, api, campaigns, "CLOUDAGENT_API_*"))
        return [check], accounts
    try:
        configured = parse_accounts(env[ACCOUNTS_ENV], setting=ACCOUNTS_ENV)
    except ConfigurationError as exc:
        return [Check(ACCOUNTS_ENV, str(exc))], []
    checks = [Check(ACCOUNTS_ENV, found="; ".join(f"{c}: {', '.join(n)}" for c, n in configured.items()))]
    user_names = {}
    ready = []
    for conn_id, campaigns in configured.items():
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
            api = ApiSettings.from_connection(host, login, password, extra)
            ready.append(AccountToCheck(conn_id, api, campaigns, f"connection {conn_id} ({variable})"))
    checks += [Check(ACCOUNTS_ENV, problem) for problem in shared_campaigns(user_names, configured)]
    return checks, ready


def _campaigns_from_env(env: Mapping[str, str]) -> list[str]:
    """The one account's campaigns: ``CLOUDAGENT_CAMPAIGNS`` or the Variable's environment form."""
    for name in ("CLOUDAGENT_CAMPAIGNS", "AIRFLOW_VAR_CLOUDAGENT_CAMPAIGNS"):
        if env.get(name, "").strip():
            try:
                return parse_campaigns(env[name])
            except ConfigurationError:
                return []  # check_campaigns says what is wrong
    return []


# ------------------------------------------------------------------------------------- the account check
#: ``off`` turns the account check off (doctor and every run's preflight).
ACCOUNT_CHECK_SETTING = "CLOUDAGENT_ACCOUNT_CHECK"
_OFF, _ON = ("off", "0", "false", "no"), ("on", "1", "true", "yes", "")


def account_check_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether to ask CloudAgent about accounts and campaigns (``CLOUDAGENT_ACCOUNT_CHECK``, default on)."""
    value = (os.environ if env is None else env).get(ACCOUNT_CHECK_SETTING, "on").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    raise ConfigurationError(f"{ACCOUNT_CHECK_SETTING} must be on or off, not {value!r}")


#: The account check gives up sooner than an export (a preflight says what is wrong in seconds): three
#: attempts within 30 s, a rate-limited answer still waited for.
CHECK_RETRY = RetryPolicy(max_attempts=3, max_total_s=30.0)


@dataclass(frozen=True)
class AccountToCheck:
    """One account as configured: its connection (or environment variables), settings and campaigns."""

    conn_id: str
    api: ApiSettings
    campaigns: Sequence[str]
    #: How messages name where the account is set (e.g. "connection cloudagent_acme").
    setting: str


def check_accounts_with_cloudagent(
    engine: Engine,
    accounts: Sequence[AccountToCheck],
    *,
    campaigns_setting: str,
    day: date | None = None,
    transport: httpx.BaseTransport | None = None,
) -> tuple[list[Check], list[str]]:
    """Ask CloudAgent whether it accepts each account's apiKey, userName and campaigns, spending no export
    (:meth:`CloudAgentClient.check_account`), and record the answers in ``sync_targets``.

    A campaign is asked about when it is new, when it last failed and when its account's settings changed
    (the fingerprint); a campaign CloudAgent accepted with the same settings is not asked again, so a run
    with nothing new makes no call. An account whose apiKey is refused is asked once: its other campaigns
    would fail the same way. Every configured campaign is recorded as seen on ``day`` (the day coverage
    starts for a new one). Returns the checks and the rejections that are news (to alert on, once).
    """
    from cloudagent_etl import targets
    from cloudagent_etl.accounts import SyncTarget
    from cloudagent_etl.api import CloudAgentClient, RateLimiter
    from cloudagent_etl.errors import ApiError, CloudAgentError

    day = day or targets.current_window_day()
    secret = identity.probe_secret(engine)
    targets.record_seen(
        engine, [SyncTarget(a.conn_id, campaign) for a in accounts for campaign in a.campaigns], day
    )
    records = targets.load_records(engine)
    checks: list[Check] = []
    news: list[str] = []
    for account in accounts:
        name = f"CloudAgent accepts {account.setting}"
        if not account.campaigns:
            checks.append(Check(name, found="no campaign configured: nothing to ask CloudAgent about"))
            continue
        due = []
        for campaign in account.campaigns:
            record = records.get(SyncTarget(account.conn_id, campaign))
            digest = targets.fingerprint(secret, account.api, campaign)
            if (
                record is None
                or record.check_result is not targets.CheckResult.OK
                or record.fingerprint != digest
            ):
                due.append((campaign, digest))
        if not due:
            checks.append(
                Check(name, found=f"{', '.join(account.campaigns)} accepted before, settings unchanged")
            )
            continue
        limiter = RateLimiter(engine, account.api.user_name, account.api.rate_limit_per_minute)
        accepted: list[str] = []
        with CloudAgentClient(account.api, limiter=limiter, transport=transport, retry=CHECK_RETRY) as client:
            for campaign, digest in due:
                target = SyncTarget(account.conn_id, campaign)
                try:
                    client.check_account(campaign)
                except ApiError as exc:
                    result = targets.result_of(exc)
                    named = exc.naming(account.conn_id, campaign, campaigns_setting)
                    if result is None:
                        checks.append(Check(name, f"campaign {campaign!r}: {named}"))
                        continue
                    line = f"{targets.rejection_text(target, result, campaigns_setting)} ({named})"
                    if targets.record_check(
                        engine, target, result, message=line, fingerprint=digest, day=day
                    ):
                        news.append(line)
                    checks.append(Check(name, line, rejected=True))
                    if result is targets.CheckResult.APIKEY_REJECTED:
                        break
                except CloudAgentError as exc:
                    checks.append(Check(name, f"CloudAgent could not be asked about {campaign!r}: {exc}"))
                    break
                else:
                    targets.record_check(
                        engine, target, targets.CheckResult.OK, message=None, fingerprint=digest
                    )
                    accepted.append(campaign)
        if accepted:
            checks.append(
                Check(name, found=f"apiKey, userName and {', '.join(accepted)} accepted (no export made)")
            )
    return checks, news


# ------------------------------------------------------------------------ a callback URL CloudAgent can reach
def is_real_cloudagent(base_url: str) -> bool:
    """Whether an API base URL is Ozonetel's (not a simulator): then callbacks come from the internet."""
    host = (urlsplit(base_url).hostname or "").lower()
    return host == "ozonetel.com" or host.endswith(".ozonetel.com")


def unreachable_callback_reason(callback_base_url: str) -> str | None:
    """Why CloudAgent, on the internet, can never reach ``callback_base_url`` (a loopback, private or
    link-local address, or a name that only means this machine), or None."""
    host = (urlsplit(callback_base_url).hostname or "").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return f"{host} is this machine"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_loopback:
        return f"{host} is a loopback address"
    if address.is_private or address.is_link_local or address.is_unspecified:
        return f"{host} is a private address"
    return None


def check_callback_public(
    callback_base_url: str | None,
    api_base_urls: Sequence[str],
    *,
    setting: str = "CLOUDAGENT_CALLBACK_BASE_URL",
) -> Check | None:
    """With a real CloudAgent, the callback URL must be one the internet can reach; None when there is
    nothing to say (no real CloudAgent, or no URL: the callback check says that)."""
    real = [url for url in api_base_urls if is_real_cloudagent(url)]
    if not real or not callback_base_url:
        return None
    reason = unreachable_callback_reason(callback_base_url)
    name = f"{setting} reachable by CloudAgent"
    if reason is None:
        return Check(name, found=f"{callback_base_url} is not a loopback or private address")
    return Check(
        name,
        f"{callback_base_url}: {reason}, which CloudAgent ({real[0]}) can never reach; set it to the public "
        "URL of the receiver (behind a proxy with TLS)",
    )
