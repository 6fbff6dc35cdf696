"""Plugins that cannot hurt the host (issue 16), through the real daemon: resource limits per
plugin (MemoryLimit, MaxOpenFiles, CPUs, Nice) applied in every worker and shown in status."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import psutil
import pytest

from vsm.plugin.artifact import build

from .harness import Daemon, prepare_home

pytestmark = pytest.mark.timeout(180)

HOG = '''
import os


class Hog:
    def grow(self, step_mib=4, pause=0.005):
        """Allocate until it stops (a runaway cache): MemoryError under a MemoryLimit."""
        import time

        held = []
        while True:
            held.append(bytearray(step_mib << 20))
            time.sleep(pause)

    def pid(self):
        return os.getpid()


def handler():
    return "HOG", Hog()
'''


def write_plugin(parent: Path, name: str, kind: str, module: str, impl: str, extra: str = "") -> Path:
    """A plugin source folder (manifest.toml + module) built into an artifact in `parent`/out."""
    src = parent / name
    src.mkdir(parents=True)
    point = "Handler" if kind == "RegisterJsonRpc" else "Constructor"
    (src / "manifest.toml").write_text(
        f'name = "{name}"\nkind = "{kind}"\nmodule = "{name}"\nversion = "1.0.0"\n'
        f'export = [{{extPoint = "{point}", impl = "{impl}"}}]\n{extra}'
    )
    (src / f"{name}.py").write_text(module)
    artifact, _, _ = build(src, parent / "out")
    return artifact


def test_memory_limit_fails_the_call_and_the_rest_serves(start_daemon, tmp_path: Path) -> None:
    home = tmp_path / "home"
    prepare_home(home, append='[Common.Plugins.hog]\nMemoryLimit = "256MiB"\nMaxOpenFiles = 512\nNice = 3\nCPUs = "0"\n')
    artifact = write_plugin(tmp_path / "src", "hog", "RegisterJsonRpc", HOG, "handler")
    os.replace(artifact, home / "plugins" / artifact.name)
    d: Daemon = start_daemon(home)
    manager_rss = psutil.Process(d.pid).memory_info().rss
    pid = d.rpc("HOG.pid")

    result: dict = {}
    hog = threading.Thread(target=lambda: result.update(error=d.rpc_error("HOG.grow")))
    hog.start()
    served = 0
    while hog.is_alive() or served < 3:  # the other plugins serve while the hog grows
        assert d.rpc("DAMOCLES_LIMITER.Acquire", {"name": "add_pieces", "id": f"iso-{served}"})
        status, _, _ = d.request("PUT", f"/pieces/pieces/iso/{served}.bin", b"x" * 1000, {"Content-Type": "application/octet-stream"})
        assert status == 201
        served += 1
    hog.join()
    error = result["error"]
    assert error["code"] == -32001, error
    message = error["message"]
    assert "\n" not in message, message
    assert message.startswith("MemoryLimitExceeded: plugin 'RegisterJsonRpc/hog' ran out of memory"), message
    assert "256MiB" in message and "[Common.Plugins.hog]" in message, message

    # the worker lived (an error, not a crash), and the manager did not grow with it
    assert d.rpc("HOG.pid") == pid
    rows = {r["name"]: r for r in d.rpc("plugin.list")}
    assert rows["hog"]["pool"]["restarts"] == 0
    assert psutil.Process(d.pid).memory_info().rss < manager_rss + (64 << 20)

    # applied in the worker as configured, and shown in plugin list / status (text and JSON)
    worker = psutil.Process(pid)
    assert worker.rlimit(psutil.RLIMIT_DATA) == (256 << 20, 256 << 20)
    assert worker.rlimit(psutil.RLIMIT_NOFILE) == (512, 512)
    assert worker.nice() == 3 and worker.cpu_affinity() == [0]
    limits = rows["hog"]["limits"]
    assert limits["memory_limit"] == 256 << 20 and limits["max_open_files"] == 512 and limits["cpus"] == [0] and limits["nice"] == 3
    assert limits["text"] == "mem 256MiB, files 512, cpus 0, nice 3"
    assert rows["fsstore"]["limits"]["memory_limit"] == 4 << 30  # the default for every plugin
    fs_worker = psutil.Process(rows["fsstore"]["pool"]["workers"][0]["pid"])
    assert fs_worker.rlimit(psutil.RLIMIT_DATA) == (4 << 30, 4 << 30)
    listing = d.cli("plugin", "list").stdout
    assert "mem 256MiB, files 512, cpus 0, nice 3" in listing and "mem 4GiB, files 4096" in listing, listing
    assert "mem 256MiB, files 512, cpus 0, nice 3" in d.cli("status").stdout
    as_json = json.loads(d.cli("status", "--json").stdout)
    assert {p["name"]: p for p in as_json["plugins"]}["hog"]["limits"]["nice"] == 3


def test_duckdb_spills_under_its_memory_limit_instead_of_failing(start_daemon, tmp_path: Path) -> None:
    """The duckdb sink sets DuckDB's memory_limit below its worker's MemoryLimit, so a query
    bigger than that spills to disk (beside its file) where it failed (DuckDB's
    OutOfMemoryException: its allocations hit RLIMIT_DATA while it believed it had 80% of the
    machine's RAM)."""
    home = tmp_path / "home"
    prepare_home(home, append='[Common.Plugins.duckdb]\nMemoryLimit = "400MiB"\n')
    d: Daemon = start_daemon(home)
    ((setting,),) = d.rpc("query", {"sql": "select current_setting('memory_limit')", "sink": "duckdb"})["rows"]
    number, unit = setting.split()
    limit = float(number) * {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
    assert 64 << 20 <= limit < 200 << 20, setting
    # ~2M distinct 32-byte groups: a hash table beyond the worker's 400MiB without spilling
    sql = "select count(*) from (select h from (select md5(i::varchar) h from range(2500000) t(i)) group by h)"
    assert d.rpc("query", {"sql": sql, "sink": "duckdb"})["rows"] == [[2500000]]


# -- the sandbox (Landlock) --------------------------------------------------------------------

SPY = '''
import os
import socket


class Spy:
    def read(self, path):
        with open(path, "rb") as f:
            return len(f.read())

    def write(self, path):
        with open(path, "w") as f:
            f.write("spy")
        return True

    def connect(self, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True

    def pg(self, port):
        import psycopg

        psycopg.connect(f"postgresql://spy@127.0.0.1:{port}/spy", connect_timeout=5)

    def mysql(self, port):
        import pymysql

        pymysql.connect(host="127.0.0.1", port=port, user="spy", connect_timeout=5)

    def tmp(self):
        import tempfile

        with tempfile.NamedTemporaryFile() as f:
            return os.path.dirname(f.name)


def handler():
    return NAMESPACE, Spy()
'''

SPY_MANIFEST = 'sandbox = true\npathMeta = ["Path"]\n'


def _spy_home(tmp_path: Path, spy_settings: str, open_settings: str) -> tuple[Path, Path]:
    """A home with two builds of one plugin: `spy` (SPY) and `spyopen` (SPYOPEN)."""
    home = tmp_path / "home"
    data = tmp_path / "spydata"
    prepare_home(
        home,
        append=f'[Common.Plugins.spy]\n{spy_settings}\n[Common.Plugins.spy.Meta]\nPath = "{data}/spy"\n'
        f'[Common.Plugins.spyopen]\n{open_settings}\n[Common.Plugins.spyopen.Meta]\nPath = "{data}/open"\n',
    )
    for name, namespace in (("spy", "SPY"), ("spyopen", "SPYOPEN")):
        artifact = write_plugin(tmp_path / "src", name, "RegisterJsonRpc", SPY.replace("NAMESPACE", repr(namespace)), "handler", SPY_MANIFEST)
        os.replace(artifact, home / "plugins" / artifact.name)
    return home, data


@pytest.fixture
def listeners():
    import socket

    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    yield [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()


def _denied(d: Daemon, method: str, params: list) -> str:
    error = d.rpc_error(method, params)
    assert error["code"] == -32001 and "\n" not in error["message"], error
    return error["message"]


def test_sandbox_denies_what_the_config_does_not_give(start_daemon, tmp_path: Path, listeners) -> None:
    allowed, other = listeners
    home, data = _spy_home(tmp_path, f"AllowConnect = [{allowed}]", f"Sandbox = false\nAllowConnect = [{allowed}]")
    d: Daemon = start_daemon(home)
    token, piece = home / "token", home / "data" / "pieces" / "iso" / "p.bin"
    status, _, _ = d.request("PUT", "/pieces/pieces/iso/p.bin", b"another plugin's data", {"Content-Type": "application/octet-stream"})
    assert status == 201 and piece.is_file()

    head = "SandboxDenied: plugin 'RegisterJsonRpc/spy' is sandboxed and was denied"
    # a client reads no path of the server's (issue 13 item 7): the home and the store as placeholders
    nowhere = "(it may neither read nor write there): allow it with AllowRead"
    assert _denied(d, "SPY.read", [str(token)]).startswith(f"{head} access to <home>/token {nowhere}")
    assert _denied(d, "SPY.read", [str(piece)]).startswith(f"{head} access to <store pieces>/iso/p.bin {nowhere}")
    outside = tmp_path / "outside.txt"
    assert _denied(d, "SPY.write", [str(outside)]).startswith(f"{head} writing "), "the temp folder reads <tmp>"
    assert not outside.exists()
    artifact = home / "plugins" / "plugin-spy.vsmp"  # what it may read and not change
    assert _denied(d, "SPY.write", [str(artifact)]).startswith(f"{head} writing <plugins>/plugin-spy.vsmp: allow it")
    assert d.rpc("SPY.read", [str(artifact)]) > 0
    assert _denied(d, "SPY.connect", [other]).startswith(f"{head} a TCP connection to 127.0.0.1:{other} (ports allowed: {allowed})")
    # through client libraries: pymysql's error wraps the PermissionError; libpq's says it in words
    assert _denied(d, "SPY.mysql", [other]).startswith(f"{head} a TCP connection to 127.0.0.1:{other} (ports allowed: {allowed})")
    assert _denied(d, "SPY.pg", [other]).startswith(f'{head} an access (connection is bad: connection to server at "127.0.0.1", port {other} failed: Permission denied')
    # what its configuration gives it still works: its Path, its port, its own temporary folder
    assert d.rpc("SPY.write", [str(data / "spy" / "ok.txt")]) is True
    assert d.rpc("SPY.connect", [allowed]) is True
    assert d.rpc("SPY.tmp") == str(home / "tmp" / "spy")

    # the same plugin unsandboxed can do all of it (so each denial above is the sandbox's)
    assert d.rpc("SPYOPEN.read", [str(token)]) > 0
    assert d.rpc("SPYOPEN.read", [str(piece)]) > 0
    assert d.rpc("SPYOPEN.write", [str(outside)]) is True and outside.exists()
    assert d.rpc("SPYOPEN.connect", [other]) is True

    rows = {r["name"]: r for r in d.rpc("plugin.list")}
    sandbox = rows["spy"]["sandbox"]
    assert sandbox["state"] == "on" and sandbox["connect"] == [allowed] and str(data / "spy") in sandbox["write"], sandbox
    assert rows["spyopen"]["sandbox"]["state"] == "off"
    assert "on (Landlock ABI" in d.cli("plugin", "list").stdout
    assert "off (Sandbox = false in [Common.Plugins.spyopen])" in d.cli("status").stdout


def test_sandbox_true_is_refused_where_the_kernel_cannot_keep_it(start_daemon, tmp_path: Path, listeners) -> None:
    """A kernel of Landlock ABI 3 (simulated): no TCP rules. Sandbox = true refuses the plugin at
    load, in one line; "best-effort" confines its files and says what it could not."""
    allowed, other = listeners
    home, _ = _spy_home(tmp_path, "Sandbox = true", 'Sandbox = "best-effort"')
    d: Daemon = start_daemon(home, env={"VSM_LANDLOCK_ABI": "3"})
    rows = {r["name"]: r for r in d.rpc("plugin.list")}
    refusal = (
        "plugin 'RegisterJsonRpc/spy' is not started: [Common.Plugins.spy] Sandbox = true, but this kernel's Landlock ABI 3 "
        "cannot refuse TCP connect and bind (ABI 4, Linux 6.7+, can): set Sandbox = \"best-effort\" or false"
    )
    assert rows["spy"]["state"] == "disabled" and rows["spy"]["error"] == refusal, rows["spy"]
    assert rows["spy"]["sandbox"]["state"] == "refused"
    assert refusal in d.log_text()
    partial = rows["spyopen"]["sandbox"]
    assert partial["state"] == "partial" and partial["missing"][0] == "TCP connect and bind", partial
    assert "partial (ABI 3: not refused: TCP connect and bind" in d.cli("status").stdout
    assert "cannot refuse TCP connect and bind" in d.log_text()
    assert d.rpc("SPYOPEN.connect", [other]) is True  # what ABI 3 cannot refuse
    assert "was denied access to" in _denied(d, "SPYOPEN.read", [str(home / "token")])  # what it can


# -- the bundled plugins, sandboxed by default -------------------------------------------------


def test_bundled_plugins_serve_sandboxed_by_default(start_daemon, tmp_path: Path) -> None:
    """No Sandbox key anywhere: every plugin of the default home runs confined and does its
    work: the DB, the piece store, the limiter (its config file and slots in the plugins dir, as
    damocles' example keeps them), and both sinks get every sector event (their workers map the
    journal's segments, which they may read and not write)."""
    from vsm.sdk.sectors import SectorID, SectorState
    from vsm.sectors import write_import_file

    home = tmp_path / "home"
    prepare_home(home)
    assert "\nSandbox" not in (home / "config.toml").read_text()
    d: Daemon = start_daemon(home)
    rows = {r["name"]: r for r in d.rpc("plugin.list")}
    for name in ("memdb", "sqlitekv", "fsstore", "duckdb", "parquet", "concurrent-limiter"):
        assert rows[name]["sandbox"]["state"] == "on", (name, rows[name]["sandbox"])
        assert rows[name]["sandbox"]["connect"] == [], name
    assert rows["duckdb"]["sandbox"]["write"] == [str(home / "data" / "duckdb"), str(home / "tmp" / "duckdb")]

    states = tmp_path / "states.jsonl"
    write_import_file(str(states), [SectorState(id=SectorID(78, n), sector_type=8) for n in range(40)])
    assert "imported 40 of 40" in d.cli("sectors", "import", str(states)).stdout
    status, _, _ = d.request("PUT", "/pieces/pieces/iso/p.bin", b"piece", {"Content-Type": "application/octet-stream"})
    assert status == 201 and (home / "data" / "pieces" / "iso" / "p.bin").read_bytes() == b"piece"
    assert d.rpc("DAMOCLES_LIMITER.Acquire", {"name": "add_pieces", "id": "iso"}) == "0-add_pieces"
    assert (home / "plugins" / "concurrent-limiter.toml").read_text().startswith("# Default config:")
    assert (home / "plugins" / ".concurrent-limiter" / "slots.sqlite").is_file()
    wait_sinks(d, {"duckdb", "parquet"})
    assert "40" in d.cli("query", "select count(*) from sectors").stdout
    assert list((home / "data" / "parquet").rglob("*.parquet"))


def wait_sinks(d: Daemon, names: set[str], timeout: float = 60.0) -> None:
    """Until every sink in `names` has the journal's head, none with an error."""
    deadline = time.monotonic() + timeout
    while True:
        st = d.rpc("sinks.status")
        sinks = st["sinks"]
        if set(sinks) == names and all(s["checkpoint"] >= st["journal"]["head"] > 0 for s in sinks.values()):
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    assert not any(s["errors"] for s in sinks.values()), sinks


def test_a_home_built_by_an_older_vsm_pool_gets_the_bundled_plugins_rebuilt(start_daemon, tmp_path: Path) -> None:
    """A home whose fsstore and sqlitekv were built before their manifests said `sandbox = true`
    (same name and version, other content): `vsm-pool start` rebuilds them from this vsm-pool's
    sources (keeping the old files as .old), so they run confined; the operator's own build of
    memdb (another version) is left as it is; with a daemon running nothing is replaced."""
    import fcntl
    import re
    import shutil

    from vsm.home import ensure_home
    from vsm.plugin.artifact import artifact_digest, source_digest

    from .harness import ROOT

    home = tmp_path / "home"
    prepare_home(home)
    plugins = home / "plugins"
    for name, version in (("fsstore", None), ("sqlitekv", None), ("memdb", "7.0.0")):
        src = tmp_path / "old" / name
        shutil.copytree(ROOT / "plugins" / name, src)
        text = re.sub(r"(?m)^sandbox = true.*$", "", (src / "manifest.toml").read_text())
        if version:
            text = re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text)
        (src / "manifest.toml").write_text(text)
        build(src, plugins)
    operator_memdb = (plugins / "plugin-memdb.vsmp").read_bytes()

    # a daemon runs on this home (it holds the lock): nothing is replaced under it
    fd = os.open(home / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        ensure_home(home)
    finally:
        os.close(fd)
    assert not list(plugins.glob("*.old"))

    d: Daemon = start_daemon(home)
    rows = {r["name"]: r for r in d.rpc("plugin.list")}
    assert rows["fsstore"]["sandbox"]["state"] == "on" and rows["sqlitekv"]["sandbox"]["state"] == "on", rows
    for name, source in (("fsstore", "fsstore"), ("sqlitekv", "sqlitekv")):
        assert artifact_digest(plugins / f"plugin-{name}.vsmp") == source_digest(ROOT / "plugins" / source)
        assert (plugins / f"plugin-{name}.vsmp.old").is_file()
    assert rows["memdb"]["version"] == "7.0.0" and rows["memdb"]["sandbox"]["state"] == "off"
    assert (plugins / "plugin-memdb.vsmp").read_bytes() == operator_memdb
    assert "rebuilt bundled plugin plugin-fsstore.vsmp" in d.log_text()
    assert sorted(p.name for p in plugins.glob("*.old")) == ["plugin-fsstore.vsmp.old", "plugin-sqlitekv.vsmp.old"]
