"""The dashboard through the real daemon: what an unauthenticated client gets, the login and its
cookie, CSRF, the export; then the pages in a real browser (Debian's chromium, driven by
Playwright), with a screenshot of each (kept in $VSM_SCREENSHOTS when set)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest

from .harness import Daemon, run_cli
from bench.states import make_state


pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("VSM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _login(d: Daemon, token: str | None = None) -> tuple[str, str]:
    """POST /login: the session cookie's value and the page's CSRF token."""
    body = f"token={quote(token or d.token)}".encode()
    status, headers, _ = d.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"}, token=None)
    assert status == 302 and headers["location"] == "/", (status, headers)
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    session = re.match(r"vsm_session=([^;]+);", cookie).group(1)  # type: ignore[union-attr]
    status, _, page = d.request("GET", "/", headers={"Cookie": f"vsm_session={session}"}, token=None)
    assert status == 200
    csrf = re.search(rb'name="vsm-csrf" content="([^"]+)"', page).group(1).decode()  # type: ignore[union-attr]
    return session, csrf


def _rpc(d: Daemon, session: str, csrf: str | None, method: str, params: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", "Cookie": f"vsm_session={session}"}
    if csrf is not None:
        headers["X-VSM-CSRF"] = csrf
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}).encode()
    status, _, data = d.request("POST", "/rpc/v0", body, headers, token=None)
    return status, (json.loads(data) if status == 200 else data.decode())


def test_closed_without_a_token_or_session(daemon: Daemon) -> None:
    d = daemon
    assert d.request("GET", "/healthz", token=None)[0] == 200
    status, headers, _ = d.request("GET", "/", headers={"Accept": "text/html"}, token=None)
    assert status == 302 and headers["location"] == "/login"  # a browser is sent to the form
    for verb, path in [("GET", "/"), ("GET", "/ui/app.js"), ("GET", "/metrics"), ("POST", "/rpc/v0"),
                       ("GET", "/dashboard/export?format=csv&sql=select%201"), ("GET", "/pieces/pieces/x")]:
        assert d.request(verb, path, token=None)[0] == 401, (verb, path)
    status, _, page = d.request("GET", "/login", token=None)
    assert status == 200 and b'name="token"' in page
    bad = d.request("POST", "/login", b"token=not-the-token", {"Content-Type": "application/x-www-form-urlencoded"}, token=None)
    assert bad[0] == 401 and b"not valid" in bad[2] and "set-cookie" not in bad[1]
    # a cookie the daemon never issued is no session
    assert _rpc(d, "forged", "forged", "status")[0] == 401


def test_session_cookie_csrf_export_and_logout(daemon: Daemon) -> None:
    d = daemon
    session, csrf = _login(d)
    status, reply = _rpc(d, session, csrf, "status")
    assert status == 200 and reply["result"]["daemon"]["pid"] == d.pid
    # the cookie alone (what another site's form would send) changes nothing
    status, text = _rpc(d, session, None, "plugin.disable", {"name": "parquet"})
    assert status == 403 and "X-VSM-CSRF" in text
    assert _rpc(d, session, "wrong", "status")[0] == 403
    assert d.rpc("plugin.list") and next(p for p in d.rpc("plugin.list") if p["name"] == "parquet")["state"] == "ready"
    # assets and the export need the session, and answer with it
    cookie = {"Cookie": f"vsm_session={session}"}
    status, headers, js = d.request("GET", "/ui/app.js", headers=cookie, token=None)
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"X-VSM-CSRF" in js
    assert d.request("GET", "/ui/../token", headers=cookie, token=None)[0] == 404
    assert d.request("GET", "/ui/vendor/chart.umd.min.js", headers=cookie, token=None)[0] == 200
    sql = quote("select 1 as one, 'a' as letter")
    status, headers, body = d.request("GET", f"/dashboard/export?format=csv&sql={sql}", headers=cookie, token=None)
    assert status == 200 and headers["content-disposition"].endswith('query.csv"') and body.decode().splitlines() == ['"one","letter"', '1,"a"']
    status, headers, body = d.request("GET", f"/dashboard/export?format=parquet&sql={sql}", headers=cookie, token=None)
    assert status == 200 and body[:4] == b"PAR1"
    assert d.request("GET", f"/dashboard/export?format=xml&sql={sql}", headers=cookie, token=None)[0] == 400
    status, _, body = d.request("GET", "/dashboard/export?format=csv&sql=select%20nope", headers=cookie, token=None)
    assert status == 400 and body.startswith(b"query failed:") and b"Traceback" not in body
    # logout needs the CSRF token too, then the cookie is dead
    form = {"Content-Type": "application/x-www-form-urlencoded", **cookie}
    d.request("POST", "/logout", b"csrf=wrong", form, token=None)
    assert _rpc(d, session, csrf, "status")[0] == 200
    status, headers, _ = d.request("POST", "/logout", f"csrf={csrf}".encode(), form, token=None)
    assert status == 302 and headers["location"] == "/login"
    assert _rpc(d, session, csrf, "status")[0] == 401


def test_sector_analytics_answers_every_chart(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    states = _states_file(tmp_path, 1200, 40)
    run_cli(d.home, "sectors", "import", str(states))
    # realistic states: some finalized (offline), removed or aborted already; abort one still sealing
    generated = [make_state(1200, i) for i in range(40)]
    aborted = [s.id.number for s in generated if not s.removed and not s.finalized and s.abort_reason]
    n = next(s.id.number for s in generated if not (s.removed or s.finalized or s.abort_reason))
    d.rpc("sectors.update", {"miner": 1200, "number": n, "fields": {"AbortReason": "no ticket"}})
    d.wait_delivered()
    a = d.rpc("sectors.analytics")
    assert set(a) == {"by_state", "by_miner", "events_per_hour", "time_in_state", "slowest"}
    assert not any(v.get("error") for v in a.values()), a
    by_state = dict(a["by_state"]["rows"])
    assert by_state.get("Aborted") == len(aborted) + 1 and sum(by_state.values()) >= 40
    assert [1200, 40, sum(s.finalized for s in generated)] in a["by_miner"]["rows"]
    slowest = a["slowest"]
    first = dict(zip(slowest["columns"], slowest["rows"][0]))
    assert (first["miner"], first["number"], first["state"], first["events"]) == (1200, n, "Aborted", 2)


def _states_file(tmp_path: Path, miner: int, n: int) -> Path:
    path = tmp_path / f"states-{miner}.jsonl"
    with open(path, "wb") as f:
        for i in range(n):
            data = make_state(miner, i).to_go_json()
            f.write((data if isinstance(data, bytes) else data.encode()) + b"\n")
    return path


# -- in a real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    required = os.environ.get("VSM_REQUIRE_SERVERS") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        if required:
            pytest.fail(f"playwright is not installed: {e} (pip install '.[test]')")
        pytest.skip(f"playwright is not installed: {e}")
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        msg = f"no chromium at {CHROMIUM} (apt-get install chromium, or set VSM_CHROMIUM)"
        if required:
            pytest.fail(msg)
        pytest.skip(msg)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _shots(tmp_path: Path) -> Path:
    """Where the test's pages go (VSM_SCREENSHOTS to keep them); the README's are of a realistic
    home, taken by tests/daemon/screenshots.py, not of this test's few sectors."""
    out = Path(os.environ.get("VSM_SCREENSHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_dashboard_in_a_real_browser(daemon: Daemon, browser: Any, tmp_path: Path) -> None:
    d = daemon
    shots = _shots(tmp_path)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.on("dialog", lambda dialog: dialog.accept())  # every action asks for confirmation
    base = f"http://127.0.0.1:{d.port}"
    try:
        page.goto(base + "/")
        assert page.url.endswith("/login")
        page.screenshot(path=str(shots / "login.png"))
        page.fill("#token", "wrong-token")
        page.click("button[type=submit]")
        assert page.is_visible("#login-error")
        page.fill("#token", d.token)
        page.click("button[type=submit]")

        # overview: every pool, by name, with its workers' pids
        page.wait_for_selector("#pools tr[data-plugin]")
        plugins = {p["name"]: p for p in d.rpc("plugin.list")}
        shown = set(page.eval_on_selector_all("#pools tr[data-plugin]", "rows => rows.map(r => r.dataset.plugin)"))
        assert shown == set(plugins), shown
        assert page.text_content("#health") == "OK"

        # kill a worker of the parquet sink with a signal: the page counts its restart
        row = "#pools tr[data-plugin=parquet]"
        assert page.text_content(f"{row} .restarts") == "0"
        pid = plugins["parquet"]["pool"]["workers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        page.wait_for_function(f"document.querySelector('{row} .restarts').textContent === '1'", timeout=20_000)
        page.wait_for_function(f"!document.querySelector('{row} [data-pid=\"{pid}\"]')", timeout=20_000)
        page.screenshot(path=str(shots / "overview.png"), full_page=True)

        # sectors: import through the CLI and the charts change
        page.goto(base + "/#sectors")
        page.wait_for_selector("[data-chart=by_state]")
        before = int(page.get_attribute("[data-chart=by_state]", "data-total") or 0)
        run_cli(d.home, "sectors", "import", str(_states_file(tmp_path, 1300, 25)))
        d.wait_delivered()
        page.wait_for_function(
            f"Number(document.querySelector('[data-chart=by_state]').dataset.total) === {before + 25}", timeout=30_000
        )
        assert page.eval_on_selector("#c-state", "c => Chart.getChart(c).data.datasets[0].data.reduce((a, b) => a + b, 0)") == before + 25
        page.screenshot(path=str(shots / "sectors.png"), full_page=True)

        # query: a table and a chart of any SQL
        page.goto(base + "/#query")
        page.fill("#sql", "select miner, count(*) as sectors from sectors group by miner order by miner")
        page.click("#run")
        page.wait_for_selector("#qcount")
        assert page.text_content("#qcount").endswith("rows") and page.is_visible("#c-query")
        href = page.get_attribute("#csv", "href")
        assert href.startswith("/dashboard/export?format=csv&sql=select%20miner")
        page.screenshot(path=str(shots / "query.png"), full_page=True)
        page.fill("#sql", "select * from no_such_table")
        page.click("#run")
        page.wait_for_selector("#qerror")

        # plugins: disable then enable a sink with its buttons
        page.goto(base + "/#plugins")
        page.click("tr[data-plugin=parquet] button[data-action=disable]")
        page.wait_for_selector("#action-result")
        assert page.text_content("#action-result").startswith("disabled SyncSectorState/parquet")
        assert next(p for p in d.rpc("plugin.list") if p["name"] == "parquet")["state"] == "disabled"
        d.rpc("sectors.update", {"miner": 1300, "number": 1, "fields": {"AbortReason": "while parquet is off"}})
        page.goto(base + "/#overview")  # the disabled sink falls behind: the page says so, and how to fix it
        page.wait_for_function("document.querySelector('#health').textContent.startsWith('DEGRADED')", timeout=10_000)
        assert "sink/parquet" in page.text_content("#problems") and "plugin enable parquet" in page.text_content("#problems")
        page.goto(base + "/#plugins")
        page.click("tr[data-plugin=parquet] button[data-action=enable]")
        page.wait_for_selector("#action-result")
        assert page.text_content("#action-result").startswith("enabled SyncSectorState/parquet: ready")
        page.screenshot(path=str(shots / "plugins.png"), full_page=True)

        # from the page, a request without the cookie is refused
        status = page.evaluate("fetch('/rpc/v0', {method: 'POST', credentials: 'omit', body: '{}'}).then(r => r.status)")
        assert status == 401
    finally:
        page.close()
    for name in ("login", "overview", "sectors", "query", "plugins"):
        assert (shots / f"{name}.png").stat().st_size > 5000, name


# -- the Grafana board ------------------------------------------------------------------------


def _board_exprs(board: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v.get("definition")]
    return exprs


def test_grafana_board_reads_only_metrics_the_daemon_exports(daemon: Daemon) -> None:
    board = json.loads((ROOT / "docs" / "grafana" / "vsm-pool.json").read_text())
    d = daemon
    d.rpc("status")  # every pool has served a call
    text = d.request("GET", "/metrics")[2].decode()
    samples = {m.group(1): m.group(2) or "" for m in re.finditer(r"^(vsm_\w+)(\{[^}]*\})? \S+$", text, re.M)}
    exprs = _board_exprs(board)
    assert len(exprs) >= 8
    used = {name for e in exprs for name in re.findall(r"\bvsm_\w+", e)}
    missing = sorted(used - set(samples))
    assert not missing, f"the board reads metrics the daemon does not export: {missing}"
    # the labels the board groups and filters by are on those metrics
    for e in exprs:
        for name in re.findall(r"\bvsm_\w+", e):
            labels = set(re.findall(r'(\w+)="', samples[name]))
            for label in re.findall(r"by \(([^)]*)\)", e):
                wanted = {x.strip() for x in label.split(",")} - {"le"} if "bucket" not in name else {x.strip() for x in label.split(",")}
                assert wanted <= labels, (e, name, labels)
    # the families it charts cover pools, calls, errors, latency, restarts and sink lag
    assert {"vsm_plugin_calls_total", "vsm_plugin_errors_total", "vsm_plugin_call_seconds_bucket",
            "vsm_plugin_worker_restarts_total", "vsm_plugin_workers", "vsm_sink_lag_rows"} <= used


def test_a_session_keeps_its_tokens_level(daemon: Daemon) -> None:
    """A browser logged in with a read token sees everything and changes nothing."""
    d = daemon
    token = run_cli(d.home, "auth", "create-token", "--perm", "read", "--name", "dashboard-viewer").stdout.strip().splitlines()[-1]
    session, csrf = _login(d, token)
    assert _rpc(d, session, csrf, "status")[0] == 200
    status, reply = _rpc(d, session, csrf, "plugin.disable", {"name": "parquet"})
    error = reply["error"] if status == 200 else {"message": reply}
    assert "forbidden" in error["message"] and "admin" in error["message"], reply
    assert next(p for p in d.rpc("plugin.list") if p["name"] == "parquet")["state"] == "ready"
    status, _, page = d.request("GET", "/", headers={"Cookie": f"vsm_session={session}"}, token=None)
    assert b'name="vsm-level" content="read"' in page
    run_cli(d.home, "auth", "revoke", "dashboard-viewer")
    assert _rpc(d, session, csrf, "status")[0] == 401  # revoking the token ends its sessions


# -- the dashboard over time, in the browser at 1400 px and on a narrow window (issue 26 item 7) ----

BIG_MINER = 2**53 + 1  # the first id a browser's JSON.parse cannot hold: it reads ...992


def _login_page(browser: Any, d: Daemon, width: int, tz: str = "Asia/Tokyo") -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900}, timezone_id=tz)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"http://127.0.0.1:{d.port}/login")
    page.fill("#token", d.token)
    page.click("button[type=submit]")
    page.wait_for_selector("#pools tr[data-plugin]")
    return page


