"""The CloudAgent page: a FastAPI app that Airflow's api-server mounts at ``/cloudagent`` (see
:mod:`cloudagent_airflow.plugin`), shown in the UI's navigation.

Airflow does not protect a plugin's FastAPI app: every route here depends on Airflow's own
``requires_access_dag`` (``airflow.api_fastapi.core_api.security``), which resolves the user from the
api-server's JWT (the UI's ``_token`` cookie or an ``Authorization: Bearer`` header) through the configured
auth manager and asks it whether that user may read the runs of ``cloudagent_dial_status``. No token: 401;
an invalid one: 403; a user without that permission: 403. The numbers come from
:mod:`cloudagent_etl.status` (read-only; no apiKey, token or payload byte in them). The page's script, style
and chart library (plotly.js, from the ``plotly`` package) are served by this app, so it needs no internet.
"""

from __future__ import annotations

import threading
from datetime import date
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy import Engine
    from starlette.types import Receive, Scope, Send

#: Where the api-server mounts the app (also the navigation entry's page).
URL_PREFIX = "/cloudagent"
#: The longest range the page answers for (the grid stays readable; the terminal has no limit).
MAX_DAYS = 92

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_ASSETS = {
    "cloudagent.js": "text/javascript",
    "cloudagent.css": "text/css",
    "icon.svg": "image/svg+xml",
}


def _asset(name: str) -> Path:
    return Path(str(files("cloudagent_airflow").joinpath("static", name)))


def _plotly_js() -> Path:
    """plotly.js as the ``plotly`` wheel ships it (no CDN: the page works offline)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


class _Warehouse:
    """One engine on ``cloudagent_db`` per api-server process, made on first use (and remade when the
    connection's URI changes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._uri = ""

    def engine(self) -> Engine:
        from cloudagent_airflow.hooks import CloudAgentDbHook
        from cloudagent_etl.db import create_db_engine

        uri = CloudAgentDbHook().get_uri()
        with self._lock:
            if self._engine is None or uri != self._uri:
                if self._engine is not None:
                    self._engine.dispose()
                self._engine, self._uri = create_db_engine(uri), uri
            return self._engine


def _configured_accounts() -> dict[str, list[str]]:
    """The configured accounts and campaigns, or none when unset or unreadable (the grid still shows every
    campaign that has requests)."""
    from cloudagent_airflow.accounts import configured_accounts
    from cloudagent_etl.errors import ConfigurationError

    try:
        return configured_accounts()
    except ConfigurationError:
        return {}


def _sync_start() -> date | None:
    """The Variable ``cloudagent_sync_start``, or None when unset or unreadable (then each campaign starts on
    its first configured or requested day)."""
    from cloudagent_airflow.accounts import sync_start
    from cloudagent_etl.errors import ConfigurationError

    try:
        return sync_start()
    except ConfigurationError:
        return None


def create_app() -> FastAPI:
    """The app: the page, its data endpoint and its static files, all behind Airflow's authorization."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    from cloudagent_airflow.backfills import DIAL_STATUS_DAG_ID

    # The page opens to whoever may read the runs of the dial status DAG.
    authorized = Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DIAL_STATUS_DAG_ID))
    app = FastAPI(
        title="CloudAgent", dependencies=[authorized], docs_url=None, redoc_url=None, openapi_url=None
    )
    warehouse = _Warehouse()

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        html = _asset("cloudagent.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={**_SECURITY_HEADERS, "Cache-Control": "no-store"})

    @app.get("/api/status")
    def status_data(days: int = 14, until: date | None = None) -> JSONResponse:
        from cloudagent_etl import status

        if not 1 <= days <= MAX_DAYS:
            raise HTTPException(422, f"days must be between 1 and {MAX_DAYS}")
        try:
            engine = warehouse.engine()
        except Exception as exc:  # a missing or wrong connection: say which, never its URI
            raise HTTPException(
                503, f"the warehouse connection cloudagent_db is not usable: {type(exc).__name__}"
            ) from None
        from cloudagent_airflow.backfills import backfill_api_body, backfill_command

        report = status.status_report(
            engine, days=days, until=until, accounts=_configured_accounts(), sync_start=_sync_start()
        )
        body: dict[str, Any] = {"dag_id": DIAL_STATUS_DAG_ID, **status.report_json(report)}
        for shown, backfill in zip(body["backfills"], report.coverage.backfills(), strict=True):
            shown.update(command=backfill_command(backfill), api_body=backfill_api_body(backfill))
        return JSONResponse(body, headers={**_SECURITY_HEADERS, "Cache-Control": "no-store"})

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        if name == "plotly.min.js":
            path, media_type = _plotly_js(), "text/javascript"
        elif name in _ASSETS:
            path, media_type = _asset(name), _ASSETS[name]
        else:
            raise HTTPException(404, "not found")
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    return app


class LazyApp:
    """The ASGI app the plugin hands Airflow, built on its first request.

    Every Airflow component loads plugins; only the api-server serves them, so the others never import
    FastAPI's routing or the api-server's security module for this page.
    """

    def __init__(self) -> None:
        self._app: FastAPI | None = None
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = create_app()
        await self._app(scope, receive, send)
