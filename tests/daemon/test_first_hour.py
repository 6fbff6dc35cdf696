"""Issue 26: a damocles operator's first hour, as the README tells it: `start --config` on a new
home, a plugins `Dir` of their own answered with the command that builds what it lacks, the
bundled sinks' Meta defaulting under the home."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from .harness import finish, run_cli, start

pytestmark = pytest.mark.timeout(300)

DAMOCLES_CFG = Path(__file__).parents[1] / "core" / "damocles" / "sector-manager.cfg"


def _damocles_config(where: Path, append: str = "") -> Path:
    """damocles' own sector-manager.cfg, as `daemon init` writes it, plus `append`."""
    where.mkdir(parents=True, exist_ok=True)
    cfg = where / "sector-manager.cfg"
    shutil.copy(DAMOCLES_CFG, cfg)
    if append:
        cfg.write_text(cfg.read_text() + "\n" + append.strip() + "\n")
    return cfg


def test_start_with_a_damocles_config_makes_a_new_home(tmp_path: Path) -> None:
    """Item 1: the home does not exist yet; `start --config` makes it (token, data, the bundled
    plugins where the config loads them from: its Dir is unset, so <home>/plugins), writes no
    config.toml of its own, and the bundled sinks store under the home without any Meta."""
    cfg = _damocles_config(tmp_path / "damocles")
    home = tmp_path / "new-home"
    d = start(home, None, "--config", str(cfg))
    try:
        assert (home / "token").is_file() and (home / "plugins" / "plugin-sqlitekv.vsmp").is_file()
        assert not (home / "config.toml").exists()
        assert "meta key 'Path'" not in d.log_text()
        d.rpc("sectors.init", {"sectors": [{"miner": 5, "number": 1, "proof_type": 8}]})
        d.wait_delivered()
        status = d.rpc("sinks.status")["sinks"]
        assert status["duckdb"]["attached"] and status["parquet"]["attached"], status
        rows = json.loads(d.cli("query", "--format", "json", "select count(*) as n from sectors").stdout)
        assert rows == [{"n": 1}]
        assert (home / "data" / "duckdb" / "sectors.duckdb").is_file() and any((home / "data" / "parquet").rglob("*.parquet"))
        assert (home / "data" / "kv" / "kv.sqlite").is_file() and not (home / "data" / "kv.sqlite").exists()  # a folder of its own
    finally:
        finish(d)


def test_a_plugins_dir_without_the_bundled_plugins_names_the_command_that_builds_them(tmp_path: Path) -> None:
    """Item 2: the config's Dir is the operator's own, empty folder: the start fails in one line
    that names the command; that command (by the plugins' names, and --all) makes it start."""
    plugins = tmp_path / "my-plugins"
    plugins.mkdir()
    cfg = _damocles_config(tmp_path / "damocles", f'[Common.Plugins]\nDir = "{plugins}"')
    home = tmp_path / "home"
    failed = run_cli(home, "start", "--config", str(cfg), "--listen", "127.0.0.1:0", check=False)
    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert f"Common.DB.Driver: no loaded KVStore plugin 'sqlitekv' (loaded: none): it is bundled with vsm-pool; build it into {plugins} with " \
        f"`vsm-pool plugin build --bundled sqlitekv --out-dir {plugins}`" in line, failed.stderr

    # a plugin's name, as the config and the log spell it; its folder name works too
    assert "plugin-duckdb.vsmp" in run_cli(home, "plugin", "build", "--bundled", "duckdb", "--out-dir", str(tmp_path / "one")).stdout
    assert "plugin-parquet.vsmp" in run_cli(home, "plugin", "build", "--bundled", "parquet_sink", "--out-dir", str(tmp_path / "one")).stdout
    wrong = run_cli(home, "plugin", "build", "--bundled", "duckdbb", check=False)
    assert wrong.returncode == 2 and "no bundled plugin 'duckdbb'; bundled: concurrent-limiter, duckdb, fsstore" in wrong.stderr

    run_cli(home, "plugin", "build", "--all", "--out-dir", str(plugins))
    built = sorted(p.name for p in plugins.glob("*.vsmp"))
    assert built == [f"plugin-{n}.vsmp" for n in ("concurrent-limiter", "duckdb", "fsstore", "memdb", "parquet", "sqlitekv")]
    d = start(home, None, "--config", str(cfg))
    try:
        st = d.rpc("status")
        states = {p["name"]: p["state"] for p in st["plugins"]}
        assert states == {**dict.fromkeys(("concurrent-limiter", "duckdb", "parquet", "sqlitekv"), "ready"), "fsstore": "loaded", "memdb": "loaded"}
        assert st["problems"] == []
    finally:
        finish(d)


