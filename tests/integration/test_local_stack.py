"""The local stack (``make airflow``) for real: start/stop cycle, and a backfill through the real scheduler.

One stack per module, started and stopped through ``python -m cloudagent_dev.localstack`` exactly as the
Makefile does, in a temporary folder on free ports, with PostgreSQL for the warehouse and for Airflow's
metadata. One test runs four phases in order: the stack answers, a three-day backfill lands the
simulator's ground truth (and again, changing nothing), one more day with one campaign's callback dropped
shows up on the CloudAgent page in a real browser (and is alerted), then ``stop`` leaves nothing behind.
The fixture stops whatever is still recorded on every exit path and asserts that none of the recorded
process groups survived.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from cloudagent_dev.databases import create_pg_database, database_url, drop_pg_database
from cloudagent_dev.localstack import DAG_ID, StackSettings, StackState, api_token, stop_stack
from cloudagent_dev.processes import free_port, still_running
from cloudagent_etl import status
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.landing import export_requests
from cloudagent_etl.warehouse.tables import dial_status, dial_status_history, load_runs
from tests.checks import Sync, assert_warehouse_matches
from tests.fixtures.simulator import SimulatorHandle
from tests.timing import DEADLINE_MS, DEADLINE_S

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
#: Two campaigns: the two backfills and the nightly run make 14 export calls, so the limiter must hold
#: back the ones past 10 in the first minute (more campaigns would only add minutes of waiting).
CAMPAIGNS = ("Alpha", "Beta")
#: Logical dates 2025-06-01/02/03 22:00 UTC: the nightly windows starting 2025-06-02/03/04 03:30 IST.
BACKFILL = {"from_date": "2025-06-01T00:00:00+00:00", "to_date": "2025-06-03T23:59:00+00:00"}
#: Long enough that the wait task finds no callback yet and defers (the test must see every wait deferred):
#: a wait can start 12 s after its request_export on a busy 2-core machine (test_distributed saw it), when
#: the callback had landed already and there was nothing to defer for.
CALLBACK_DELAY_S = 30.0
#: What each phase takes by itself (the one deadline is added for a busy machine): starting the stack
#: (200 s seen at load average ~14), a three-day backfill with its callback delays and the limiter's
#: minute, the run whose callback never comes (its 6 s callback timeout, then the alert).
START_WORK_S, BACKFILL_WORK_S, DROPPED_RUN_WORK_S = 240, 300, 60
#: The day after the backfill: only Beta is requested, and its callback never comes.
DROPPED_DAY = "2025-06-05"
CHROMIUM = Path("/usr/bin/chromium")
#: CloudAgent's answer to the account check (an export request with an empty callBackUrl): no export made.
ACCOUNT_CHECK_ANSWER = "callBackUrl cannot be empty (OR) it should contain 'http' or 'https'"
#: A campaign CloudAgent does not know, as a typo in a manual run's conf.
TYPO = "Salse"
SCREENSHOT = REPO / "docs" / "images" / "cloudagent-page.png"


@dataclass
class Stack:
    """A running local stack, its settings and an authenticated REST API client."""

    settings: StackSettings
    state: StackState
    env: dict[str, str]
    api: httpx.Client
    engine: Engine
    start_seconds: float

    def localstack(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m cloudagent_dev.localstack <args>`` (what ``make airflow`` runs) for this stack."""
        command = [sys.executable, "-m", "cloudagent_dev.localstack", *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=300, check=False)

    def get(self, path: str, **params: Any) -> Any:
        response = self.api.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def runs(self) -> list[dict]:
        return self.get(f"/api/v2/dags/{DAG_ID}/dagRuns", limit=100)["dag_runs"]

    def task_instances(self, task_id: str, **params: Any) -> list[dict]:
        found = self.get(
            f"/api/v2/dags/{DAG_ID}/dagRuns/~/taskInstances", task_id=task_id, limit=100, **params
        )
        return found["task_instances"]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg_server_url: str, pg_admin: Engine, pg_template: str
) -> Iterator[Stack]:
    databases = [
        create_pg_database(pg_admin, "cloudagent_stack", template=pg_template),
        create_pg_database(pg_admin, "cloudagent_stack_airflow"),
    ]
    # Airflow gets a plain postgresql:// URL (its own driver); ours become psycopg 3 URLs in db.py.
    warehouse_url, metadata_url = (
        database_url(pg_server_url, name).replace("postgresql+psycopg://", "postgresql://")
        for name in databases
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDAGENT_", "AIRFLOW"))}
    env.update(
        {
            "CLOUDAGENT_LOCALSTACK_DIR": str(tmp_path_factory.mktemp("localstack")),
            "CLOUDAGENT_LOCALSTACK_REGISTRY": str(tmp_path_factory.mktemp("registry") / "localstacks"),
            "CLOUDAGENT_AIRFLOW_PORT": str(free_port()),
            "CLOUDAGENT_RECEIVER_PORT": str(free_port()),
            "CLOUDAGENT_SIMULATOR_PORT": str(free_port()),
            "CLOUDAGENT_DB_URL": warehouse_url,
            "CLOUDAGENT_AIRFLOW_DB_URL": metadata_url,
            "CLOUDAGENT_CAMPAIGNS": ",".join(CAMPAIGNS),
        }
    )
    settings = StackSettings.from_env(env)
    began = time.perf_counter()
    started = subprocess.run(
        [sys.executable, "-m", "cloudagent_dev.localstack", "start"],
        env=env, capture_output=True, text=True, timeout=START_WORK_S + DEADLINE_S, check=False,
    )  # fmt: skip
    start_seconds = time.perf_counter() - began
    print(f"\nlocal stack started in {start_seconds:.1f} s:\n{started.stdout}")
    recorded = StackState.load(settings.state_path).processes if settings.state_path.exists() else ()
    engine = create_db_engine(warehouse_url)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        state = StackState.load(settings.state_path)
        password = state.admin_password()
        assert password, "the api-server generated no admin password"
        headers = {"Authorization": f"Bearer {api_token(state.airflow_url, password)}"}
        with httpx.Client(base_url=state.airflow_url, headers=headers, timeout=DEADLINE_S) as api:
            yield Stack(settings, state, env, api, engine, start_seconds)
    finally:
        engine.dispose()
        survivors = stop_stack(settings) if settings.state_path.exists() else []
        left = still_running(recorded)
        for name in databases:
            drop_pg_database(pg_admin, name)
        assert survivors == [], f"processes left running after stop: {survivors}"
        assert left == [], f"recorded processes still running: {left}"


def _simulator(stack: Stack) -> SimulatorHandle:
    """A handle on the stack's simulator (its control endpoints only need the base URL)."""
    assert stack.state.simulator_url is not None

    @dataclass
    class At:
        base_url: str

    return SimulatorHandle(server=At(stack.state.simulator_url))  # type: ignore[arg-type]


def the_stack_answers_on_loopback_and_a_second_start_starts_nothing(stack: Stack) -> None:
    health = stack.get("/api/v2/monitor/health")
    assert {part: health[part]["status"] for part in ("scheduler", "triggerer", "dag_processor")} == {
        "scheduler": "healthy",
        "triggerer": "healthy",
        "dag_processor": "healthy",
    }
    assert stack.get(f"/api/v2/dags/{DAG_ID}")["is_paused"] is False
    assert stack.get("/api/v2/pools/cloudagent_api")["slots"] == 1
    # The provider's connection form, as the UI asks for it (Airflow 3.3 serves it under /ui/).
    (form,) = [
        meta for meta in stack.get("/ui/connections/hook_meta") if meta["connection_type"] == "cloudagent"
    ]
    assert form["hook_class_name"] == "cloudagent_airflow.hooks.CloudAgentHook"
    assert set(form["extra_fields"]) == {
        "endpoint",
        "api_key_in",
        "timezone",
        "rate_limit_per_minute",
        "timeout_s",
    }
    assert form["extra_fields"]["timezone"]["value"] == "Asia/Kolkata"
    assert (form["standard_fields"]["password"]["title"], form["standard_fields"]["port"]["hidden"]) == (
        "apiKey",
        True,
    )
    for url in (stack.state.receiver_url, stack.state.simulator_url):
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    assert [p.name for p in stack.state.processes] == [
        "simulator", "receiver", "api-server", "scheduler", "dag-processor", "triggerer"
    ]  # fmt: skip
    listening = {
        (conn.laddr.ip, conn.laddr.port)
        for process in still_running(stack.state.processes)
        for conn in process.net_connections(kind="inet")
        if conn.status == "LISTEN"
    }
    assert listening, "no listening socket found: the check would prove nothing"
    assert {ip for ip, _ in listening} == {"127.0.0.1"}

    again = stack.localstack("start")

    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert StackState.load(stack.settings.state_path) == stack.state


def _wait_for(what: str, done: Callable[[], bool], timeout: float, on_poll: Callable[[], None]) -> float:
    began = time.monotonic()
    while not done():
        on_poll()
        assert time.monotonic() - began < timeout, f"{what}: not done after {timeout:.0f} s"
        time.sleep(1)
    return time.monotonic() - began


def _backfill_finished(stack: Stack) -> bool:
    backfills = stack.get("/api/v2/backfills", dag_id=DAG_ID)["backfills"]
    runs = stack.runs()
    return (
        bool(backfills)
        and all(b["completed_at"] for b in backfills)
        and all(run["state"] in ("success", "failed") for run in runs)
    )


def _failures(stack: Stack, runs: list[dict]) -> str:
    """Each run that did not succeed, its unsuccessful task instances and the tail of their last log."""
    lines = []
    for run in runs:
        if run["state"] == "success":
            continue
        lines.append(f"run {run['dag_run_id']} ({run['run_type']}): {run['state']}")
        tis = stack.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances", limit=100)
        for ti in tis["task_instances"]:
            if ti["state"] == "success":
                continue
            lines.append(f"  {ti['task_id']}[{ti['map_index']}] {ti['state']} after {ti['try_number']} tries")
            logs = Path(stack.state.airflow_home, "logs", f"dag_id={DAG_ID}", f"run_id={run['dag_run_id']}")
            attempts = sorted((logs / f"task_id={ti['task_id']}").glob("**/attempt=*.log"))
            if attempts:
                text = attempts[-1].read_text(errors="replace")
                errors = [line[:1500] for line in text.splitlines() if '"level":"error"' in line]
                tail = "\n".join(errors[-3:]) or text[-2500:]
                lines.append("    " + tail.replace("\n", "\n    "))
    return "\n".join(lines)


def _table(engine: Engine, table) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(tuple(row) for row in conn.execute(select(table)))


def a_three_day_backfill_through_the_scheduler_lands_the_ground_truth_once(stack: Stack) -> None:
    simulator = _simulator(stack)
    simulator.configure(callback_delay_s=CALLBACK_DELAY_S)
    deferred: dict[tuple[str, int], dict] = {}

    def watch_deferrals() -> None:
        for ti in stack.task_instances("campaign.wait_for_callback", state="deferred"):
            deferred[(ti["dag_run_id"], ti["map_index"])] = ti

    began = time.monotonic()
    created = stack.localstack(
        "airflow", "backfill", "create", "--dag-id", DAG_ID,
        "--from-date", BACKFILL["from_date"], "--to-date", BACKFILL["to_date"], "--max-active-runs", "3",
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    _wait_for(
        "the backfill", lambda: _backfill_finished(stack), BACKFILL_WORK_S + DEADLINE_S, watch_deferrals
    )
    backfill_seconds = time.monotonic() - began

    runs = stack.runs()
    backfill_runs = sorted(run["logical_date"] for run in runs if run["run_type"] == "backfill")
    assert len(backfill_runs) == 3
    assert {run["state"] for run in runs} == {"success"}, _failures(stack, runs)
    # (a) the warehouse is exactly what the simulator sent (every accepted request, backfill and nightly).
    sync = Sync(stack.engine, simulator, dags={})
    assert_warehouse_matches(sync)
    backfill_requests = [r for r in sync.requests() if r.run_id.startswith("backfill__")]
    assert {(r.campaign_name, r.state) for r in backfill_requests} == {(c, "loaded") for c in CAMPAIGNS}
    windows = sorted({(r.window_start, r.window_end) for r in backfill_requests})
    assert len(windows) == 3
    assert len(backfill_requests) == 3 * len(CAMPAIGNS)
    for (_, end), (next_start, _) in itertools.pairwise(windows):
        assert next_start == end - timedelta(minutes=15)  # contiguous, with the default look-back
    # (b) one export request at a time (the pool), never more than 10 calls in any 60 s (the limiter counts
    # the account checks of the preflight too: each campaign is asked about while it is new, by the first
    # runs' preflights, two of which may run at once; later runs ask nothing).
    logged = simulator.requests_log()
    arrivals = sorted(entry["arrived_at"] for entry in logged)
    assert max(sum(1 for t in arrivals if start <= t < start + 60) for start in arrivals) <= 10
    assert "Max limit exceeded" not in {entry["message"] for entry in logged}
    checks = [entry for entry in logged if entry["message"] == ACCOUNT_CHECK_ANSWER]
    assert len(CAMPAIGNS) <= len(checks) <= 2 * len(CAMPAIGNS)
    assert {entry["campaign_name"] for entry in checks} == set(CAMPAIGNS)
    requested = stack.task_instances("campaign.request_export")
    assert len(requested) == len(arrivals) - len(checks) == len(CAMPAIGNS) * len(runs)
    intervals = sorted((ti["start_date"], ti["end_date"]) for ti in requested)
    for (_, end), (next_start, _) in itertools.pairwise(intervals):
        assert end <= next_start, intervals
    # (c) every wait of the backfill was deferred to a trigger that the triggerer ran.
    waits = [
        ti
        for ti in stack.task_instances("campaign.wait_for_callback")
        if ti["dag_run_id"].startswith("backfill__")
    ]
    assert len(waits) == 3 * len(CAMPAIGNS)
    assert {ti["state"] for ti in waits} == {"success"}
    assert {(ti["dag_run_id"], ti["map_index"]) for ti in waits} <= set(deferred)
    for ti in deferred.values():
        assert ti["trigger"]["classpath"].endswith("CallbackArrivedTrigger")
        assert ti["triggerer_job"]["job_type"] == "TriggererJob"
    print(f"\nbackfill of 3 days x {len(CAMPAIGNS)} campaigns took {backfill_seconds:.1f} s")

    # (d) the same backfill again (reprocess completed runs) changes nothing in the warehouse.
    before = {name: _table(stack.engine, table) for name, table in _warehouse_tables().items()}
    first_loads = _loads(stack.engine)
    response = stack.api.post(
        "/api/v2/backfills",
        json={"dag_id": DAG_ID, **BACKFILL, "reprocess_behavior": "completed", "max_active_runs": 3},
    )
    assert response.status_code == 200, response.text
    began = time.monotonic()
    _wait_for(
        "the second backfill", lambda: _backfill_finished(stack), BACKFILL_WORK_S + DEADLINE_S, lambda: None
    )
    print(f"the same backfill again took {time.monotonic() - began:.1f} s")

    assert {run["state"] for run in stack.runs()} == {"success"}
    assert {name: _table(stack.engine, table) for name, table in _warehouse_tables().items()} == before
    again = [load for key, load in _loads(stack.engine).items() if key not in first_loads]
    assert len(again) == 3 * len(CAMPAIGNS)
    assert {(load.inserted, load.updated, load.rejected) for load in again} == {(0, 0, 0)}
    rows_in = sorted((r.campaign_name, r.window_start, r.rows_in) for r in first_loads.values())
    assert sorted((r.campaign_name, r.window_start, r.rows_in) for r in again) == rows_in


def _warehouse_tables() -> dict[str, Any]:
    return {"dial_status": dial_status, "dial_status_history": dial_status_history}


def _loads(engine: Engine) -> dict[str, Any]:
    """Every load of a backfill request, keyed by load run id, with the request's campaign and window."""
    requests, runs = export_requests, load_runs
    query = (
        select(runs, requests.c.campaign_name, requests.c.window_start)
        .join(requests, requests.c.request_id == runs.c.request_id)
        .where(requests.c.run_id.like("backfill\\_\\_%", escape="\\"))
    )
    with engine.connect() as conn:
        return {row.load_run_id: row for row in conn.execute(query)}


def _warehouse_cells(engine: Engine) -> dict[tuple[str, str], tuple[int, ...]]:
    """Per campaign × IST day, the warehouse's own counts: load runs of the requests of that day."""
    requests, runs = export_requests, load_runs
    counted = ("rows_in", "inserted", "updated", "unchanged", "rejected")
    query = (
        select(
            requests.c.campaign_name,
            requests.c.window_start,
            requests.c.window_end,
            *(func.sum(runs.c[name]).label(name) for name in counted),
        )
        .join(runs, runs.c.request_id == requests.c.request_id)
        .where(runs.c.status == "loaded")
        .group_by(requests.c.campaign_name, requests.c.window_start, requests.c.window_end)
    )
    cells: dict[tuple[str, str], tuple[int, ...]] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            key = (row.campaign_name, str(status.window_day(row.window_start, row.window_end)))
            before = cells.get(key, (0,) * len(counted))
            cells[key] = tuple(a + int(getattr(row, name)) for a, name in zip(before, counted, strict=True))
    return cells


def a_dropped_callback_shows_on_the_cloudagent_page_as_missing_with_its_unique_id(
    stack: Stack, tmp_path: Path
) -> None:
    """Beta's export of one more day is never delivered: the run fails, the alert is logged, and the
    CloudAgent page (logged in through the UI, in Debian's chromium) shows exactly the warehouse."""
    began = time.monotonic()
    simulator = _simulator(stack)
    simulator.configure(drop_exports=1, callback_delay_s=0.5)
    # A manual run with logical date L exports the window that ends at L (03:30 IST the next day).
    logical_date = f"{DROPPED_DAY}T22:00:00+00:00"
    conf = {"campaigns": ["Beta"], "re_requests": 0, "callback_timeout_minutes": 0.1}
    created = stack.api.post(
        f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": logical_date, "conf": conf}
    )
    assert created.status_code == 200, created.text
    run_id = created.json()["dag_run_id"]

    def finished() -> bool:
        return stack.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"] in ("success", "failed")

    _wait_for("the run with the dropped callback", finished, DROPPED_RUN_WORK_S + DEADLINE_S, lambda: None)
    run_seconds = time.monotonic() - began
    assert stack.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"] == "failed"
    with stack.engine.connect() as conn:
        (dropped,) = conn.execute(select(export_requests).where(export_requests.c.run_id == run_id)).all()
    assert (dropped.campaign_name, dropped.state, dropped.unique_id is not None) == ("Beta", "expired", True)
    assert str(status.window_day(dropped.window_start, dropped.window_end)) == DROPPED_DAY
    logs = Path(stack.state.airflow_home, "logs", f"dag_id={DAG_ID}", f"run_id={run_id}")
    (alert_log,) = (logs / "task_id=alert_unloaded").glob("**/attempt=*.log")
    alert_text = alert_log.read_text()
    assert "ALERT CloudAgent: run" in alert_text
    assert f"- Beta: window {DROPPED_DAY} 03:" in alert_text
    assert f"uniqueId {dropped.unique_id}" in alert_text

    # A typo'd campaign in a manual run: the preflight asks CloudAgent (no export), fails in seconds naming
    # the campaign and the setting, alerts once; the campaign is never "missing" on the page.
    typo = stack.api.post(
        f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {"campaigns": [TYPO]}}
    )
    assert typo.status_code == 200, typo.text
    typo_run = typo.json()["dag_run_id"]
    _wait_for(
        "the run with a typo",
        lambda: stack.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{typo_run}")["state"] in ("success", "failed"),
        DROPPED_RUN_WORK_S + DEADLINE_S,
        lambda: None,
    )
    logs = Path(stack.state.airflow_home, "logs", f"dag_id={DAG_ID}", f"run_id={typo_run}")
    (preflight_log,) = (logs / "task_id=preflight").glob("**/attempt=*.log")
    preflight_text = preflight_log.read_text()
    assert (
        f"CloudAgent does not know this campaign: '{TYPO}' is not a campaign of the account" in preflight_text
    )
    assert "ALERT CloudAgent rejected configured accounts or campaigns" in preflight_text
    with stack.engine.connect() as conn:
        assert conn.execute(select(export_requests).where(export_requests.c.run_id == typo_run)).all() == []

    # Nothing for anonymous callers or forged tokens, on the page or its data.
    for path in ("/cloudagent/", "/cloudagent/api/status?days=5"):
        assert httpx.get(stack.state.airflow_url + path, timeout=10).status_code == 401
        forged = httpx.get(
            stack.state.airflow_url + path, headers={"Authorization": "Bearer x.y.z"}, timeout=10
        )
        assert forged.status_code == 403

    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: apt-get install -y chromium (.ci/run does)"
    expected = _warehouse_cells(stack.engine)
    password = stack.state.admin_password()
    assert password
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], timeout=DEADLINE_MS
        )
        try:
            page = _new_page(browser, viewport={"width": 1500, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(stack.state.airflow_url + "/")
            page.locator("input[name=username]").fill("admin")
            page.locator("input[name=password]").fill(password)
            page.get_by_role("button", name="Sign in").click()
            # The navigation entry of the plugin (the dashboard lists runs of "cloudagent_dial_status" too).
            page.get_by_test_id("nav-sidebar").get_by_role("link", name="CloudAgent", exact=True).click()
            page.wait_for_url("**/plugin/cloudagent", timeout=DEADLINE_MS)
            frame = page.frame_locator("iframe")
            frame.locator("body[data-loaded]").wait_for(timeout=DEADLINE_MS)  # its first load (14 days)
            newest = frame.locator("#grid thead th").last.bounding_box()
            assert newest is not None
            assert newest["x"] + newest["width"] <= 1500, newest  # the newest day is not cut off
            frame.locator("#days").fill("5")
            frame.locator("#until").fill(DROPPED_DAY)
            frame.get_by_role("button", name="Show").click()
            frame.locator("body[data-loaded='2025-06-01..2025-06-05']").wait_for(timeout=DEADLINE_MS)

            states = {
                (cell.get_attribute("data-campaign"), cell.get_attribute("data-day")): cell.get_attribute(
                    "data-state"
                )
                for cell in frame.locator("#grid td[data-state]").all()
            }
            days = [f"2025-06-0{n}" for n in range(1, 6)]
            assert states == {
                **{(c, d): "loaded" for c in CAMPAIGNS for d in days[1:4]},
                # syncing started with the backfill's first day: the day before is not missing
                **{(c, days[0]): "before_start" for c in CAMPAIGNS},
                ("Alpha", DROPPED_DAY): "never_requested",
                ("Beta", DROPPED_DAY): "expired",
            }
            assert TYPO not in frame.locator("#grid").inner_text()
            frame.locator(f"#grid button[data-campaign=Beta][data-day='{DROPPED_DAY}']").click()
            detail = frame.locator("#detail")
            assert detail.locator(".unique-id").all_inner_texts() == [dropped.unique_id]
            assert "expired" in detail.inner_text()
            for (campaign, day), counts in expected.items():
                if day not in days:
                    continue
                row = frame.locator(f"#loads tr[data-campaign={campaign}][data-day='{day}']")
                shown = tuple(
                    int(row.locator(f"td[data-column={name}]").inner_text().replace(",", ""))
                    for name in ("records", "inserted", "updated", "unchanged", "rejected")
                )
                assert shown == counts, (campaign, day)
            # A row per cell something was requested for: none of zeros for the others.
            listed = {
                (row.get_attribute("data-campaign"), row.get_attribute("data-day"))
                for row in frame.locator("#loads tbody tr").all()
            }
            assert listed == {(c, d) for c in CAMPAIGNS for d in days[1:4]} | {("Beta", DROPPED_DAY)}
            backfills = frame.locator(".backfill pre").all_inner_texts()
            assert len(backfills) == 1  # only the dropped day: 06-01 was before syncing started
            backfill = frame.locator(f".backfill[data-first-day='{DROPPED_DAY}'] pre").inner_text()
            assert f"--from-date {DROPPED_DAY}T03:30:00+05:30" in backfill
            assert '"accounts": {"cloudagent_default": ["Alpha", "Beta"]}' in backfill
            page.screenshot(path=str(tmp_path / "cloudagent-in-airflow.png"))

            # The link of the attempt opens its run in the Airflow UI itself (not inside the frame).
            detail.get_by_role("link", name="run").click()
            page.wait_for_url(f"**/dags/{DAG_ID}/runs/**", timeout=DEADLINE_MS)
            assert errors == []

            direct = _new_page(browser, viewport={"width": 1280, "height": 900})
            direct.context.add_cookies(page.context.cookies())
            direct.goto(f"{stack.state.airflow_url}/cloudagent/?days=5&until={DROPPED_DAY}")
            direct.locator("body[data-loaded='2025-06-01..2025-06-05']").wait_for(timeout=DEADLINE_MS)
            direct.locator(f"#grid button[data-campaign=Beta][data-day='{DROPPED_DAY}']").click()
            direct.locator("#detail:not([hidden])").wait_for(timeout=DEADLINE_MS)
            # Purely cosmetic, for the README picture: the chart's animation settles. Nothing is asserted
            # on it, so there is no state to wait for; a slow machine only gives a less tidy picture.
            direct.wait_for_timeout(500)
            direct.screenshot(path=str(tmp_path / "cloudagent-page.png"), full_page=True)

            # The backfill button posts the command's body to Airflow's API (answered here, not run); then the
            # page refreshes and, Airflow running one backfill of a DAG at a time, says it is running instead
            # of offering another.
            posted: list[dict] = []

            def answer(route: Any) -> None:
                if route.request.method == "GET":
                    running = (
                        [
                            {
                                "id": 7,
                                "dag_id": DAG_ID,
                                "from_date": f"{DROPPED_DAY}T03:30:00+05:30",
                                "to_date": f"{DROPPED_DAY}T03:30:00+05:30",
                                "completed_at": None,
                            }
                        ]
                        if posted
                        else []
                    )
                    route.fulfill(status=200, json={"backfills": running, "total_entries": len(running)})
                    return
                posted.append(route.request.post_data_json)
                route.fulfill(status=200, json={"id": 7})

            direct.route(re.compile(r".*/api/v2/backfills(\?.*)?$"), answer)
            start = direct.locator(f".backfill[data-first-day='{DROPPED_DAY}'] button")
            start.click()
            start.click()  # the second click confirms
            direct.get_by_text("backfill 7 created").wait_for(timeout=DEADLINE_MS)
            running = direct.locator("#active-backfill")
            running.get_by_text("Backfill 7").wait_for(timeout=DEADLINE_MS)
            assert "runs one backfill of a DAG at a time" in running.inner_text()
            assert running.get_by_role("link", name="See its runs").count() == 1
            assert direct.locator(f".backfill[data-first-day='{DROPPED_DAY}'] button").is_disabled()
            assert posted == [
                {"dag_id": DAG_ID, "from_date": f"{DROPPED_DAY}T03:30:00+05:30",
                 "to_date": f"{DROPPED_DAY}T03:30:00+05:30", "reprocess_behavior": "failed",
                 "dag_run_conf": {"accounts": {"cloudagent_default": ["Alpha", "Beta"]}},
                 "max_active_runs": 2}
            ]  # fmt: skip
        finally:
            browser.close()

    # The command shown fits how this Airflow is run: pasted in a plain shell (no CLOUDAGENT_* or AIRFLOW_*
    # setting), the stack's wrapper reaches this Airflow, not an empty ~/airflow.
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDAGENT_", "AIRFLOW"))}
    dry_run = subprocess.run(
        [*shlex.split(backfill), "--dry-run"], env=plain, capture_output=True, text=True,
        timeout=120 + DEADLINE_S, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert dry_run.returncode == 0, dry_run.stdout + dry_run.stderr
    assert f"{DROPPED_DAY}" in dry_run.stdout, dry_run.stdout
    assert "airflow db migrate" not in dry_run.stdout + dry_run.stderr
    if os.environ.get("CLOUDAGENT_UPDATE_SCREENSHOT"):  # the README picture, on demand (CI leaves the tree)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes((tmp_path / "cloudagent-page.png").read_bytes())
    print(f"\nthe dropped-callback run took {run_seconds:.1f} s, the phase {time.monotonic() - began:.1f} s; "
          f"screenshots in {tmp_path}")  # fmt: skip


def _new_page(browser: Any, **options: Any) -> Any:
    """A page whose every wait (actions, locators, navigations) has the tests' one deadline, not
    Playwright's 30 s default: on a busy machine a page can take longer to come, never forever."""
    page = browser.new_page(**options)
    page.set_default_timeout(DEADLINE_MS)
    page.set_default_navigation_timeout(DEADLINE_MS)
    return page


def stop_stops_every_recorded_process_and_removes_the_state(stack: Stack) -> None:
    stopped = stack.localstack("stop")

    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert still_running(stack.state.processes) == []
    assert not stack.settings.state_path.exists()


# A backstop only (612 s seen at load average ~14 with two busy loops): every wait inside has its own limit.
@pytest.mark.timeout(START_WORK_S + 2 * BACKFILL_WORK_S + DROPPED_RUN_WORK_S + 4 * DEADLINE_S)
def test_the_local_stack_answers_backfills_the_ground_truth_once_and_stops_leaving_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    """One test in four phases, in order, on one stack (so that xdist cannot split them)."""
    the_stack_answers_on_loopback_and_a_second_start_starts_nothing(stack)
    a_three_day_backfill_through_the_scheduler_lands_the_ground_truth_once(stack)
    a_dropped_callback_shows_on_the_cloudagent_page_as_missing_with_its_unique_id(stack, tmp_path)
    stop_stops_every_recorded_process_and_removes_the_state(stack)
