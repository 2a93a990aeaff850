"""The CloudAgent page inside Airflow's own api-server app (built in-process, as ``airflow api-server`` builds
it): the plugin comes from the package's entry point, and nothing is shown without a valid Airflow token.
The browser test against the local stack is in ``test_local_stack.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest

from cloudagent_dev.databases import connection_uri
from cloudagent_etl import landing, status, targets
from cloudagent_etl.accounts import SyncTarget
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.settings import DEFAULT_CONNECTION
from tests.factories import land, new_request, record

pytestmark = pytest.mark.usefixtures("airflow_home")

PROTECTED = ["/cloudagent/", "/cloudagent/api/status?days=3", "/cloudagent/static/cloudagent.js",
             "/cloudagent/static/plotly.min.js"]  # fmt: skip
DAY = date(2025, 6, 3)


@pytest.fixture
def api_server(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> Iterator[Any]:
    """Airflow's api-server app (core API, UI, auth manager and plugins) on a fresh warehouse."""
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDAGENT_DB", connection_uri(sqlite_url))
    monkeypatch.setenv("AIRFLOW_VAR_CLOUDAGENT_CAMPAIGNS", json.dumps(["Sales", "Support"]))
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "k" * 64)
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    with TestClient(create_app(apps="core"), base_url="http://127.0.0.1") as client:
        client.sqlite_url = sqlite_url  # type: ignore[attr-defined]
        yield client
    purge_cached_app()


def token(role: str | None) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="someone", role=role))


def test_the_plugin_registers_through_its_entry_point_with_the_page_in_the_navigation(api_server) -> None:
    plugins = api_server.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token('admin')}"})

    assert plugins.status_code == 200, plugins.text
    (ours,) = [p for p in plugins.json()["plugins"] if p["name"] == "cloudagent"]
    assert ours["source"].startswith("cloudagent-etl")  # the distribution's entry point, not a folder
    assert [(a["url_prefix"], a["name"]) for a in ours["fastapi_apps"]] == [("/cloudagent", "CloudAgent")]
    (view,) = ours["external_views"]
    assert (view["href"], view["url_route"], view["destination"]) == ("cloudagent/", "cloudagent", "nav")


@pytest.mark.parametrize("path", PROTECTED)
def test_anonymous_requests_get_401_and_bad_tokens_403_and_see_nothing(api_server, path: str) -> None:
    anonymous = api_server.get(path)
    forged = api_server.get(path, headers={"Authorization": "Bearer not-a-jwt"})
    forged_cookie = api_server.get(path, headers={"Cookie": "_token=not-a-jwt"})
    no_permission = api_server.get(path, headers={"Authorization": f"Bearer {token(None)}"})

    assert [r.status_code for r in (anonymous, forged, forged_cookie, no_permission)] == [401, 403, 403, 403]
    for response in (anonymous, forged, forged_cookie, no_permission):
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"detail"}


def test_a_viewer_gets_the_page_and_its_data_with_the_uis_cookie_or_a_bearer_token(api_server) -> None:
    engine = create_db_engine(api_server.sqlite_url)
    start, end = status.nightly_window(DAY)
    expired = new_request(engine, "Support", unique_id="U-expired", window=(start, end))
    landing.mark_expired(engine, expired.request_id, "no callback within 60 minutes")
    sales = new_request(engine, "Sales", unique_id="U-sales", window=(start, end))
    land(engine, sales.request_id, [record("S-1", f"{DAY} 10:00:00")])
    engine.dispose()
    viewer = token("viewer")

    page = api_server.get("/cloudagent/", headers={"Cookie": f"_token={viewer}"})
    data = api_server.get(
        f"/cloudagent/api/status?days=2&until={DAY}", headers={"Authorization": f"Bearer {viewer}"}
    )
    chart = api_server.get("/cloudagent/static/plotly.min.js", headers={"Cookie": f"_token={viewer}"})

    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="static/plotly.min.js"' in page.text
    assert data.status_code == 200, data.text
    body = data.json()
    assert body["days"] == [str(DAY - timedelta(days=1)), str(DAY)]
    assert [(row["account"], row["campaign"]) for row in body["rows"]] == [
        ("cloudagent_default", "Sales"),
        ("cloudagent_default", "Support"),
    ]
    cells = {(c["campaign"], c["day"]): c for c in body["cells"]}
    assert cells[("Support", str(DAY))]["state"] == "expired"
    assert cells[("Support", str(DAY))]["attempts"][0]["unique_id"] == "U-expired"
    assert cells[("Sales", str(DAY))]["state"] == "received"
    # Syncing of Sales started with its first request: the day before is not missing, nor offered.
    assert cells[("Sales", str(DAY - timedelta(days=1)))]["state"] == "before_start"
    assert body["missing"] == 2  # Support expired, Sales received (not loaded yet)
    assert [b["labels"] for b in body["backfills"]] == [["Support"]]
    assert "secret-api-key" not in data.text
    assert chart.status_code == 200
    assert len(chart.content) > 1_000_000  # plotly.js from the plotly wheel


def test_a_campaign_cloudagent_rejected_is_shown_as_rejected_and_not_offered_for_a_backfill(
    api_server,
) -> None:
    engine = create_db_engine(api_server.sqlite_url)
    start, end = status.nightly_window(DAY)
    failed = new_request(engine, "Support", unique_id=None, window=(start, end))
    landing.mark_failed(
        engine, failed.request_id, "InvalidCampaignNameError: CloudAgent rejected the request"
    )
    support = SyncTarget(DEFAULT_CONNECTION, "Support")
    message = targets.rejection_text(
        support, targets.CheckResult.CAMPAIGN_UNKNOWN, "Variable cloudagent_campaigns"
    )
    assert targets.record_check(engine, support, targets.CheckResult.CAMPAIGN_UNKNOWN, message=message,
                                fingerprint="f1", day=DAY)  # fmt: skip
    # The same rejection again is no news (the alert is sent once); another configuration's is.
    assert not targets.record_check(engine, support, targets.CheckResult.CAMPAIGN_UNKNOWN, message=message,
                                    fingerprint="f1", day=DAY)  # fmt: skip
    new_request(engine, "Sales", unique_id="U-sales", window=(start, end))
    engine.dispose()

    data = api_server.get(
        f"/cloudagent/api/status?days=2&until={DAY}", headers={"Authorization": f"Bearer {token('viewer')}"}
    )

    body = data.json()
    cells = {(c["campaign"], c["day"]): c for c in body["cells"]}
    assert cells[("Support", str(DAY))]["state"] == "rejected"
    assert cells[("Support", str(DAY))]["rejection"].startswith(
        "CloudAgent does not know this campaign: 'Support' is not a campaign of the account of connection "
        "cloudagent_default; correct the name in Variable cloudagent_campaigns"
    )
    assert body["rejected"] == [
        {"account": DEFAULT_CONNECTION, "campaign": "Support", "label": "Support", "message": message}
    ]
    assert body["missing"] == 1  # Sales, requested (on its way): Support is rejected, not missing
    assert body["backfills"] == []