ON_INIT_MAKEDIRS = '''
import os


def on_init(plugins_dir, manifest):
    os.makedirs(os.path.join(os.getcwd(), "data", "blobs-index"), exist_ok=True)
'''


def test_a_sandboxed_plugin_making_its_folders_is_told_why_and_what_to_do(tmp_path: Path) -> None:
    """Item 3: a plugin made by `plugin new` makes its store's folder itself (os.makedirs); under
    the sandbox a folder that did not exist when its workers started cannot be allowed, and an
    onInit writing outside its paths is refused: each is one SandboxDenied line with the fix,
    not a bare `[Errno 13] Permission denied`."""
    home = tmp_path / "home"
    blobs = home / "data" / "blobs"
    from .harness import prepare_home

    prepare_home(
        home,
        append=f'[Common.Plugins.blobstore]\nSandbox = true\n[Common.Plugins.blobindex]\nSandbox = true\n'
        f'[[Common.PieceStores]]\nName = "blobs"\nPath = "{blobs}"\nPluginName = "blobstore"\n',
    )
    for name, kind in (("blobstore", "ObjStore"), ("blobindex", "RegisterJsonRpc")):
        run_cli(home, "plugin", "new", "--kind", kind, name, "--dir", str(tmp_path / "src"))
    manifest = tmp_path / "src" / "blobindex" / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('# onInit = "on_init"', 'onInit = "on_init"'))
    module = tmp_path / "src" / "blobindex" / "blobindex.py"
    module.write_text(module.read_text() + ON_INIT_MAKEDIRS)
    for name in ("blobstore", "blobindex"):
        run_cli(home, "plugin", "build", "--src-dir", str(tmp_path / "src" / name), "--out-dir", str(home / "plugins"))
    d = start(home)
    try:
        problems = {p["part"]: p["cause"] for p in d.rpc("status")["problems"]}
        assert "Errno 13" not in json.dumps(problems), problems
        assert f"store 'blobs' (blobstore) failed to open: plugin 'ObjStore/blobstore' is sandboxed and was denied creating {blobs}: " \
            f"{blobs} is its to write, but did not exist when its workers started, and the sandbox can allow only a folder that exists: " \
            f"create it (mkdir -p {blobs}), then `vsm-pool plugin reload blobstore`" in problems["store/blobs"], problems
        assert "SandboxDenied: plugin 'RegisterJsonRpc/blobindex' is sandboxed and was denied writing " \
            f"{home / 'data' / 'blobs-index'}: allow it with AllowRead, AllowWrite" in problems["plugin/blobindex"], problems

        blobs.mkdir()  # the fix it names
        d.cli("plugin", "reload", "blobstore")
        assert d.request("PUT", "/pieces/blobs/a.car", b"piece")[0] == 201
        assert (blobs / "a.car").read_bytes() == b"piece"
    finally:
        finish(d)


def _start_held_reading_its_config(tmp_path: Path, home: Path, port: int) -> tuple[Any, Path, int]:
    """`vsm-pool start --config FIFO`, held where it reads its config (a FIFO nobody writes
    yet): (its process, its log, the FIFO's write end to let it go on)."""
    from .harness import launch

    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    proc, log, _ = launch(home, port, "--config", str(fifo))
    while True:  # until the start opens its config (O_NONBLOCK: ENXIO while no reader has)
        assert proc.poll() is None, log.read_text()
        try:
            return proc, log, os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.05)


def test_stop_right_after_start_stops_it(tmp_path: Path) -> None:
    """Item 6: `vsm-pool stop` while the start does not listen yet stops it (was: no daemon)."""
    from .harness import free_port, kill_tree

    proc, log, writer = _start_held_reading_its_config(tmp_path, tmp_path / "home", free_port())
    try:
        out = run_cli(tmp_path / "home", "stop")
        assert out.stdout.strip() == f"vsm-pool (pid {proc.pid}) stopped", (out.stdout, out.stderr)
        assert proc.wait(timeout=30) != 0  # it had not started: killed by the signal
    finally:
        os.close(writer)
        kill_tree(proc)


