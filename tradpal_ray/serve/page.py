"""The read-only HTML page served at ``/``: run selector, leaderboard with its overfitting statistics,
equity chart, live feed status, live traders (positions, PnL, recent fills, divergence from the backtest).

One self-contained document (inline CSS and vanilla JS, the chart drawn as inline SVG): it
loads nothing from elsewhere, which its Content-Security-Policy enforces, and reads the data
from the API routes next to it (relative URLs, so a Serve route prefix works). It sends no
API key itself: off loopback the page and its requests all need ``X-API-Key``, so put a
proxy (or a browser extension) that adds the header in front of the browser.

Query parameters: ``?run=ID`` selects a run (default: the newest), ``&result=ID`` a result
to chart (default: the leaderboard's first row). Stable hooks for tests and scripts:
``#leaderboard[data-run]`` with ``tbody tr[data-result-id]``, ``#overfitting[data-symbols]`` with
``p[data-symbol][data-dsr][data-pbo]`` (the run's DSR and PBO per symbol, and their readings),
``#equity[data-result-id]`` with ``svg[data-points] path``, ``#equity-message``, ``#feeds[data-refreshes]``,
``#traders[data-refreshes]`` with ``tbody tr[data-trader]``, ``#fills tbody tr[data-fill-id]``. A
walk-forward run (``#leaderboard[data-kind="walkforward"]``) shows its folds (``tbody tr[data-fold]``)
and the stitched out-of-sample equity in ``#equity`` instead.
"""

from __future__ import annotations

from fastapi.responses import HTMLResponse

