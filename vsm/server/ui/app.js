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

// ---- times and units: every time in the browser's own zone, every axis with its unit --------

const pad = (n) => String(n).padStart(2, "0");
function localTime(ms, seconds = true) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "-";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}${seconds ? ":" + pad(d.getSeconds()) : ""}`;
}
const ZONE = (() => {
  const off = -new Date().getTimezoneOffset(), a = Math.abs(off);
  const name = Intl.DateTimeFormat().resolvedOptions().timeZone;
  return `UTC${off >= 0 ? "+" : "-"}${pad(Math.floor(a / 60))}:${pad(a % 60)}${name ? " " + name : ""}`;
})();
// a time as the daemon sends it (Python's str of a UTC datetime; DuckDB's times are UTC)
const ISO = /^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?$/;
function parseTime(v) {
  let t = v.replace(" ", "T");
  if (!/(Z|[+-]\d{2}(:?\d{2})?)$/.test(t)) t += "Z";
  return Date.parse(t.replace(/([+-]\d{2})$/, "$1:00"));
}
// one table cell: a time in local time (the daemon's UTC text in its tooltip), a struct as JSON
function cell(v) {
  if (typeof v === "string" && ISO.test(v)) {
    const ms = parseTime(v);
    if (!Number.isNaN(ms)) return `<time datetime="${esc(v)}" title="${esc(v)}">${localTime(ms)}</time>`;
  }
  return esc(typeof v === "object" && v !== null ? JSON.stringify(v) : v);
}
// an x axis of unix milliseconds shown as local times, as short as its range allows
function timeAxis(what) {
  const tick = (v, i, ticks) => {
    const range = ticks.length > 1 ? ticks[ticks.length - 1].value - ticks[0].value : 0, t = localTime(v);
    return range < 600e3 ? t.slice(11) : range < 86400e3 ? t.slice(11, 16) : t.slice(5, 16);
  };
  return { type: "linear", title: { display: true, text: `${what} (${ZONE})` }, ticks: { maxTicksLimit: 8, callback: tick } };
}
// a count axis: logarithmic when its values differ by 20x or more (on a linear one, a state of
// 86,000 sectors flattens one of 2,000 to a line)
function countAxis(unit, values) {
  const pos = values.map(Number).filter((v) => v > 0);
  const log = pos.length > 1 && Math.max(...pos) / Math.min(...pos) >= 20;
  return { type: log ? "logarithmic" : "linear", beginAtZero: !log, title: { display: true, text: log ? `${unit} (log scale)` : unit } };
}
const PALETTE = ["#3e7cb1", "#b26a00", "#1b7f3b", "#7b4fa0", "#b00020", "#00838f", "#6d4c41", "#c2185b", "#455a64", "#9e9d24"];

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
  el.title = list.map(([, t]) => t).join("\n");
  el.dataset.problems = String(list.length);
}

// The badge follows status.problems on every view (the overview refreshes it with its own
// status call); a daemon that does not answer is no OK either.
let healthTimer = null;
async function healthLoop() {
  clearTimeout(healthTimer);
  if (document.getElementById("main").dataset.view !== "overview") {
    try {
      showHealth(problems(await rpc("status")));
    } catch (e) {
      const el = document.getElementById("health");
      el.className = "badge bad";
      el.textContent = "NO ANSWER";
      el.title = e.message;
    }
  }
  healthTimer = setTimeout(healthLoop, POLL_MS);
}

// ---- overview -------------------------------------------------------------------------

// what a plugin row shows of its environment, limits and sandbox: each one's own short text
function isolation(p) {
  const parts = [];
  if (p.env) parts.push(`env ${p.env.key || ""}${p.env.requirements && p.env.requirements.length ? ` (${p.env.requirements.length} requirement(s))` : ""}`);
  if (p.limits) parts.push(`limits: ${p.limits.text || JSON.stringify(p.limits)}`);
  if (p.sandbox) parts.push(`sandbox: ${p.sandbox.text || p.sandbox.state}`);
  return parts;
}

async function overview(main) {
  if (!document.getElementById("now")) {
    main.innerHTML = `<div id="now"></div><section id="trends"><h2>Over time <span class="muted" id="trend-span"></span></h2><div class="grid">
      ${TRENDS.map(([id, title]) => `<div data-trend="${id}"><h3>${esc(title)}</h3><div class="chart"><canvas id="${id}"></canvas></div></div>`).join("")}
      </div></section>`;
  }
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
  let h = `<section id="daemon"><h2>Daemon</h2><p>pid ${esc(d.pid)} · listening on ${esc(d.listen)} · home <span class="path">${esc(d.home)}</span> · logged in as ${esc(LEVEL)} · times in ${esc(ZONE)}</p>`;
  h += list.length ? `<ul class="problems" id="problems">${list.map(([k, t]) => `<li class="${k}">${esc(t)}</li>`).join("")}</ul>` : `<p class="muted" id="problems">Nothing is broken or behind.</p>`;
  h += `</section><section id="pools"><h2>Plugin pools</h2><div class="wide"><table><thead><tr><th>plugin</th><th>state</th><th>workers (pid)</th>
    <th class="num">restarts</th><th class="num">calls/s</th><th class="num">calls</th><th class="num">errors</th><th class="num">p50</th><th class="num">p99</th><th>isolation</th><th>last error</th></tr></thead><tbody>`;
  for (const p of st.plugins || []) {
    const pool = p.pool || {};
    const state = pool.state && p.state === "ready" ? pool.state : p.state;
    const cls = state === "ready" ? "ok" : state === "failed" || (p.error && !/^disabled by/.test(p.error)) ? "bad" : state === "loaded" ? "" : "warn";
    const workers = (pool.workers || []).map((w) => `<span class="mono" data-pid="${esc(w.pid)}">${esc(w.pid)}${w.alive === false ? " (down)" : ""}</span>`).join(", ");
    const iso = isolation(p);
    h += `<tr data-plugin="${esc(p.name)}"><td>${esc(p.kind)}/<b>${esc(p.name)}</b> <span class="muted">${esc(p.version)}</span></td>
      <td>${badge(state, cls)}</td><td>${workers || "-"}</td><td class="num restarts">${esc(pool.restarts ?? "-")}</td>
      <td class="num">${rate(p)}</td><td class="num">${esc(pool.calls ?? "-")}</td><td class="num">${esc(pool.errors ?? "-")}</td>
      <td class="num">${ms(quantile(pool.latency_buckets, 0.5))}</td><td class="num">${ms(quantile(pool.latency_buckets, 0.99))}</td>
      <td class="iso">${iso.length ? iso.map((t) => `<div>${esc(t)}</div>`).join("") : "-"}</td><td class="error">${esc(p.error || pool.last_error || "")}</td></tr>`;
  }
  h += `</tbody></table></div></section>`;
  const sectors = st.sectors || {};
  h += `<section id="sinks"><h2>Sinks</h2><div class="wide"><table><thead><tr><th>sink</th><th>state</th><th class="num">checkpoint</th><th class="num">lag (events)</th><th class="num">lag (time)</th><th class="num">delivered</th><th>last error</th></tr></thead><tbody>`;
  for (const [name, s] of Object.entries(sectors.sinks || {})) {
    const state = s.needs_rebuild ? "needs rebuild" : s.attached === false ? "detached" : s.state;
    const cls = s.needs_rebuild ? "bad" : s.attached === false ? "warn" : SINK_OK.has(s.state) ? (s.last_error ? "warn" : "ok") : "bad";
    h += `<tr data-sink="${esc(name)}"><td><b>${esc(name)}</b></td><td>${badge(state, cls)}</td><td class="num">${esc(s.checkpoint)}</td>
      <td class="num lag">${esc(s.lag)}</td><td class="num">${s.lag ? duration(s.lag_seconds) : "0"}</td><td class="num">${esc(s.delivered_rows ?? "")}</td><td class="error">${esc(s.last_error || "")}</td></tr>`;
  }
  const j = sectors.journal || {};
  h += `</tbody></table></div></section><section id="journal"><h2>Journal</h2><p>head seq ${esc(j.head)} · durable ${esc(j.durable)} · watermark ${esc(j.watermark)} · ${esc(j.frames)} frames in ${esc(j.segments)} segments ·
    ${j.broken ? badge("broken: " + j.broken, "bad") : badge("ok", "ok")}</p></section>`;
  h += `<section id="stores"><h2>Stores</h2><div class="wide"><table><thead><tr><th>store</th><th>plugin</th><th>state</th><th>error</th></tr></thead><tbody>`;
  for (const [name, s] of Object.entries(st.stores || {})) {
    h += `<tr data-store="${esc(name)}"><td>${esc(name)}</td><td>${esc(s.plugin || "")}</td><td>${badge(s.state, s.state === "ready" ? "ok" : s.state === "starting" ? "warn" : "bad")}</td><td class="error">${esc(s.error || "")}</td></tr>`;
  }
  document.getElementById("now").innerHTML = h + `</tbody></table></div></section>`;
  previous = { st, t: now };
  await trends();
}

// ---- over time: the daemon's own samples (GET /dashboard/history, vsm/server/history.py) ----

const TRENDS = [
  ["t-calls", "Calls per second, by plugin"],
  ["t-latency", "p99 call latency, by plugin"],
  ["t-errors", "Errors per second, by plugin"],
  ["t-lag", "Sink lag"],
  ["t-journal", "Journal events and imported states per second"],
];
let historyAt = 0;

async function trends() {
  if (Date.now() - historyAt < 5000 && charts["t-calls"]) return; // the daemon samples every few seconds
  const r = await fetch("/dashboard/history", { credentials: "same-origin" });
  if (!r.ok) throw new Error(`/dashboard/history: ${r.status} ${(await r.text()).trim()}`);
  const hist = await r.json();
  historyAt = Date.now();
  const samples = hist.samples || [];
  const span = samples.length > 1 ? (samples[samples.length - 1].t - samples[0].t) : 0;
  const section = document.getElementById("trends");
  if (!section) return;
  section.dataset.samples = String(samples.length);
  document.getElementById("trend-span").textContent = samples.length
    ? `the last ${duration(span)} (kept: ${duration(hist.keep_seconds)}), one sample every ${hist.every} s`
    : `no sample yet: the daemon takes one every ${hist.every} s`;
  const x = (s) => s.t * 1000;
  // the series of one figure per plugin (or sink); plugins that never moved are left out
  const byName = (pick, group, keep) => {
    const names = [...new Set(samples.flatMap((s) => Object.keys(s[group] || {})))].sort();
    return names.map((name) => ({ name, points: samples.map((s) => ({ x: x(s), y: s[group] && s[group][name] !== undefined ? pick(s[group][name]) : null })) }))
      .filter((series) => keep(series.points.map((p) => p.y)));
  };
  const line = (series, i) => ({ label: series.name, data: series.points, borderColor: PALETTE[i % PALETTE.length], backgroundColor: PALETTE[i % PALETTE.length],
    pointRadius: 0, borderWidth: 1.5, spanGaps: false });
  const moved = (ys) => ys.some((y) => y);
  // one chart of series; on a log axis a zero (no call in that interval) is a gap
  const plot = (id, unit, list) => {
    const axis = countAxis(unit, list.flatMap((c) => c.points.map((p) => p.y)));
    if (axis.type === "logarithmic") list = list.map((c) => Object.assign({}, c, { points: c.points.map((p) => ({ x: p.x, y: p.y > 0 ? p.y : null })) }));
    // a value between two gaps (an import within one sample) is a point, else it would not show
    const lone = (ps) => ps.some((p, i) => p.y !== null && (i === 0 || ps[i - 1].y === null) && (i === ps.length - 1 || ps[i + 1].y === null));
    chart(id, "line", undefined, list.map((c, i) => Object.assign(line(c, i), lone(c.points) ? { pointRadius: 2 } : {}, c.style || {})), { scales: { x: timeAxis("local time"), y: axis },
      plugins: { legend: { display: true, position: "bottom", labels: { boxWidth: 10 } } } });
  };
  plot("t-calls", "calls/s", byName((v) => v[0], "plugins", moved));
  plot("t-latency", "p99, ms", byName((v) => (v[3] === null ? null : v[3] * 1000), "plugins", (ys) => ys.some((y) => y !== null)));
  const errs = byName((v) => v[1], "plugins", moved);
  plot("t-errors", "errors/s", errs.length ? errs : [{ name: "no errors", points: samples.map((s) => ({ x: x(s), y: 0 })) }]);
  plot("t-lag", "events behind", byName((v) => v, "sinks", () => true));
  plot("t-journal", "per second", [
    { name: "journal events/s", points: samples.map((s) => ({ x: x(s), y: s.journal_events_s })) },
    // each imported state is a journal event too: its marks stand out over the journal's
    { name: "imported states/s", points: samples.map((s) => ({ x: x(s), y: s.imported_s })), style: { pointStyle: "triangle", pointRadius: (c) => (c.raw && c.raw.y > 0 ? 4 : 0), order: -1 } },
  ]);
}

// ---- charts ---------------------------------------------------------------------------

// a chart on a canvas; drawn again in place when that canvas already has one (the overview's
// series every poll), made anew when the page rebuilt the canvas
function chart(id, type, labels, datasets, opts) {
  const canvas = document.getElementById(id);
  if (!canvas || !window.Chart) return;
  const old = charts[id];
  if (old && old.canvas === canvas && old.config.type === type) {
    old.data.labels = labels;
    old.data.datasets = datasets;
    Object.assign(old.options.scales, (opts || {}).scales || {});
    old.update("none");
    return;
  }
  if (old) old.destroy();
  const data = labels === undefined ? { datasets } : { labels, datasets };
  charts[id] = new Chart(canvas, {
    type,
    data,
    options: Object.assign({ responsive: true, maintainAspectRatio: false, animation: false, plugins: { legend: { display: datasets.length > 1 } } }, opts || {}),
  });
}

function column(result, name) {
  const i = result.columns.indexOf(name);
  return result.rows.map((r) => r[i]);
}

// link: (row) -> the #sector/... address of a row's sector, or null
function tableHtml(result, limit, link) {
  const rows = result.rows.slice(0, limit || 500);
  const miner = result.columns.indexOf("miner"), number = result.columns.indexOf("number");
  return `<div class="scroll"><table><thead><tr>${result.columns.map((c) => `<th>${esc(c)}</th>`).join("")}</tr></thead><tbody>
    ${rows.map((r) => `<tr>${r.map((v, i) => `<td>${link && i === number && miner >= 0 ? `<a href="#sector/${esc(r[miner])}/${esc(v)}">${esc(v)}</a>` : cell(v)}</td>`).join("")}</tr>`).join("")}
    </tbody></table></div>${result.rows.length > rows.length ? `<p class="muted">${result.rows.length - rows.length} more rows not shown</p>` : ""}`;
}

// seconds on an axis or in a tooltip: s, min, h or days, whichever reads best
function span(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 120) return `${Number(seconds).toPrecision(3).replace(/\.?0+$/, "")} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  if (seconds < 3 * 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

async function sectors(main) {
  const a = await rpc("sectors.analytics");
  const total = (a.by_state.rows || []).reduce((n, r) => n + Number(r[1]), 0);
  const err = (k) => (a[k].error ? `<p class="error">${esc(a[k].error)}</p>` : "");
  main.innerHTML = `<div class="grid">
    <section data-chart="by_state" data-total="${total}"><h2>Sectors by state (${total})</h2>${err("by_state")}<div class="chart"><canvas id="c-state"></canvas></div></section>
    <section data-chart="by_miner"><h2>Sectors by miner</h2>${err("by_miner")}<div class="chart"><canvas id="c-miner"></canvas></div></section>
    <section data-chart="events_per_hour" data-events="${(a.events_per_hour.rows || []).reduce((n, r) => n + Number(r[1]), 0)}"><h2>Events per hour (the last 72 hours with events)</h2>${err("events_per_hour")}<div class="chart"><canvas id="c-hour"></canvas></div></section>
    <section data-chart="time_in_state"><h2>Time spent in each state (average)</h2>${err("time_in_state")}<div class="chart"><canvas id="c-time"></canvas></div></section>
    </div><section data-chart="slowest"><h2>Slowest sectors (first to last event)</h2>${err("slowest")}${tableHtml(a.slowest, 0, true)}</section>`;
  const states = column(a.by_state, "sectors");
  chart("c-state", "bar", column(a.by_state, "state"), [{ label: "sectors", data: states, backgroundColor: "#3e7cb1" }],
    { scales: { y: countAxis("sectors", states) } });
  const miners = column(a.by_miner, "sectors").concat(column(a.by_miner, "finalized"));
  chart("c-miner", "bar", column(a.by_miner, "miner").map((m) => "f0" + m), [
    { label: "sectors", data: column(a.by_miner, "sectors"), backgroundColor: "#3e7cb1" },
    { label: "finalized", data: column(a.by_miner, "finalized"), backgroundColor: "#1b7f3b" },
  ], { scales: { y: countAxis("sectors", miners) } });
  const events = column(a.events_per_hour, "events");
  chart("c-hour", "bar", column(a.events_per_hour, "hour").map((h) => localTime(Number(h) * 1000, false)),
    [{ label: "events", data: events, backgroundColor: "#b26a00" }],
    { scales: { x: { title: { display: true, text: `hour starting (${ZONE})` } }, y: countAxis("events per hour", events) } });
  const avg = column(a.time_in_state, "avg_seconds");
  const axis = countAxis("average time in state", avg);
  axis.ticks = { callback: (v) => span(v) };
  chart("c-time", "bar", column(a.time_in_state, "state"), [{ label: "average time", data: avg, backgroundColor: "#7b4fa0" }],
    { indexAxis: "y", scales: { x: axis }, plugins: { legend: { display: false }, tooltip: { callbacks: { label: (c) => span(c.raw) } } } });
  const seconds = a.slowest.columns.indexOf("seconds");
  main.querySelectorAll("[data-chart=slowest] tbody tr").forEach((tr) => {
    const td = tr.children[seconds];
    if (td) td.textContent = span(Number(td.textContent));
  });
}

// ---- one sector: search, then its history as a timeline ---------------------------------

async function sector(main) {
  const [, miner, number] = (location.hash.split("/").map(decodeURIComponent));
  const form = JSON.parse(sessionStorage.getItem("vsm-find") || "{}");
  const field = (name, label, value, hint) => `<label>${label} <input name="${name}" value="${esc(value || "")}" placeholder="${hint}"></label>`;
  main.innerHTML = `<section id="find"><h2>Find sectors</h2><form id="find-form">
    ${field("miner", "miner", miner || form.miner, "f01000 or 1000")} ${field("number", "number", number || form.number, "any")}
    ${field("state", "state", form.state, "e.g. PCSubmitted, Aborted")} <button>Search</button></form>
    <div id="found" class="result"></div></section><section id="history" hidden></section>`;
  const f = document.getElementById("find-form");
  f.onsubmit = async (ev) => {
    ev.preventDefault();
    const q = Object.fromEntries([...new FormData(f)].map(([k, v]) => [k, String(v).trim()]).filter(([, v]) => v));
    sessionStorage.setItem("vsm-find", JSON.stringify(q));
    const out = document.getElementById("found");
    try {
      const r = await rpc("sectors.search", q);
      out.innerHTML = `<p class="muted" id="found-count">${r.rows.length}${r.rows.length >= 100 ? "+" : ""} sector(s); pick a number for its history</p>${tableHtml(r, 100, true)}`;
    } catch (e) {
      out.innerHTML = `<p class="error" id="find-error">${esc(e.message)}</p>`;
    }
  };
  if (miner && number) await history(miner, number);
  else if (Object.keys(form).length) f.onsubmit(new Event("submit"));
}

async function history(miner, number) {
  const el = document.getElementById("history");
  el.hidden = false;
  let r;
  try {
    r = await rpc("sectors.history", { miner, number });
  } catch (e) {
    el.innerHTML = `<p class="error" id="history-error">${esc(e.message)}</p>`;
    return;
  }
  const col = (name) => r.columns.indexOf(name);
  const events = r.rows.map((row) => ({ seq: row[col("seq")], kind: row[col("kind")], t: parseTime(row[col("time")]), state: row[col("state")], reason: row[col("reason")] }));
  if (!events.length) {
    el.innerHTML = `<h2>Sector f0${esc(miner)} #${esc(number)}</h2><p class="muted" id="history-none">The DuckDB sink has no event of this sector.</p>`;
    return;
  }
  const last = events[events.length - 1];
  const ended = ["Finalized", "Removed", "Aborted"].includes(last.state);
  el.innerHTML = `<h2 id="history-title">Sector f0${esc(miner)} #${esc(number)}: ${esc(last.state)}</h2>
    <p class="muted">${events.length} event(s) from ${localTime(events[0].t)} to ${localTime(last.t)} (${span((last.t - events[0].t) / 1000)})${ended ? "" : `; in ${esc(last.state)} for ${span((Date.now() - last.t) / 1000)}`} · times in ${esc(ZONE)}</p>
    <div class="chart timeline"><canvas id="c-history"></canvas></div>${tableHtml(r)}`;
  // one bar per event: from it to the next event (the last one to now, unless the sector's life ended)
  const until = (i) => (i + 1 < events.length ? events[i + 1].t : ended ? last.t : Date.now());
  const order = [...new Set(events.map((e) => e.state))];
  chart("c-history", "bar", order, [{
    label: "state",
    data: events.map((e, i) => ({ x: [e.t, Math.max(until(i), e.t + 1000)], y: e.state, reason: e.reason, seq: e.seq })),
    backgroundColor: events.map((e) => (e.reason ? "#b00020" : e.state === "Finalized" ? "#1b7f3b" : "#3e7cb1")),
    borderSkipped: false, barPercentage: 0.6, grouped: false,
  }], {
    indexAxis: "y",
    scales: { x: Object.assign(timeAxis("local time"), { min: events[0].t - 1000 }) },
    plugins: { legend: { display: false }, tooltip: { callbacks: { label: (c) => `${c.raw.y} at ${localTime(c.raw.x[0])} for ${span((c.raw.x[1] - c.raw.x[0]) / 1000)} (seq ${c.raw.seq})${c.raw.reason ? ": " + c.raw.reason : ""}` } } },
  });
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
      const r = await rpc("query", { sql: sqlBox.value, js_safe: true });
      out.innerHTML = `<p class="muted" id="qcount">${r.rows.length} rows</p><div class="chart"><canvas id="c-query"></canvas></div>${tableHtml(r)}`;
      const num = r.columns.findIndex((c, i) => i > 0 && r.rows.length && r.rows.every((row) => typeof row[i] === "number"));
      if (num > 0 && r.rows.length <= 200) {
        const values = r.rows.map((row) => row[num]);
        chart("c-query", "bar", r.rows.map((row) => String(row[0])), [{ label: r.columns[num], data: values, backgroundColor: "#3e7cb1" }],
          { scales: { x: { title: { display: true, text: r.columns[0] } }, y: countAxis(r.columns[num], values) } });
      }
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
  let h = `<section><h2>Plugins</h2><div id="presult" class="result"></div><div class="wide"><table><thead><tr><th>plugin</th><th>version</th><th>build time</th><th>state</th><th>artifact</th><th>actions</th></tr></thead><tbody>`;
  for (const p of list) {
    const cls = p.state === "ready" ? "ok" : p.state === "failed" || p.error ? "bad" : p.state === "loaded" ? "" : "warn";
    const offered = OFFERED[p.state] || ACTIONS.map(([a]) => a);
    h += `<tr data-plugin="${esc(p.name)}"><td>${esc(p.kind)}/<b>${esc(p.name)}</b></td><td>${esc(p.version)}</td><td>${cell(p.build_time)}</td>
      <td>${badge(p.state, cls)}${p.error ? `<div class="error">${esc(p.error)}</div>` : ""}</td><td class="mono">${esc(p.artifact)}</td>
      <td class="actions">${ACTIONS.filter(([a]) => offered.includes(a)).map(([a, label]) => `<button data-action="${a}" data-name="${esc(p.name)}">${label}</button>`).join("")}</td></tr>`;
  }
  main.innerHTML = h + `</tbody></table></div></section>`;
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

const VIEWS = { overview: [overview, POLL_MS], sectors: [sectors, 10000], sector: [sector, 0], query: [query, 0], plugins: [plugins, 0] };

async function show() {
  const name = (location.hash || "#overview").slice(1).split("/")[0]; // #sector/<miner>/<number>
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
}

window.addEventListener("hashchange", show);
window.addEventListener("DOMContentLoaded", () => { show().then(healthLoop); });
document.getElementById("logout").addEventListener("submit", () => sessionStorage.clear());