def _tokyo(utc_text: str) -> str:
    """The daemon's UTC time as the page must show it in Tokyo (UTC+9, no DST)."""
    from datetime import datetime, timedelta, timezone

    t = datetime.fromisoformat(utc_text).astimezone(timezone(timedelta(hours=9)))
    return t.strftime("%Y-%m-%d %H:%M:%S")


_OVERFLOW = """() => {
  const out = [];
  if (document.documentElement.scrollWidth > innerWidth + 1) out.push('page ' + document.documentElement.scrollWidth + ' > ' + innerWidth);
  for (const el of document.querySelectorAll('td.error, td.iso, #problems li')) {
    if (el.scrollWidth > el.clientWidth + 1) out.push('cut off: ' + el.textContent.slice(0, 60));
  }
  return out;
}"""


def test_big_ids_and_figures_over_time_over_http(start_daemon: Any, tmp_path: Path) -> None:
    d = start_daemon(env={"VSM_DASHBOARD_SAMPLE_SECONDS": "0.5"})
    run_cli(d.home, "sectors", "import", str(_states_file(tmp_path, BIG_MINER, 3)))
    d.wait_delivered()
    # what the dashboard reads has the id as text; the CLI's rows keep the number
    sql = f"select miner, number from sectors where miner = {BIG_MINER} order by number"
    assert d.rpc("query", {"sql": sql, "js_safe": True})["rows"][0] == [str(BIG_MINER), 0]
    assert d.rpc("query", {"sql": sql})["rows"][0] == [BIG_MINER, 0]
    assert [str(BIG_MINER), 3, 0][:2] == d.rpc("sectors.analytics")["by_miner"]["rows"][-1][:2]
    found = d.rpc("sectors.search", {"miner": f"f0{BIG_MINER}", "number": "2"})
    assert [r[:2] for r in found["rows"]] == [[str(BIG_MINER), 2]]
    events = d.rpc("sectors.history", {"miner": str(BIG_MINER), "number": 2})
    assert [r[events["columns"].index("kind")] for r in events["rows"]] == ["import"]
    error = d.rpc_error("sectors.history", {"miner": "f0x", "number": 1})
    assert error["code"] == -32602 and "miner: 'f0x' is not a number" in error["message"], error
    # the daemon's figures: calls/s of the KV store while it serves, an import's states/s and
    # the journal's events/s
    deadline = time.monotonic() + 30
    while not json.loads(d.request("GET", "/dashboard/history")[2])["samples"] and time.monotonic() < deadline:
        time.sleep(0.1)
    run_cli(d.home, "sectors", "import", str(_states_file(tmp_path, 1500, 500)))
    while time.monotonic() < deadline:
        d.rpc("sectors.get", {"miner": BIG_MINER, "number": 1})
        samples = json.loads(d.request("GET", "/dashboard/history")[2])["samples"]
        imported = sum(s["imported_s"] * s["dt"] for s in samples)
        if any(s["plugins"].get("KVStore/sqlitekv", [0])[0] > 0 for s in samples) and imported > 499:
            break
        time.sleep(0.2)
    history = json.loads(d.request("GET", "/dashboard/history")[2])
    # every state once: as received by the import, as events in the journal (rates x the interval)
    assert round(sum(s["imported_s"] * s["dt"] for s in history["samples"])) in (500, 503)  # 3: if sampled before the first
    assert sum(s["journal_events_s"] * s["dt"] for s in history["samples"]) > 499
    assert history["every"] == 0.5 and history["keep_seconds"] == 6 * 3600
    kv = [s["plugins"]["KVStore/sqlitekv"] for s in history["samples"] if "KVStore/sqlitekv" in s["plugins"]]
    assert any(calls > 0 and p99 is not None and p99 > 0 for calls, _, _, p99 in kv), kv
    assert {"parquet", "duckdb"} <= set(history["samples"][-1]["sinks"])
    assert d.request("GET", "/dashboard/history", token=None)[0] == 401