LEADERBOARD_TOP = 20
FEEDS_REFRESH_MS = 2000

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tradpal-ray</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f4f6f9; }
  header { display: flex; gap: 1.5em; align-items: center; padding: .7em 1.2em; background: #1d2330; color: #fff; }
  header h1 { font-size: 1.15em; margin: 0; }
  main { display: grid; grid-template-columns: minmax(0, 1.25fr) minmax(0, 1fr); gap: 1em; padding: 1em 1.2em; }
  section { background: #fff; border-radius: 6px; padding: .6em .9em; box-shadow: 0 1px 2px #0002; overflow-x: auto; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 1em; margin: .2em 0 .5em; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { padding: .25em .45em; text-align: right; border-bottom: 1px solid #e6e9ef; white-space: nowrap; }
  th:nth-child(-n+3), td:nth-child(-n+3) { text-align: left; }
  #leaderboard tbody tr { cursor: pointer; }
  #leaderboard tbody tr:hover { background: #eef3fb; }
  #leaderboard tbody tr.selected { background: #dbe7fb; }
  th.metric, td.metric { font-weight: 600; }
  #equity svg { width: 100%; height: auto; display: block; }
  #equity path.curve { fill: none; stroke: #2764c5; stroke-width: 1.5; }
  #equity line.start { stroke: #999; stroke-dasharray: 4 4; }
  #equity text { font-size: 11px; fill: #555; }
  .message, .muted { color: #6b7383; }
  #error { color: #b00020; }
  #error:empty { display: none; }
  .bad { color: #b00020; font-weight: 600; }
  .good { color: #1b7f3b; }
  #overfitting p { margin: .4em 0 0; }
</style>
</head>
<body>
<header>
  <h1>tradpal-ray</h1>
  <label>Run <select id="run"></select></label>
  <span id="run-info" class="muted"></span>
  <span id="error" role="alert"></span>
</header>
<main>
  <section>
    <h2>Leaderboard <span id="leaderboard-caption" class="muted"></span></h2>
    <table id="leaderboard"><thead></thead><tbody></tbody></table>
    <div id="overfitting" data-symbols="0"></div>
  </section>
  <section>
    <h2>Equity <span id="equity-title" class="muted"></span></h2>
    <div id="equity"><p id="equity-message" class="message">Select a result.</p></div>
  </section>
  <section class="wide">
    <h2>Feeds <span id="feeds-updated" class="muted"></span></h2>
    <table id="feeds" data-refreshes="0"><thead><tr><th>name</th><th>exchange</th><th>mode</th><th>connected</th>
      <th>streams</th><th>messages</th><th>max lag</th><th>reconnects</th><th>last snapshot</th></tr></thead>
      <tbody></tbody></table>
  </section>
  <section class="wide">
    <h2>Traders <span id="traders-updated" class="muted"></span></h2>
    <table id="traders" data-refreshes="0"><thead><tr><th>name</th><th>status</th><th>positions</th><th>realized PnL</th>
      <th>equity</th><th>trades (closed/open)</th><th>last decision</th><th>latency</th><th>divergence</th></tr></thead>
      <tbody></tbody></table>
    <h2>Recent fills</h2>
    <table id="fills"><thead><tr><th>time</th><th>trader</th><th>symbol</th><th>side</th><th>units</th><th>price</th>
      <th>fee</th></tr></thead><tbody></tbody></table>
  </section>
</main>
<script>
"use strict";
const TOP = __TOP__, FEEDS_MS = __FEEDS_MS__, STALE_S = 15, SVG = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  node.append(...children.map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    const error = new Error(`${path}: ${response.status} ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

function fmt(v) {
  if (v === null || v === undefined) return "\\u2013";
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? String(v) : v.toFixed(Math.abs(v) >= 1000 ? 0 : 2);
}
const fmtParams = (p) => Object.entries(p || {}).map(([k, v]) => `${k}=${v}`).join(" ");
const LABELS = { return_pct: "return %", max_drawdown_pct: "max DD %", win_rate_pct: "win %" };
const fmtTime = (ms) => new Date(ms).toISOString().slice(0, 16).replace("T", " ");
const showError = (error) => { $("error").textContent = error ? String(error.message || error) : ""; };

async function loadRuns() {
  const runs = await api("runs");
  const select = $("run");
  select.replaceChildren(...runs.map((r) => el("option", { value: r.run_id },
    `${r.run_id} \\u2014 ${r.strategy} ${r.timeframe || ""} (${r.status})`)));
  if (!runs.length) { $("leaderboard-caption").textContent = "no runs in the store yet"; return; }
  const wanted = params.get("run");
  select.value = runs.some((r) => r.run_id === wanted) ? wanted : runs[0].run_id;
  const kinds = Object.fromEntries(runs.map((r) => [r.run_id, r.kind]));
  const show = (runId, resultId) => {
    $("leaderboard").dataset.kind = kinds[runId];
    return kinds[runId] === "walkforward" ? loadWalkForward(runId) : loadLeaderboard(runId, resultId);
  };
  select.onchange = () => show(select.value, null).catch(showError);
  await show(select.value, params.get("result"));
}

async function loadWalkForward(runId) {
  const doc = await api(`runs/${encodeURIComponent(runId)}/walkforward`);
  const table = $("leaderboard"), summary = doc.summary || {}, oos = summary.oos || {}, goal = doc.objective;
  table.dataset.run = runId;
  table.dataset.metric = goal;
  $("run-info").textContent = `${doc.strategy} \u00b7 walk-forward \u00b7 ${doc.folds.length} folds \u00b7 ` +
    `WFE ${fmt(summary.wfe)} \u00b7 ${goal} OOS/IS ${fmt(summary.objective_ratio)}`;
  $("leaderboard-caption").textContent = `folds: parameters chosen by ${goal} in sample, tested out of sample`;
  const day = (ms) => fmtTime(ms).slice(0, 10);
  table.tHead.replaceChildren(el("tr", {}, ...["fold", "train", "test", "params", `IS ${goal}`, `OOS ${goal}`,
    "OOS return %", "OOS trades"].map((c) => el("th", {}, c))));
  table.tBodies[0].replaceChildren(...doc.folds.map((f) => el("tr", { "data-fold": f.fold }, el("td", {}, f.fold),
    el("td", {}, `${day(f.train_from)} \u2013 ${day(f.train_to)}`), el("td", {}, `${day(f.test_from)} \u2013 ${day(f.test_to)}`),
    el("td", {}, f.candidates ? fmtParams(f.params) : "none fits"), el("td", { class: "metric" }, fmt(f.is_objective)),
    el("td", {}, fmt(f.oos_objective)), el("td", {}, fmt(f.oos_return_pct)), el("td", {}, fmt(f.oos_trades)))));
  const box = $("equity");
  box.dataset.resultId = "";
  $("equity-title").textContent = `stitched out-of-sample equity \u00b7 return ${fmt(oos.return_pct)} % \u00b7 ` +
    `Sharpe ${fmt(oos.sharpe)} \u00b7 max DD ${fmt(oos.max_drawdown_pct)} %`;
  box.replaceChildren(chart(doc.equity.time, doc.equity.equity));
}

async function loadLeaderboard(runId, resultId) {
  const board = await api(`runs/${encodeURIComponent(runId)}/leaderboard?top=${TOP}`);
  const table = $("leaderboard"), metric = board.metric;
  const columns = [metric, ...["return_pct", "sharpe", "max_drawdown_pct", "trades", "win_rate_pct"].filter((c) => c !== metric)];
  table.dataset.run = runId;
  table.dataset.metric = metric;
  $("run-info").textContent = `${board.strategy} \\u00b7 ${board.timeframe || ""} \\u00b7 ${board.total} results`;
  $("leaderboard-caption").textContent = `top ${board.results.length} by ${metric}`;
  table.tHead.replaceChildren(el("tr", {}, el("th", {}, "#"), el("th", {}, "symbol"), el("th", {}, "params"),
    ...columns.map((c, i) => el("th", i ? { title: c } : { class: "metric", title: c }, LABELS[c] || c))));
  table.tBodies[0].replaceChildren(...board.results.map((row, i) => {
    const tr = el("tr", { "data-result-id": row.result_id }, el("td", {}, i + 1), el("td", {}, row.symbol),
      el("td", {}, fmtParams(row.params)), ...columns.map((c, j) => el("td", j ? {} : { class: "metric" }, fmt(row[c]))));
    tr.onclick = () => loadEquity(runId, row).catch(showError);
    return tr;
  }));
  showOverfitting(board.overfitting || {});
  const chosen = board.results.find((r) => r.result_id === resultId) || board.results[0];
  if (chosen) await loadEquity(runId, chosen);
  else $("equity").replaceChildren(el("p", { id: "equity-message", class: "message" }, "No results in this run yet."));
}

function showOverfitting(stats) {
  const box = $("overfitting"), symbols = Object.keys(stats);
  box.dataset.symbols = symbols.length;
  box.replaceChildren(...symbols.map((symbol) => {
    const s = stats[symbol];
    return el("p", { "data-symbol": symbol, "data-dsr": fmt(s.dsr), "data-pbo": fmt(s.pbo) },
      el("b", {}, `${symbol} \u00b7 DSR ${fmt(s.dsr)} \u00b7 PBO ${fmt(s.pbo)}`), el("br"),
      el("span", { class: "reading-dsr" }, s.reading_dsr), el("br"),
      el("span", { class: "reading-pbo" }, s.reading_pbo));
  }));
}

async function loadEquity(runId, row) {
  for (const tr of $("leaderboard").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.resultId === row.result_id);
  const box = $("equity");
  box.dataset.resultId = row.result_id;
  $("equity-title").textContent = `${row.symbol} \\u00b7 ${fmtParams(row.params)}`;
  try {
    const doc = await api(`runs/${encodeURIComponent(runId)}/results/${row.result_id}/equity`);
    if (box.dataset.resultId !== row.result_id) return;  // another row was clicked meanwhile
    box.replaceChildren(chart(doc.equity.time, doc.equity.equity), el("p", { class: "muted" }, `${doc.trades.length} trades`));
  } catch (error) {
    if (error.status !== 404) throw error;
    box.replaceChildren(el("p", { id: "equity-message", class: "message" },
      "No equity curve stored for this result: a run keeps the details of its best few results per symbol only."));
  }
}

function chart(times, values) {
  const W = 640, H = 300, L = 64, R = 12, T = 12, B = 28, n = values.length;
  if (n < 2) return el("p", { id: "equity-message", class: "message" }, "Not enough points to draw.");
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, "data-points": n, role: "img", "aria-label": "equity curve" });
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (hi === lo) { lo -= 1; hi += 1; }
  const x = (i) => L + (i / (n - 1)) * (W - L - R), y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  let d = "";
  for (let i = 0; i < n; i++) d += `${i ? "L" : "M"}${x(i).toFixed(1)},${y(values[i]).toFixed(1)}`;
  svg.append(
    el("svg:line", { class: "start", x1: L, x2: W - R, y1: y(values[0]), y2: y(values[0]) }),
    el("svg:path", { class: "curve", d }),
    el("svg:text", { x: L - 6, y: T + 10, "text-anchor": "end" }, fmt(hi)),
    el("svg:text", { x: L - 6, y: H - B, "text-anchor": "end" }, fmt(lo)),
    el("svg:text", { x: L, y: H - 8 }, fmtTime(times[0])),
    el("svg:text", { x: W - R, y: H - 8, "text-anchor": "end" }, fmtTime(times[n - 1])),
  );
  return svg;
}

async function refreshFeeds() {
  try {
    const feeds = await api("feeds");
    const table = $("feeds"), now = Date.now();
    table.tBodies[0].replaceChildren(...(feeds.length ? feeds.map((f) => {
      const streams = f.streams || [], lags = streams.map((s) => s.lag_ms).filter((v) => v !== null && v !== undefined);
      const age = f.now_ms ? (now - f.now_ms) / 1000 : null;
      return el("tr", { "data-feed": f.name }, el("td", {}, f.name), el("td", {}, fmt(f.exchange)), el("td", {}, fmt(f.mode)),
        el("td", { class: f.connected ? "good" : "bad" }, f.connected ? "yes" : "no"), el("td", {}, streams.length),
        el("td", {}, streams.reduce((sum, s) => sum + (s.messages || 0), 0)),
        el("td", {}, lags.length ? `${(Math.max(...lags) / 1000).toFixed(1)} s` : "\\u2013"), el("td", {}, fmt(f.reconnects)),
        el("td", { class: age !== null && age > STALE_S ? "bad" : "" },
          age === null ? "\\u2013" : age < 3600 ? `${age.toFixed(0)} s` : fmtTime(f.now_ms)));
    }) : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no feeds reported yet"))]));
    table.dataset.refreshes = Number(table.dataset.refreshes) + 1;
    $("feeds-updated").textContent = `updated ${new Date(now).toLocaleTimeString()}`;
    if ($("error").textContent.startsWith("feeds")) showError(null);
  } catch (error) {
    showError(error);
  }
  setTimeout(refreshFeeds, FEEDS_MS);
}

const fmtPosition = (p) => `${p.symbol} ${fmt(p.units)} @ ${fmt(p.entry_price)}`;
const fmtDivergence = (d) => !d ? "\\u2013" : Object.entries(d).filter(([k]) => k !== "time_ms").map(([k, v]) => `${k} ${fmt(v)}`).join(", ");

async function refreshTraders() {
  const table = $("traders"), fills = $("fills");
  try {
    const view = await api("live/traders");
    table.tBodies[0].replaceChildren(...(view.traders.length ? view.traders.map((t) => el("tr", { "data-trader": t.name },
      el("td", {}, t.name), el("td", { class: t.status === "halted" ? "bad" : "", title: t.reason || "" }, fmt(t.status)),
      el("td", {}, t.positions.filter((p) => p.units).map(fmtPosition).join(", ") || "flat"),
      el("td", { class: t.realized_pnl < 0 ? "bad" : "good" }, fmt(t.realized_pnl)),
      el("td", {}, t.equity ? fmt(t.equity.equity) : "\\u2013"), el("td", {}, `${t.trades.closed}/${t.trades.open}`),
      el("td", {}, t.last_decision ? fmtTime(t.last_decision.time_ms) : "\\u2013"),
      el("td", {}, t.last_decision && t.last_decision.latency_ms !== null ? `${fmt(t.last_decision.latency_ms)} ms` : "\\u2013"),
      el("td", {}, fmtDivergence(t.divergence))))
      : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no traders in the ledger yet"))]));
    fills.tBodies[0].replaceChildren(...view.recent_fills.map((f) => el("tr", { "data-fill-id": f.fill_id },
      el("td", {}, fmtTime(f.time_ms)), el("td", {}, f.trader), el("td", {}, f.symbol), el("td", {}, f.side),
      el("td", {}, fmt(f.units)), el("td", {}, fmt(f.price)), el("td", {}, fmt(f.fee)))));
    $("traders-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {  // no ledger here (e.g. a remote store without TRADPAL_DB_URL): say so in place
    table.tBodies[0].replaceChildren(el("tr", {}, el("td", { colspan: 9, class: "muted" }, String(error.message || error))));
  }
  table.dataset.refreshes = Number(table.dataset.refreshes) + 1;
  setTimeout(refreshTraders, FEEDS_MS);
}

loadRuns().catch(showError);
refreshFeeds();
refreshTraders();
</script>
</body>
</html>
""".replace("__TOP__", str(LEADERBOARD_TOP)).replace("__FEEDS_MS__", str(FEEDS_REFRESH_MS))
"""The page (the two placeholders are filled once, at import)."""


def page_response() -> HTMLResponse:
    """The page with a Content-Security-Policy that forbids loading anything from elsewhere."""
    return HTMLResponse(PAGE_HTML, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"})
