"""The Airflow provider of cloudagent-etl: hooks (connections -> settings), callback trigger, wait operator.

Installed with the project (``pip install .``), it registers itself through the
``apache_airflow_provider`` entry point, so the DAGs import it in any Airflow installation: no plugins
folder and no ``PYTHONPATH``. Only glue lives here; the steps themselves are in ``cloudagent_etl``.
"""

from __future__ import annotations

from typing import Any

#: The distribution that carries this provider (Airflow checks it against the package metadata).
PACKAGE_NAME = "cloudagent-etl"


def get_provider_info() -> dict[str, Any]:
    """What ``airflow providers list`` shows and the connection form of type ``cloudagent``.

    Declared as data (Airflow 3.2+ reads ``conn-fields`` and ``ui-field-behaviour`` without importing
    the hook). The form's fields are the connection extras that ``ApiSettings`` reads, with its defaults.
    """
    from cloudagent_etl import settings

    return {
        "package-name": PACKAGE_NAME,
        "name": "Ozonetel CloudAgent",
        "description": "Sync Ozonetel CloudAgent Campaign Dial Status exports into a warehouse.",
        "versions": [_version()],
        "connection-types": [
            {
                "connection-type": "cloudagent",
                "hook-class-name": "cloudagent_airflow.hooks.CloudAgentHook",
                "hook-name": "Ozonetel CloudAgent",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"host": "Base URL", "login": "userName", "password": "apiKey"},
                    "placeholders": {"host": settings.DEFAULT_BASE_URL, "login": "your CloudAgent userName"},
                },
                "conn-fields": {
                    "endpoint": {
                        "label": "Export endpoint path",
                        "description": "Path of the Campaign Dial Status export under the base URL.",
                        "schema": {"type": ["string", "null"], "default": settings.DEFAULT_ENDPOINT},
                    },
                    # No default here: Airflow masks the values of fields named like "*key*" ("***").
                    "api_key_in": {
                        "label": "Send the apiKey in",
                        "description": "'header' (an apiKey header; when empty) or 'body' (a JSON field).",
                        "schema": {"type": ["string", "null"], "enum": ["header", "body", None]},
                    },
                    "timezone": {
                        "label": "Account time zone",
                        "description": "IANA name; CloudAgent reads and writes dates in it.",
                        "schema": {"type": ["string", "null"], "default": settings.DEFAULT_TIMEZONE},
                    },
                    "rate_limit_per_minute": {
                        "label": "Requests per minute",
                        "description": "The account's API budget, shared by every run and process.",
                        "schema": {"type": ["integer", "null"], "minimum": 1,
                                   "default": settings.DEFAULT_RATE_LIMIT_PER_MINUTE},
                    },
                    "timeout_s": {
                        "label": "HTTP timeout (s)",
                        "description": "How long one API call may take before it is retried.",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0,
                                   "default": settings.DEFAULT_TIMEOUT_S},
                    },
                },
            }
        ],
    }  # fmt: skip


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE_NAME)
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"
