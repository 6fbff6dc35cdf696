// vsm-pool dashboard: one page, four views, all data through the daemon's JSON-RPC API
// (the same methods as the CLI), authenticated by the session cookie plus the CSRF header.
"use strict";

const CSRF = document.querySelector('meta[name="vsm-csrf"]').content;
const LEVEL = document.querySelector('meta[name="vsm-level"]').content;
// executors.LATENCY_BOUNDS: power-of-two bucket bounds, 2^-14 s .. 2^6 s, then +Inf
const BOUNDS = Array.from({ length: 21 }, (_, i) => Math.pow(2, i - 14));
const POLL_MS = 2000;
let rpcId = 0;
let timer = null;
let previous = null; // the last status, for calls/s
const charts = {};

async function rpc(method, params) {
  const r = await fetch("/rpc/v0", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-VSM-CSRF": CSRF },
    body: JSON.stringify({ jsonrpc: "2.0", id: ++rpcId, method, params: params || {} }),
  });
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  const text = await r.text();
  let reply;
  try { reply = JSON.parse(text); } catch (e) { throw new Error(`${r.status}: ${text.trim()}`); }
  if (reply.error) throw new Error(reply.error.message || JSON.stringify(reply.error));
  return reply.result;
}

function esc(v) {
  return String(v === null || v === undefined ? "" : v)
    .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function badge(text, cls) { return `<span class="badge ${cls}">${esc(text)}</span>`; }

function quantile(counts, q) {
  const total = (counts || []).reduce((a, b) => a + b, 0);
  if (!total) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    const n = counts[i];
    if (n && seen + n >= rank) {
      if (i >= BOUNDS.length) return BOUNDS[BOUNDS.length - 1];
      const lo = i ? BOUNDS[i - 1] : 0;
      return lo + (BOUNDS[i] - lo) * ((rank - seen) / n);
    }
    seen += n;
  }
  return BOUNDS[BOUNDS.length - 1];
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  return seconds < 0.001 ? `${(seconds * 1e6).toFixed(0)} µs` : seconds < 1 ? `${(seconds * 1000).toFixed(1)} ms` : `${seconds.toFixed(2)} s`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 120) return `${Number(seconds).toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

// ---- health: every broken or degraded part, as the daemon names it (status.problems) ---

const SINK_OK = new Set(["running"]);
// the daemon's states of a problem (vsm/server/problems.py) that a part comes back from alone,
// or that an operator chose; the rest are broken
const WARN_STATES = new Set(["degraded", "backoff", "held", "disabled", "starting"]);

function problems(st) {
  return (st.problems || []).map((p) => [
    WARN_STATES.has(p.state) ? "warn" : "bad",
    `${p.part}: ${p.state}${p.cause ? ": " + p.cause : ""}${p.fix ? " — fix: " + p.fix : ""}`,
  ]);
}

function showHealth(list) {
  const el = document.getElementById("health");
  const bad = list.some(([k]) => k === "bad");
  el.className = "badge " + (bad ? "bad" : list.length ? "warn" : "ok");
  el.textContent = bad ? `BROKEN: ${list.length} problem(s)` : list.length ? `DEGRADED: ${list.length} problem(s)` : "OK";
}

// ---- overview -------------------------------------------------------------------------

async function overview(main) {
  const st = await rpc("status");
  const now = performance.now();
  const list = problems(st);
  showHealth(list);
  const rate = (p) => {
    if (!previous || !p.pool) return "-";
    const old = (previous.st.plugins || []).find((q) => q.kind === p.kind && q.name === p.name);
    if (!old || !old.pool) return "-";
    const dt = (now - previous.t) / 1000;
    return dt > 0 ? ((p.pool.calls - old.pool.calls) / dt).toFixed(1) : "-";
  };
  const d = st.daemon || {};
  let h = `<section id="daemon"><h2>Daemon</h2><p>pid ${esc(d.pid)} · listening on ${esc(d.listen)} · home ${esc(d.home)} · logged in as ${esc(LEVEL)}</p>`;
  h += list.length ? `<ul class="problems" id="problems">${list.map(([k, t]) => `<li class="${k}">${esc(t)}</li>`).join("")}</ul>` : `<p class="muted" id="problems">Nothing is broken or behind.</p>`;
  h += `</section><section id="pools"><h2>Plugin pools</h2><table><thead><tr><th>plugin</th><th>state</th><th>workers (pid)</th>
    <th class="num">restarts</th><th class="num">calls/s</th><th class="num">calls</th><th class="num">errors</th><th class="num">p50</th><th class="num">p99</th><th>environment, limits</th><th>last error</th></tr></thead><tbody>`;
  for (const p of st.plugins || []) {
    const pool = p.pool || {};
    const state = pool.state && p.state === "ready" ? pool.state : p.state;
    const cls = state === "ready" ? "ok" : state === "failed" || (p.error && !/^disabled by/.test(p.error)) ? "bad" : state === "loaded" ? "" : "warn";
    const workers = (pool.workers || []).map((w) => `<span class="mono" data-pid="${esc(w.pid)}">${esc(w.pid)}${w.alive === false ? " (down)" : ""}</span>`).join(", ");
    const extra = ["environment", "env", "limits", "sandbox"].filter((k) => p[k]).map((k) => `${k}: ${esc(typeof p[k] === "string" ? p[k] : JSON.stringify(p[k]))}`).join("<br>");
    h += `<tr data-plugin="${esc(p.name)}"><td>${esc(p.kind)}/<b>${esc(p.name)}</b> <span class="muted">${esc(p.version)}</span></td>
      <td>${badge(state, cls)}</td><td>${workers || "-"}</td><td class="num restarts">${esc(pool.restarts ?? "-")}</td>
      <td class="num">${rate(p)}</td><td class="num">${esc(pool.calls ?? "-")}</td><td class="num">${esc(pool.errors ?? "-")}</td>
      <td class="num">${ms(quantile(pool.latency_buckets, 0.5))}</td><td class="num">${ms(quantile(pool.latency_buckets, 0.99))}</td>
      <td class="mono">${extra || "-"}</td><td class="error">${esc(p.error || pool.last_error || "")}</td></tr>`;
  }
  h += `</tbody></table></section>`;
  const sectors = st.sectors || {};
  h += `<section id="sinks"><h2>Sinks</h2><table><thead><tr><th>sink</th><th>state</th><th class="num">checkpoint</th><th class="num">lag (events)</th><th class="num">lag (time)</th><th class="num">delivered</th><th>last error</th></tr></thead><tbody>`;
  for (const [name, s] of Object.entries(sectors.sinks || {})) {
    const state = s.needs_rebuild ? "needs rebuild" : s.attached === false ? "detached" : s.state;
    const cls = s.needs_rebuild ? "bad" : s.attached === false ? "warn" : SINK_OK.has(s.state) ? (s.last_error ? "warn" : "ok") : "bad";
    h += `<tr data-sink="${esc(name)}"><td><b>${esc(name)}</b></td><td>${badge(state, cls)}</td><td class="num">${esc(s.checkpoint)}</td>
      <td class="num lag">${esc(s.lag)}</td><td class="num">${s.lag ? duration(s.lag_seconds) : "0"}</td><td class="num">${esc(s.delivered_rows ?? "")}</td><td class="error">${esc(s.last_error || "")}</td></tr>`;
  }
  const j = sectors.journal || {};
  h += `</tbody></table></section><section id="journal"><h2>Journal</h2><p>head seq ${esc(j.head)} · durable ${esc(j.durable)} · watermark ${esc(j.watermark)} · ${esc(j.frames)} frames in ${esc(j.segments)} segments ·
    ${j.broken ? badge("broken: " + j.broken, "bad") : badge("ok", "ok")}</p></section>`;
  h += `<section id="stores"><h2>Stores</h2><table><thead><tr><th>store</th><th>plugin</th><th>state</th><th>error</th></tr></thead><tbody>`;
  for (const [name, s] of Object.entries(st.stores || {})) {
    h += `<tr data-store="${esc(name)}"><td>${esc(name)}</td><td>${esc(s.plugin || "")}</td><td>${badge(s.state, s.state === "ready" ? "ok" : s.state === "starting" ? "warn" : "bad")}</td><td class="error">${esc(s.error || "")}</td></tr>`;
  }
  main.innerHTML = h + `</tbody></table></section>`;
  previous = { st, t: now };
}

// ---- charts ---------------------------------------------------------------------------

function chart(id, type, labels, datasets, opts) {
  if (charts[id]) charts[id].destroy();
  const canvas = document.getElementById(id);
  if (!canvas || !window.Chart) return;
  charts[id] = new Chart(canvas, {
    type,
    data: { labels, datasets },
    options: Object.assign({ responsive: true, maintainAspectRatio: false, animation: false, plugins: { legend: { display: datasets.length > 1 } } }, opts || {}),
  });
}

function column(result, name) {
  const i = result.columns.indexOf(name);
  return result.rows.map((r) => r[i]);
}

function tableHtml(result, limit) {
  const rows = result.rows.slice(0, limit || 500);
  return `<div class="scroll"><table><thead><tr>${result.columns.map((c) => `<th>${esc(c)}</th>`).join("")}</tr></thead><tbody>
    ${rows.map((r) => `<tr>${r.map((v) => `<td>${esc(typeof v === "object" && v !== null ? JSON.stringify(v) : v)}</td>`).join("")}</tr>`).join("")}
    </tbody></table></div>${result.rows.length > rows.length ? `<p class="muted">${result.rows.length - rows.length} more rows not shown</p>` : ""}`;
}

async function sectors(main) {
  const a = await rpc("sectors.analytics");
  const total = (a.by_state.rows || []).reduce((n, r) => n + Number(r[1]), 0);
  const err = (k) => (a[k].error ? `<p class="error">${esc(a[k].error)}</p>` : "");
  main.innerHTML = `<div class="grid">
    <section data-chart="by_state" data-total="${total}"><h2>Sectors by state (${total})</h2>${err("by_state")}<div class="chart"><canvas id="c-state"></canvas></div></section>
    <section data-chart="by_miner"><h2>Sectors by miner</h2>${err("by_miner")}<div class="chart"><canvas id="c-miner"></canvas></div></section>
    <section data-chart="events_per_hour" data-events="${(a.events_per_hour.rows || []).reduce((n, r) => n + Number(r[1]), 0)}"><h2>Events per hour</h2>${err("events_per_hour")}<div class="chart"><canvas id="c-hour"></canvas></div></section>
    <section data-chart="time_in_state"><h2>Time spent in each state (average)</h2>${err("time_in_state")}<div class="chart"><canvas id="c-time"></canvas></div></section>
    </div><section data-chart="slowest"><h2>Slowest sectors (first to last event)</h2>${err("slowest")}${tableHtml(a.slowest)}</section>`;
  chart("c-state", "bar", column(a.by_state, "state"), [{ label: "sectors", data: column(a.by_state, "sectors"), backgroundColor: "#3e7cb1" }]);
  chart("c-miner", "bar", column(a.by_miner, "miner").map((m) => "f0" + m), [
    { label: "sectors", data: column(a.by_miner, "sectors"), backgroundColor: "#3e7cb1" },
    { label: "finalized", data: column(a.by_miner, "finalized"), backgroundColor: "#1b7f3b" },
  ]);
  chart("c-hour", "bar", column(a.events_per_hour, "hour"), [{ label: "events", data: column(a.events_per_hour, "events"), backgroundColor: "#b26a00" }]);
  chart("c-time", "bar", column(a.time_in_state, "state"), [{ label: "average seconds", data: column(a.time_in_state, "avg_seconds"), backgroundColor: "#7b4fa0" }], { indexAxis: "y" });
}

// ---- query ----------------------------------------------------------------------------

const DEFAULT_SQL = "select kind, count(*) as events from sector_events group by kind order by events desc";

function query(main) {
  main.innerHTML = `<section><h2>Query the DuckDB sink</h2>
    <textarea id="sql" spellcheck="false">${esc(sessionStorage.getItem("vsm-sql") || DEFAULT_SQL)}</textarea>
    <p><button id="run">Run</button> <a id="csv" href="#">Download CSV</a> · <a id="parquet" href="#">Download Parquet</a></p>
    <div id="qresult" class="result"></div></section>`;
  const sqlBox = document.getElementById("sql");
  const link = (fmt) => `/dashboard/export?format=${fmt}&sql=${encodeURIComponent(sqlBox.value)}`;
  const sync = () => { sessionStorage.setItem("vsm-sql", sqlBox.value); document.getElementById("csv").href = link("csv"); document.getElementById("parquet").href = link("parquet"); };
  sqlBox.addEventListener("input", sync);
  sync();
  document.getElementById("run").onclick = async () => {
    const out = document.getElementById("qresult");
    out.innerHTML = `<p class="muted">running…</p>`;
    try {
      const r = await rpc("query", { sql: sqlBox.value });
      out.innerHTML = `<p class="muted" id="qcount">${r.rows.length} rows</p><div class="chart"><canvas id="c-query"></canvas></div>${tableHtml(r)}`;
      const num = r.columns.findIndex((c, i) => i > 0 && r.rows.length && r.rows.every((row) => typeof row[i] === "number"));
      if (num > 0 && r.rows.length <= 200) chart("c-query", "bar", r.rows.map((row) => String(row[0])), [{ label: r.columns[num], data: r.rows.map((row) => row[num]), backgroundColor: "#3e7cb1" }]);
      else out.querySelector(".chart").remove();
    } catch (e) {
      out.innerHTML = `<p class="error" id="qerror">${esc(e.message)}</p>`;
    }
  };
}

// ---- plugins --------------------------------------------------------------------------

const ACTIONS = [["enable", "Enable"], ["disable", "Disable"], ["reload", "Reload"], ["flush", "Flush"]];
// what each state offers: a running plugin can be disabled, reloaded or flushed; a stopped one enabled
const OFFERED = { ready: ["disable", "reload", "flush"], disabled: ["enable"], failed: ["enable", "reload"], loaded: ["enable"], starting: [] };

async function plugins(main) {
  const list = await rpc("plugin.list");
  let h = `<section><h2>Plugins</h2><div id="presult" class="result"></div><table><thead><tr><th>plugin</th><th>version</th><th>build time</th><th>state</th><th>artifact</th><th>actions</th></tr></thead><tbody>`;
  for (const p of list) {
    const cls = p.state === "ready" ? "ok" : p.state === "failed" || p.error ? "bad" : p.state === "loaded" ? "" : "warn";
    const offered = OFFERED[p.state] || ACTIONS.map(([a]) => a);
    h += `<tr data-plugin="${esc(p.name)}"><td>${esc(p.kind)}/<b>${esc(p.name)}</b></td><td>${esc(p.version)}</td><td>${esc(p.build_time)}</td>
      <td>${badge(p.state, cls)}${p.error ? `<div class="error">${esc(p.error)}</div>` : ""}</td><td class="mono">${esc(p.artifact)}</td>
      <td class="actions">${ACTIONS.filter(([a]) => offered.includes(a)).map(([a, label]) => `<button data-action="${a}" data-name="${esc(p.name)}">${label}</button>`).join("")}</td></tr>`;
  }
  main.innerHTML = h + `</tbody></table></section>`;
  main.querySelectorAll("button[data-action]").forEach((b) => {
    b.onclick = async () => {
      const action = b.dataset.action, name = b.dataset.name;
      if (!confirm(`${action} plugin ${name}?`)) return;
      const out = document.getElementById("presult");
      try {
        const r = await rpc(`plugin.${action}`, { name });
        const text = action === "flush" ? `flushed ${name} in ${r.length} worker(s)` : `${action}d ${r.kind}/${r.name}: ${r.state}${r.error ? ": " + r.error : ""}`;
        await plugins(main);
        document.getElementById("presult").innerHTML = `<p class="ok" id="action-result">${esc(text)}</p>`;
      } catch (e) {
        out.innerHTML = `<p class="error" id="action-result">${esc(action)} ${esc(name)}: ${esc(e.message)}</p>`;
      }
    };
  });
}

// ---- routing --------------------------------------------------------------------------

const VIEWS = { overview: [overview, POLL_MS], sectors: [sectors, 10000], query: [query, 0], plugins: [plugins, 0] };

async function show() {
  const name = (location.hash || "#overview").slice(1);
  const [view, every] = VIEWS[name] || VIEWS.overview;
  document.querySelectorAll("header nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === "#" + name));
  clearTimeout(timer);
  const main = document.getElementById("main");
  main.dataset.view = name;
  const run = async () => {
    try {
      await view(main);
      main.dataset.loaded = String(Date.now());
    } catch (e) {
      main.innerHTML = `<section><p class="error">${esc(e.message)}</p></section>`;
    }
    if (every && main.dataset.view === name) timer = setTimeout(run, every);
  };
  await run();
  if (name !== "overview") rpc("status").then((st) => showHealth(problems(st))).catch(() => {});
}

window.addEventListener("hashchange", show);
window.addEventListener("DOMContentLoaded", show);
document.getElementById("logout").addEventListener("submit", () => sessionStorage.clear());
