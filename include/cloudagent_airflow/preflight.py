"""The DAGs' preflight: the checks of :mod:`cloudagent_etl.preflight` on the settings Airflow holds.

The connections ``cloudagent_default`` (the CloudAgent account) and ``cloudagent_db`` (the project
database), ``CLOUDAGENT_CALLBACK_BASE_URL`` and the campaigns (the run's ``campaigns`` param, else the
Variable ``cloudagent_campaigns``). Each message names the connection field, Variable or environment
variable to fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from airflow.sdk import BaseHook, Variable
from airflow.sdk.exceptions import AirflowNotFoundException

from cloudagent_airflow.hooks import CloudAgentDbHook, CloudAgentHook

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from cloudagent_etl.preflight import Check

CAMPAIGNS_VARIABLE = "cloudagent_campaigns"

log = logging.getLogger(__name__)


def preflight_or_fail(campaigns_override: object, *, callback: bool = True) -> None:
    """Run every check, log one line each, and fail the task (no retry) listing each failed one."""
    from cloudagent_airflow.errors import terminal_errors_fail_fast
    from cloudagent_etl.preflight import raise_for_problems

    checks = run_preflight(campaigns_override, callback=callback)
    for check in checks:
        log.info("%s", check.line())
    with terminal_errors_fail_fast():
        raise_for_problems(checks)


def configured_campaigns(override: object) -> tuple[object, str]:
    """The campaigns a run syncs and where they were set: its ``campaigns`` param when it is not empty,
    else the Variable (an empty param means "the Variable's list")."""
    if override:
        return override, "the run's campaigns param"
    return Variable.get(CAMPAIGNS_VARIABLE, default=None), f"Variable {CAMPAIGNS_VARIABLE}"


def run_preflight(campaigns_override: object, *, callback: bool = True) -> list[Check]:
    """Every check, in order; ``callback=False`` skips the callback URL (a DAG that requests nothing)."""
    from cloudagent_etl import preflight

    checks = [_api_connection_check(CloudAgentHook.default_conn_name)]
    db_setting = f"connection {CloudAgentDbHook.default_conn_name}"
    with _project_database(db_setting) as (engine, problem):
        if engine is None:
            checks.append(preflight.Check(db_setting, problem))
        else:
            checks.append(preflight.check_database(engine, setting=db_setting))
            if callback and checks[-1].ok:
                base_url = os.environ.get("CLOUDAGENT_CALLBACK_BASE_URL")
                checks.append(preflight.check_callback_url(engine, base_url))
    value, setting = configured_campaigns(campaigns_override)
    checks.append(preflight.check_campaigns(value, setting=setting))
    return checks


def _api_connection_check(conn_id: str) -> Check:
    from cloudagent_etl import preflight
    from cloudagent_etl.settings import DEFAULT_BASE_URL

    setting = f"connection {conn_id}"
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return preflight.Check(setting, f"not defined (add it, or set AIRFLOW_CONN_{conn_id.upper()})")
    parts = {
        "host": f"its host (the CloudAgent base URL, e.g. {DEFAULT_BASE_URL})",
        "login": "its login (the CloudAgent userName)",
        "password": "its password (the apiKey)",
    }
    return preflight.check_api_connection(
        conn.host, conn.login, conn.password, conn.extra_dejson, setting=setting, parts=parts
    )


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