def test_status_right_after_start_waits_and_a_wrong_token_is_named(tmp_path: Path) -> None:
    """Item 6: `vsm-pool start &` then at once `vsm-pool status`, while the start is still
    reading its config (a FIFO here: it reads it once we write it, after `status` has looked),
    waits for the daemon instead of saying none runs; a wrong $VSM_TOKEN is named as that
    variable, not as <home>/token."""
    import subprocess
    import sys

    from vsm.config import default_config_text

    from .harness import ROOT, Daemon, cli_env, free_port, kill_tree, shm_entries

    home = tmp_path / "home"
    shm_before = shm_entries()
    port = free_port()
    proc, log, writer = _start_held_reading_its_config(tmp_path, home, port)
    status = None
    try:
        status = subprocess.Popen([sys.executable, "-m", "vsm", "status"], cwd=ROOT, env=cli_env(home), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert status.stderr is not None
        first = status.stderr.readline()  # the old code's answer: "no vsm-pool daemon is running ..."
        assert first.startswith("waiting: the daemon (pid ") and "is starting" in first, first
        os.set_blocking(writer, True)
        with open(writer, "w") as f:  # the start goes on
            f.write(default_config_text(home))
        out, err = status.communicate(timeout=120)
        assert status.returncode == 0 and out.startswith("daemon: pid "), (out, err)
        d = Daemon(home, port, proc, log, shm_before)
    except BaseException:
        if status is not None and status.poll() is None:
            status.kill()
        kill_tree(proc)
        raise
    try:
        wrong = run_cli(home, "status", env={"VSM_TOKEN": "not-a-token-of-this-daemon"}, check=False)
        assert wrong.returncode != 0
        assert f"the daemon at 127.0.0.1:{port} refused the token in $VSM_TOKEN (401): it is none of this daemon's tokens" in wrong.stderr, wrong.stderr
        assert "<home>/token the one" not in wrong.stderr
    finally:
        finish(d)


def test_a_pretty_printed_states_file_gets_the_one_line_hint(tmp_path: Path) -> None:
    """Item 6: states printed with indents are refused line by line (`not JSON`); the import
    ends with the hint that states go one a line, and the command that makes them so."""
    from vsm.sdk.sectors import SectorID, SectorState

    from .harness import prepare_home

    home = prepare_home(tmp_path / "home")
    pretty = tmp_path / "states.json"
    pretty.write_text("".join(json.dumps(json.loads(SectorState(SectorID(7, n), 8).to_go_json()), indent=2) + "\n" for n in range(2)))
    out = run_cli(home, "sectors", "import", str(pretty), check=False)
    assert out.returncode == 1 and "not JSON" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"{pretty} holds pretty-printed JSON (a state over several lines); the import reads one state a line, as damocles' "
        f"export-json writes them: `jq -c . {pretty} > states.jsonl`, then import states.jsonl"
    )


def test_selftest_checks_this_install_and_leaves_nothing(tmp_path: Path) -> None:
    """The quick check (README "Set up"): `vsm-pool selftest` starts a real daemon on a
    temporary home, checks status, a state, a piece and the DuckDB sink, stops it, removes
    the home. A $VSM_TOKEN of the user's does not get in its way."""
    from .harness import shm_entries

    shm_before = shm_entries()
    out = run_cli(tmp_path / "unused-home", "selftest", env={"TMPDIR": str(tmp_path), "VSM_TOKEN": "someone-elses"})
    steps = [line.split(":")[0].strip() for line in out.stdout.splitlines() if line.startswith("  ok  ")]
    assert steps == ["ok  start", "ok  status", "ok  sector state", "ok  piece", "ok  sinks", "ok  stop"], out.stdout
    assert out.stdout.splitlines()[-1].startswith("selftest passed in ")
    assert not list(tmp_path.glob("vsm-selftest-*")), "the temporary home is left"
    assert shm_entries() <= shm_before


