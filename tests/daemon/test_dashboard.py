"""The dashboard through the real daemon: what an unauthenticated client gets, the login and its
cookie, CSRF, the export; then the pages in a real browser (Debian's chromium, driven by
Playwright), with a screenshot of each (docs/screenshots/ with VSM_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
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
    if os.environ.get("VSM_UPDATE_SCREENSHOTS") == "1":
        out = ROOT / "docs" / "screenshots"
    else:
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