def test_figures_keep_a_bounded_ring() -> None:
    from vsm.server.history import Figures

    class NoPlugins:  # a manager before its registry and sector manager exist (the daemon starting)
        registry = None
        sectors = None

    figures = Figures(NoPlugins(), every=1.0, keep_seconds=5)
    for _ in range(20):
        figures.sample()
    assert len(figures.history()["samples"]) == 5 and figures.history()["keep_seconds"] == 5


def test_dashboard_tells_the_truth_over_time(start_daemon: Any, browser: Any, tmp_path: Path) -> None:
    d = start_daemon(env={"VSM_DASHBOARD_SAMPLE_SECONDS": "0.5"})
    run_cli(d.home, "sectors", "import", str(_states_file(tmp_path, 1400, 600)))
    run_cli(d.home, "sectors", "import", str(_states_file(tmp_path, BIG_MINER, 3)))
    d.wait_delivered()
    # one sector aborted: a state of 1 beside hundreds of finalized ones
    sql = "select number from sectors where miner = 1400 and not removed and not finalized and abort_reason = '' order by number limit 2"
    victim, other = (r[0] for r in d.rpc("query", {"sql": sql})["rows"])
    d.rpc("sectors.update", {"miner": 1400, "number": victim, "fields": {"AbortReason": "ticket expired"}})
    d.wait_delivered()
    page = _login_page(browser, d, 1400)
    try:
        # overview at 1400 px: nothing cut off or wider than the window; isolation as text, not JSON
        page.wait_for_function("Number(document.querySelector('#trends').dataset.samples) >= 4", timeout=30_000)
        assert page.evaluate(_OVERFLOW) == []
        iso = page.text_content("#pools tr[data-plugin=sqlitekv] td.iso")
        assert "limits:" in iso and "{" not in iso, iso
        # the figures over time: each a line per plugin or sink on a time axis in local time
        for canvas in ("t-calls", "t-latency", "t-errors", "t-lag", "t-journal"):
            shown = page.eval_on_selector(f"#{canvas}", "c => { const ch = Chart.getChart(c); return [ch.data.datasets.map(s => s.label), ch.options.scales.x.title.text, ch.options.scales.y.title.text]; }")
            assert shown[0] and "UTC+09:00" in shown[1] and shown[2], (canvas, shown)
        calls = page.eval_on_selector("#t-calls", "c => Chart.getChart(c).data.datasets.map(s => s.label)")
        assert "KVStore/sqlitekv" in calls, calls

        # sectors: a log axis where one state has 100x another; hours in local time with units
        page.goto(f"http://127.0.0.1:{d.port}/#sectors")
        page.wait_for_selector("[data-chart=slowest] tbody tr")
        counts = dict(d.rpc("sectors.analytics")["by_state"]["rows"])
        assert max(counts.values()) >= 100 * min(counts.values()), counts
        assert page.eval_on_selector("#c-state", "c => Chart.getChart(c).options.scales.y.type") == "logarithmic"
        assert page.eval_on_selector("#c-hour", "c => Chart.getChart(c).options.scales.y.title.text").startswith("events per hour")
        hour = d.rpc("sectors.analytics")["events_per_hour"]["rows"][-1][0]
        label = page.eval_on_selector("#c-hour", "c => Chart.getChart(c).data.labels.at(-1)")
        assert label == _tokyo(__import__("datetime").datetime.fromtimestamp(hour, __import__("datetime").timezone.utc).isoformat())[:16]
        labels = page.eval_on_selector("#c-miner", "c => Chart.getChart(c).data.labels")
        assert f"f0{BIG_MINER}" in labels, labels  # not f09007199254740992
        slowest = d.rpc("sectors.analytics")["slowest"]
        first = page.text_content("[data-chart=slowest] tbody tr td:nth-child(5)")
        assert first == _tokyo(slowest["rows"][0][slowest["columns"].index("first_event")]), first
        assert page.evaluate(_OVERFLOW) == []

        # the badge follows status on every view: a sink disabled while this view is open
        assert page.text_content("#health") == "OK"
        d.rpc("plugin.disable", {"name": "parquet"})
        d.rpc("sectors.update", {"miner": 1400, "number": other, "fields": {"AbortReason": "while parquet is off"}})
        deadline = time.monotonic() + 10
        while not d.rpc("status")["problems"] and time.monotonic() < deadline:  # status lists the sink
            time.sleep(0.1)
        assert d.rpc("status")["problems"]
        page.wait_for_function("document.querySelector('#health').textContent !== 'OK'", timeout=10_000)
        assert page.get_attribute("#health", "data-problems") == str(len(d.rpc("status")["problems"]))
        d.rpc("plugin.enable", {"name": "parquet"})
        d.wait_delivered()

        # sector search, then one sector's history as a timeline in local time
        page.goto(f"http://127.0.0.1:{d.port}/#sector")
        page.fill("#find-form input[name=miner]", "f01400")
        page.fill("#find-form input[name=state]", "Aborted")
        page.click("#find-form button")
        page.wait_for_selector("#found-count")
        page.click(f"#found a[href='#sector/1400/{victim}']")
        page.wait_for_selector("#history-title")
        assert page.text_content("#history-title") == f"Sector f01400 #{victim}: Aborted"
        bars = page.eval_on_selector("#c-history", "c => Chart.getChart(c).data.datasets[0].data.map(b => [b.y, b.reason])")
        assert len(bars) == 2 and bars[-1] == ["Aborted", "ticket expired"], bars
        rows = d.rpc("sectors.history", {"miner": 1400, "number": victim})
        shown = page.eval_on_selector_all("#history tbody tr td:nth-child(3)", "tds => tds.map(td => td.textContent)")
        assert shown == [_tokyo(r[rows["columns"].index("time")]) for r in rows["rows"]], shown
        page.goto(f"http://127.0.0.1:{d.port}/#sector/{BIG_MINER}/2")
        page.wait_for_selector("#history-title")
        assert page.text_content("#history-title").startswith(f"Sector f0{BIG_MINER} #2:")

        # query results: the id as it is
        page.goto(f"http://127.0.0.1:{d.port}/#query")
        page.fill("#sql", f"select miner, count(*) as sectors from sectors where miner > 2000 group by miner")
        page.click("#run")
        page.wait_for_selector("#qcount")
        assert page.text_content("#qresult tbody td") == str(BIG_MINER)

        # plugins: build times in local time too
        page.goto(f"http://127.0.0.1:{d.port}/#plugins")
        built = next(p for p in d.rpc("plugin.list") if p["name"] == "parquet")["build_time"]
        assert page.text_content("tr[data-plugin=parquet] td:nth-child(3)") == _tokyo(built)
    finally:
        page.context.close()

    # a narrow window: every view fits, wide tables scroll inside their section
    page = _login_page(browser, d, 420)
    try:
        for view in ("overview", "sectors", f"sector/1400/{victim}", "query", "plugins"):
            page.goto(f"http://127.0.0.1:{d.port}/#{view}")
            page.wait_for_function(f"document.querySelector('#main').dataset.loaded && document.querySelector('#main').dataset.view === '{view.split('/')[0]}'")
            page.wait_for_timeout(300)
            assert page.evaluate(_OVERFLOW) == [], view
    finally:
        page.context.close()