def test_selftest_fails_on_a_broken_install_naming_the_part(tmp_path: Path) -> None:
    """A selftest that can fail: duckdb broken in this install (an importable package that
    raises) is one line naming the plugin and the cause; exit status 1; the daemon is gone
    and its home kept for a look."""
    from .harness import ROOT, shm_entries

    fake = tmp_path / "fake"
    (fake / "duckdb").mkdir(parents=True)
    (fake / "duckdb" / "__init__.py").write_text('raise ImportError("duckdb is broken in this install")\n')
    shm_before = shm_entries()
    out = run_cli(tmp_path / "unused-home", "selftest", check=False, env={"TMPDIR": str(tmp_path), "PYTHONPATH": f"{fake}{os.pathsep}{ROOT}"})
    assert out.returncode == 1, (out.stdout, out.stderr)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: selftest failed at 'status': SyncSectorState/duckdb: disabled") and "ImportError: duckdb is broken in this install" in last, last
    kept = list(tmp_path.glob("vsm-selftest-*"))
    assert len(kept) == 1 and f"the temporary home is kept in {kept[0]}" in last
    assert not (kept[0] / "daemon.json").exists(), "the daemon still runs"
    assert shm_entries() <= shm_before


def test_config_reload_applies_stores_limits_and_meta_and_says_what_needs_a_restart(tmp_path: Path) -> None:
    """Item 5: a store added to config.toml is a 404 that says the file names it and how to
    apply it; `status` says the file differs; `vsm-pool config reload` opens it (in a new
    fsstore pool whose sandbox allows its Path), applies a plugin's new limits and a sink's new
    Meta, lists what needs a restart; after it, status says nothing differs; SIGHUP does the same."""
    import signal

    from .harness import prepare_home

    home = prepare_home(tmp_path / "home")
    d = start(home)
    try:
        blobs = tmp_path / "blobs"
        blobs.mkdir()
        config = home / "config.toml"
        config.write_text(
            config.read_text().replace('[Common.Api]\nListen = "127.0.0.1:1789"', '[Common.Api]\nListen = "127.0.0.1:1789"\nMaxListLimit = 500')
            + f'\n[[Common.PieceStores]]\nName = "blobs"\nPath = "{blobs}"\n'
            + '\n[Common.Plugins.sqlitekv]\nMemoryLimit = "1GiB"\n'
        )
        status, _, body = d.request("PUT", "/pieces/blobs/a.car", b"piece")
        assert status == 404 and f"no store named 'blobs'" in body.decode() and f"{config} names it since the daemon started: `vsm-pool config reload` opens it" in body.decode(), body

        out = d.cli("status").stdout
        assert f"config: {config} on disk differs from the running config (Common.Api, Common.Plugins.sqlitekv, store 'blobs' added): `vsm-pool config reload` applies it" in out, out

        reload = d.cli("config", "reload")
        assert "applied: ObjStore/fsstore: new pool, stores pieces, blobs" in reload.stdout, reload.stdout
        assert "applied: KVStore/sqlitekv: new pool" in reload.stdout
        assert "needs a restart: Common.Api (`vsm-pool stop`, then `vsm-pool start`)" in reload.stdout
        assert d.request("PUT", "/pieces/blobs/a.car", b"piece")[0] == 201
        assert (blobs / "a.car").read_bytes() == b"piece"
        assert d.request("PUT", "/pieces/pieces/b.car", b"still")[0] == 201  # the store it had serves on
        plugins = {p["name"]: p for p in d.rpc("status")["plugins"]}
        assert plugins["sqlitekv"]["limits"]["text"].startswith("mem 1GiB"), plugins["sqlitekv"]["limits"]
        d.rpc("sectors.init", {"sectors": [{"miner": 9, "number": 1, "proof_type": 8}]})  # the DB serves in its new pool
        assert d.rpc("sectors.get", {"miner": 9, "number": 1})["ID"] == {"Miner": 9, "Number": 1}
        drift = d.rpc("status")["config"]
        assert drift["changes"] == ["Common.Api"] and drift["not_applied"] == [], drift  # only what needs a restart is left

        # a sink's Meta by SIGHUP: the parquet sink writes to its new Path from the next event
        moved = tmp_path / "parquet-moved"
        config.write_text(config.read_text().replace(f'Path = "{home}/data/parquet"', f'Path = "{moved}"'))
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while "SyncSectorState/parquet: new pool, sink open with the new Meta" not in d.log_text():
            assert time.monotonic() < deadline, d.log_text()[-3000:]
            time.sleep(0.1)
        d.rpc("sectors.init", {"sectors": [{"miner": 9, "number": 2, "proof_type": 8}]})
        run_cli(home, "plugin", "flush", "parquet")
        d.wait_delivered()
        assert any(moved.rglob("*.parquet")), list(moved.rglob("*"))
    finally:
        finish(d)


