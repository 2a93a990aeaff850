// The CloudAgent page: fetches api/status (same origin, Airflow's session cookie) and draws it.
// Every value goes into the page as text (textContent), never as HTML.
"use strict";

const IST = new Intl.DateTimeFormat("en-CA", {
  timeZone: "Asia/Kolkata", year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", hour12: false,
});
const NUMBER = new Intl.NumberFormat("en-US");

// The Airflow UI's base: this page is served at <base>cloudagent/.
const AIRFLOW_BASE = (() => {
  const path = window.location.pathname;
  const at = path.lastIndexOf("/cloudagent/");
  return at >= 0 ? path.slice(0, at + 1) : "/";
})();

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function ist(iso) {
  if (!iso) return "";
  const parts = Object.fromEntries(IST.formatToParts(new Date(iso)).map((p) => [p.type, p.value]));
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}`;
}

function plural(n, word) {
  return `${NUMBER.format(n)} ${word}${n === 1 ? "" : "s"}`;
}

// Airflow's own pages: inside the UI (an iframe of the same origin) the UI's router is moved, since the
// frame may not navigate the top window itself; opened on its own, the link is followed.
function airflowLink(path, text) {
  const href = AIRFLOW_BASE + path;
  return el("a", {
    href,
    onclick: (event) => {
      try {
        if (window.top === window || window.top.location.origin !== window.location.origin) return;
        const history = window.top.history;
        history.pushState({ usr: null, key: Math.random().toString(36).slice(2, 10),
          idx: ((history.state && history.state.idx) || 0) + 1 }, "", href);
        window.top.dispatchEvent(new PopStateEvent("popstate", { state: history.state }));
        event.preventDefault();
      } catch (_error) {
        // not reachable: follow the link inside the frame
      }
    },
  }, text);
}

function runLink(dagId, runId, text) {
  return airflowLink(`dags/${encodeURIComponent(dagId)}/runs/${encodeURIComponent(runId)}`, text || runId);
}

function taskLink(dagId, runId) {
  return airflowLink(
    `dags/${encodeURIComponent(dagId)}/runs/${encodeURIComponent(runId)}/tasks/campaign.wait_for_callback/mapped`,
    "tasks",
  );
}

function cellCounts(cell) {
  const loads = cell.loads;
  if (cell.state === "loaded") {
    const changes = [`${NUMBER.format(loads.inserted)} new`];
    if (loads.updated) changes.push(`${NUMBER.format(loads.updated)} upd`);
    if (loads.rejected) changes.push(`${NUMBER.format(loads.rejected)} rej`);
    return [plural(loads.records, "record"), changes.join(" · ")];
  }
  if (cell.state === "never_requested") return ["no request"];
  if (cell.state === "before_start") return ["not synced yet"];
  if (cell.state === "rejected") return ["fix the setting"];
  const lines = [plural(cell.requests, "request")];
  if (cell.expired) lines.push(`${cell.expired} expired`);
  if (cell.failed) lines.push(`${cell.failed} failed`);
  return lines;
}

function cellTitle(cell) {
  const lines = [`${cell.row} · ${cell.day}: ${cell.label}`,
    `window ${ist(cell.window_start)} .. ${ist(cell.window_end)} IST`];
  if (cell.state === "loaded" || cell.loads.loads) {
    const l = cell.loads;
    lines.push(`${plural(l.loads, "load")}: ${NUMBER.format(l.records)} records, ${l.inserted} inserted, `
      + `${l.updated} updated, ${l.unchanged} unchanged, ${l.rejected} rejected, ${l.seconds.toFixed(1)} s`);
  }
  for (const a of cell.attempts) {
    lines.push(`attempt ${a.attempt}: ${a.state}, uniqueId ${a.unique_id || "none"}`
      + (a.error ? ` — ${a.error}` : ""));
  }
  if (cell.late_payloads) lines.push(`${plural(cell.late_payloads, "late payload")}`);
  if (cell.rejection) lines.push(cell.rejection);
  return lines.join("\n");
}

function renderLegend(states) {
  const legend = document.getElementById("legend");
  legend.replaceChildren(...Object.entries(states).map(
    ([state, label]) => el("li", { dataset: { state } }, label)));
}

function renderGrid(data) {
  const byKey = new Map(data.cells.map((c) => [`${c.row}\u0000${c.day}`, c]));
  const head = el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "campaign"),
    data.days.map((day) => el("th", { scope: "col" }, day.slice(5)))));
  // With several accounts, each account's campaigns under a row naming its connection.
  const grouped = data.accounts.length > 1;
  const rows = data.rows.flatMap((row, index) => [
    ...(grouped && (index === 0 || data.rows[index - 1].account !== row.account)
      ? [el("tr", { class: "account", dataset: { account: row.account } },
        el("th", { scope: "rowgroup", colspan: data.days.length + 1 }, `account ${row.account}`))]
      : []),
    rowOf(row.label)]);
  function rowOf(campaign) {
    return el("tr", {}, el("th", { scope: "row" }, campaign), data.days.map((day) => {
      const cell = byKey.get(`${campaign}\u0000${day}`);
      const button = el("button", {
        type: "button", title: cellTitle(cell), "aria-label": `${campaign} ${day}: ${cell.label}`,
        dataset: { state: cell.state, campaign, day },
        onclick: () => showDetail(data, cell, button),
      }, el("span", { class: "state" }, cell.label),
      cellCounts(cell).map((line) => el("span", { class: "count" }, line)));
      return el("td", { dataset: { state: cell.state, campaign, day } }, button);
    }));
  }
  const grid = document.getElementById("grid");
  grid.replaceChildren(head, el("tbody", {}, rows));
  if (!data.rows.length) {
    grid.replaceChildren(el("tbody", {}, el("tr", {}, el("td", {},
      "No campaign configured (Variable cloudagent_accounts or cloudagent_campaigns) and no export request "
      + "in these days."))));
  }
}

function showDetail(data, cell, button) {
  document.querySelectorAll(".grid button.selected").forEach((b) => b.classList.remove("selected"));
  button.classList.add("selected");
  const detail = document.getElementById("detail");
  const header = el("h3", {}, `${cell.row} · ${cell.day} · `,
    el("span", { class: "badge", dataset: { state: cell.state } }, cell.label));
  const window_ = el("p", { class: "muted" },
    `window ${ist(cell.window_start)} .. ${ist(cell.window_end)} IST`,
    cell.late_payloads ? ` · ${plural(cell.late_payloads, "late payload")}` : "");
  const rejection = cell.rejection ? el("p", { class: "rejection" }, cell.rejection) : null;
  if (!cell.attempts.length) {
    const none = cell.state === "before_start"
      ? "Syncing of this campaign started later: this day is not missing (the Variable cloudagent_sync_start "
        + "sets the first day)."
      : "No export request was made for this day.";
    detail.replaceChildren(header, window_, ...(rejection ? [rejection] : []), el("p", {}, none));
  } else {
    const columns = ["attempt", "uniqueId", "state", "requested", "received", "settled", "deadline", "loads",
      "run"];
    const rows = cell.attempts.flatMap((a) => {
      const l = a.loads;
      const loads = l.loads || l.failed_loads
        ? `${plural(l.records, "record")}: ${l.inserted} new, ${l.updated} updated, ${l.unchanged} unchanged, `
          + `${l.rejected} rejected (${l.seconds.toFixed(1)} s)` + (l.failed_loads ? `, ${l.failed_loads} failed` : "")
        : "none";
      const row = el("tr", { dataset: { requestId: a.request_id } },
        el("td", { class: "num" }, a.attempt),
        el("td", { class: "unique-id" }, a.unique_id || "none"),
        el("td", {}, el("span", { class: "badge", dataset: { state: a.state } }, a.state)),
        el("td", { class: "time" }, ist(a.requested_at || a.created_at)),
        el("td", { class: "time" }, ist(a.received_at)),
        el("td", { class: "time" }, ist(a.settled_at)),
        el("td", { class: "time" }, ist(a.callback_deadline)),
        el("td", { class: "loads" }, loads),
        el("td", { class: "time" },
          a.dag_id && a.run_id ? [runLink(a.dag_id, a.run_id, "run"), " · ", taskLink(a.dag_id, a.run_id)] : ""));
      const extra = [a.error, a.late_payloads ? `${plural(a.late_payloads, "late payload")}` : ""].filter(Boolean);
      return extra.length
        ? [row, el("tr", { class: "error-row" }, el("td", {}), el("td", { class: "error-text", colspan: 8 },
          extra.join(" · ")))]
        : [row];
    });
    const table = el("table", { class: "rows attempts" },
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c)))), el("tbody", {}, rows));
    detail.replaceChildren(header, window_, ...(rejection ? [rejection] : []), el("div", { class: "scroll" }, table));
  }
  detail.hidden = false;
}

// Airflow runs one backfill of a DAG at a time: the active one (not completed), or null.
async function activeBackfill(dagId) {
  try {
    const response = await fetch(`${AIRFLOW_BASE}api/v2/backfills?dag_id=${encodeURIComponent(dagId)}&limit=100`,
      { credentials: "same-origin" });
    if (!response.ok) return null;
    const answer = await response.json();
    return (answer.backfills || []).find((b) => !b.completed_at) || null;
  } catch (_error) {
    return null;
  }
}

function renderRejected(data) {
  const list = document.getElementById("rejected");
  list.replaceChildren(...data.rejected.map((r) => el("li", { dataset: { account: r.account, campaign: r.campaign } },
    el("strong", {}, r.label), ": ", r.message || "rejected by CloudAgent")));
  list.hidden = !data.rejected.length;
}

function renderMissing(data, active) {
  const summary = document.getElementById("missing-summary");
  summary.textContent = data.missing
    ? `${plural(data.missing, "campaign-day")} not loaded in these days.`
      + (data.backfills.length ? " These backfills re-run the expired, failed and never requested ones"
        + " (days whose run succeeded are left alone):" : " They are on their way (requested or received).")
    : "Nothing missing: every campaign is loaded on every day shown.";
  renderRejected(data);
  const running = document.getElementById("active-backfill");
  running.hidden = !active;
  if (active) {
    running.replaceChildren(
      `Backfill ${active.id} (${ist(active.from_date)} .. ${ist(active.to_date)} IST) is still running: Airflow `
      + "runs one backfill of a DAG at a time, so another can start once it has finished. ",
      airflowLink(`dags/${encodeURIComponent(data.dag_id)}/runs`, "See its runs"), ".");
  }
  const list = document.getElementById("backfills");
  list.replaceChildren(...data.backfills.map((b) => {
    const result = el("span", { class: "muted", role: "status" });
    const start = el("button", { type: "button", disabled: Boolean(active) }, "Start this backfill");
    start.addEventListener("click", async () => {
      if (start.dataset.armed !== "1") {
        start.dataset.armed = "1";
        start.classList.add("danger");
        start.textContent = `Confirm: backfill ${b.labels.join(", ")} for ${b.first_day} .. ${b.last_day}`;
        return;
      }
      start.disabled = true;
      result.textContent = " starting…";
      try {
        const response = await fetch(`${AIRFLOW_BASE}api/v2/backfills`, {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json" }, body: JSON.stringify(b.api_body),
        });
        const answer = await response.json().catch(() => ({}));
        result.replaceChildren(response.ok
          ? el("span", {}, ` backfill ${answer.id} created: `, airflowLink(
            `dags/${encodeURIComponent(data.dag_id)}/runs`, "see the runs"))
          : ` Airflow answered ${response.status}: ${typeof answer.detail === "string" ? answer.detail : ""}`);
        if (response.ok) await load({ keep: result });  // the page shows the backfill as running
      } catch (error) {
        result.textContent = ` could not reach Airflow: ${error}`;
      }
    });
    return el("div", { class: "backfill", dataset: { firstDay: b.first_day, lastDay: b.last_day } },
      el("div", {}, `${b.first_day} .. ${b.last_day}: ${b.labels.join(", ")}`),
      el("pre", { class: "command" }, b.command), start, result);
  }));
}

function renderChart(data) {
  const chart = document.getElementById("chart");
  if (typeof Plotly === "undefined") {
    chart.textContent = "The chart library did not load.";
    return;
  }
  const series = [...new Set(data.answer_rates.map((r) => r.series))];
  const traces = series.map((name) => {
    const points = data.answer_rates.filter((r) => r.series === name);
    return {
      name, type: "scatter", mode: "lines+markers",
      x: points.map((p) => p.day), y: points.map((p) => Math.round(p.answer_rate * 1000) / 10),
      customdata: points.map((p) => [p.answered, p.leads]),
      hovertemplate: "%{x}: %{y}% (%{customdata[0]} of %{customdata[1]} leads)<extra>%{fullData.name}</extra>",
    };
  });
  if (!traces.length) {
    Plotly.purge(chart);
    chart.textContent = "No leads in the warehouse for these days.";
    return;
  }
  chart.textContent = "";
  Plotly.react(chart, traces, {
    margin: { l: 50, r: 20, t: 10, b: 40 },
    xaxis: { type: "date", range: [data.days[0], data.days[data.days.length - 1]], tickformat: "%m-%d",
      dtick: 86400000 * Math.max(1, Math.ceil(data.days.length / 14)) },
    yaxis: { title: { text: "answered (%)" }, range: [0, 100] },
    legend: { orientation: "h" },
  }, { displaylogo: false, responsive: true });
}

function renderLoads(data) {
  const columns = ["day", "campaign", "state", "requests", "loads", "records", "inserted", "updated",
    "unchanged", "rejected", "load s", "last load", "run"];
  const numeric = new Set(["requests", "loads", "records", "inserted", "updated", "unchanged", "rejected",
    "load s"]);
  // Only cells something was requested for: a never-requested cell has no numbers to show.
  const requested = data.cells.filter((c) => c.requests > 0);
  const rows = requested.sort((a, b) => (a.day === b.day ? 0 : a.day < b.day ? 1 : -1)).map((c) => {
    const last = c.attempts[c.attempts.length - 1];
    return el("tr", { dataset: { campaign: c.row, day: c.day, state: c.state } },
      el("td", {}, c.day), el("td", {}, c.row),
      el("td", {}, el("span", { class: "badge", dataset: { state: c.state } }, c.label)),
      el("td", { class: "num" }, c.requests), el("td", { class: "num" }, c.loads.loads),
      ["records", "inserted", "updated", "unchanged", "rejected"].map(
        (k) => el("td", { class: "num", dataset: { column: k } }, NUMBER.format(c.loads[k]))),
      el("td", { class: "num" }, c.loads.seconds.toFixed(1)),
      el("td", { class: "time" }, ist(c.loads.last_loaded_at)),
      el("td", {}, last && last.dag_id && last.run_id ? runLink(last.dag_id, last.run_id, "run") : ""));
  });
  document.getElementById("loads").replaceChildren(
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { class: numeric.has(c) ? "num" : null }, c)))),
    el("tbody", {}, rows));
}

function renderRejects(data) {
  const table = document.getElementById("rejects");
  if (!data.rejects.length) {
    table.replaceChildren(el("tbody", {}, el("tr", {}, el("td", {}, "No rejected record in these days."))));
    return;
  }
  table.replaceChildren(
    el("thead", {}, el("tr", {}, el("th", { class: "num" }, "records"), el("th", {}, "campaigns"),
      el("th", {}, "last rejected (IST)"), el("th", {}, "reason"))),
    el("tbody", {}, data.rejects.map((r) => el("tr", {},
      el("td", { class: "num" }, NUMBER.format(r.records)), el("td", {}, r.campaigns.join(", ")),
      el("td", {}, ist(r.last_rejected_at)), el("td", { class: "reason" }, r.reason)))));
}

async function load(options) {
  const form = document.getElementById("range");
  const params = new URLSearchParams();
  params.set("days", form.days.value || "14");
  if (form.until.value) params.set("until", form.until.value);
  const error = document.getElementById("error");
  document.body.dataset.loading = "1";
  try {
    const response = await fetch(`api/status?${params}`, { credentials: "same-origin" });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      throw new Error(`${response.status}: ${typeof answer.detail === "string" ? answer.detail : "error"}`);
    }
    const data = await response.json();
    const active = await activeBackfill(data.dag_id);
    error.hidden = true;
    if (!form.until.value) form.until.value = data.days[data.days.length - 1];
    document.getElementById("generated").textContent = `as of ${ist(data.generated_at)} IST`;
    renderLegend(data.states);
    renderGrid(data);
    document.getElementById("detail").hidden = true;
    renderMissing(data, active);
    if (options && options.keep) {
      // The message of the backfill just started stays in view after the refresh.
      document.getElementById("active-backfill").append(" ", options.keep);
    }
    renderChart(data);
    renderLoads(data);
    renderRejects(data);
    document.body.dataset.loaded = `${data.days[0]}..${data.days[data.days.length - 1]}`;
  } catch (failure) {
    error.textContent = `Could not load the status: ${failure.message}`;
    error.hidden = false;
  } finally {
    delete document.body.dataset.loading;
  }
}

// A deferred script: the document is parsed when this runs. The form's button stays disabled until the
// handler is in place (a native submission would only be refused by the page's policy).
(() => {
  const form = document.getElementById("range");
  const query = new URLSearchParams(window.location.search);
  if (query.get("days")) form.days.value = query.get("days");
  if (query.get("until")) form.until.value = query.get("until");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  form.querySelector("button[type=submit]").disabled = false;
  load();
})();
