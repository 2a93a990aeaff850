"""The Airflow plugin of cloudagent-etl: the CloudAgent page (a FastAPI app and its navigation entry).

Registered by the ``airflow.plugins`` entry point of the package (pyproject.toml), so it loads in any
Airflow where the package is installed: no plugins folder. The api-server mounts the app at
``/cloudagent``; the navigation entry embeds it (``/plugin/cloudagent`` in the UI).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from cloudagent_airflow.page import URL_PREFIX, LazyApp


class CloudAgentPlugin(AirflowPlugin):
    """Coverage, loads and rejects of the CloudAgent sync, for users who may read its DAG's runs."""

    name = "cloudagent"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "CloudAgent"}]  # noqa: RUF012
    external_views = [  # noqa: RUF012
        {
            "name": "CloudAgent",
            # Relative (no leading slash): the UI resolves it against its base URL.
            "href": URL_PREFIX.lstrip("/") + "/",
            "url_route": "cloudagent",
            "destination": "nav",
            "nav_top_level": True,
            "icon": URL_PREFIX.lstrip("/") + "/static/icon.svg",
        }
    ]