def test_a_config_reload_that_cannot_open_a_store_says_so_and_the_rest_serves(tmp_path: Path) -> None:
    """Item 5: a store whose folder does not exist cannot open (fsstore refuses a missing
    folder, as damocles): the reload exits 1 naming it, the stores that served go on, the store
    says why in the 404 and in status; removing the entry and reloading again clears it."""
    from .harness import prepare_home

    home = prepare_home(tmp_path / "home")
    d = start(home)
    try:
        config = home / "config.toml"
        original = config.read_text()
        missing = tmp_path / "not-made"
        config.write_text(original + f'\n[[Common.PieceStores]]\nName = "later"\nPath = "{missing}"\n')
        out = d.cli("config", "reload", check=False)
        assert out.returncode == 1
        assert "not applied: ObjStore/fsstore: reload of 'ObjStore/fsstore' refused" in out.stderr and "is not an existing folder" in out.stderr, out.stderr
        assert d.request("PUT", "/pieces/pieces/a.car", b"served")[0] == 201
        status, _, body = d.request("PUT", "/pieces/later/a.car", b"x")
        assert status == 404 and "store 'later' (fsstore) was not opened by `vsm-pool config reload`" in body.decode(), body
        st = d.rpc("status")
        assert st["config"]["not_applied"] and any(p["part"] == "store/later" for p in st["problems"]), st["problems"]

        config.write_text(original)
        out = d.cli("config", "reload")
        assert "applied: ObjStore/fsstore: new pool, stores pieces" in out.stdout, out.stdout
        st = d.rpc("status")
        assert st["config"] == {**st["config"], "differs": False, "not_applied": []} and not st["problems"], (st["config"], st["problems"])
        assert d.request("GET", "/pieces/pieces/a.car")[2] == b"served"
    finally:
        finish(d)


def test_config_reload_applies_a_persist_store_policy_from_the_next_reservation(tmp_path: Path) -> None:
    """Item 5: a persist store's AllowMiners changed in the file applies to the next
    reservation after `config reload`, without a new pool."""
    from .harness import prepare_home

    sealed = tmp_path / "sealed"
    sealed.mkdir()
    home = prepare_home(tmp_path / "home", append=f'[[Common.PersistStores]]\nName = "sealed"\nPath = "{sealed}"\nAllowMiners = [1]\n')
    d = start(home)
    try:
        d.rpc("sectors.init", {"sectors": [{"miner": 2, "number": 1, "proof_type": 8}]})
        assert d.rpc("stores.reserve_space", {"miner": 2, "number": 1, "size": 1}) is None  # miner 2 is not allowed there
        config = home / "config.toml"
        config.write_text(config.read_text().replace("AllowMiners = [1]", "AllowMiners = [1, 2]"))
        out = d.cli("config", "reload").stdout
        assert "applied: store 'sealed': policy" in out and "new pool" not in out, out
        reserved = d.rpc("stores.reserve_space", {"miner": 2, "number": 1, "size": 1})
        assert reserved is not None and "sealed" in json.dumps(reserved), reserved
    finally:
        finish(d)


def test_the_readme_first_hour_path(tmp_path: Path) -> None:
    """README "Coming from damocles-manager", the first hour: damocles' file with Driver =
    "sqlite", `start --home NEW --config vsm.cfg &`, `status` (it waits; no problem), then
    `sectors import states.jsonl`."""
    from vsm.sdk.sectors import SectorID, SectorState

    cfg = tmp_path / "vsm.cfg"
    text = DAMOCLES_CFG.read_text()
    assert '#Driver = "badger"' in text
    cfg.write_text(text.replace('#Driver = "badger"', 'Driver = "sqlite"'))
    home = tmp_path / "vsm-pool"
    d = start(home, None, "--config", str(cfg))
    try:
        out = d.cli("status").stdout
        assert out.rstrip().endswith("problems: none") and "config:" not in out, out
        states = tmp_path / "states.jsonl"
        states.write_bytes(b"".join(SectorState(SectorID(1000, n), 8).to_go_json() + b"\n" for n in range(3)))
        assert "imported 3 of 3 sectors" in d.cli("sectors", "import", str(states)).stdout
    finally:
        finish(d)
