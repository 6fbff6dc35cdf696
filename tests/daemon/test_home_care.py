"""Issue 25 items 2-3: `vsm-pool doctor` names every damaged file of a home with its way back,
a damaged KV stops the start in one line, a damaged sink file is set aside and rebuilt, and a
backup taken under load and restored elsewhere holds every update acknowledged before it began.
Everything through the real daemon and CLI, on homes a real daemon wrote."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .harness import finish, kill_tree, launch, prepare_home, run_cli, start

pytestmark = pytest.mark.timeout(600)

MINER = 1000
SECTORS = 600


@pytest.fixture(scope="module")
def written_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home a daemon wrote and stopped: SECTORS sectors, updates, every sink delivered; the
    parquet sink then disabled and more updates made, so the journal keeps frames on disk."""
    home = prepare_home(tmp_path_factory.mktemp("care") / "home")
    d = start(home)
    try:
        for first in range(0, SECTORS, 200):
            d.rpc("sectors.init", {"sectors": [{"miner": MINER, "number": n} for n in range(first, first + 200)]})
        for n in range(0, SECTORS, 3):
            d.rpc("sectors.update", {"miner": MINER, "number": n, "fields": {"AbortReason": "first"}})
        d.wait_delivered()
        d.rpc("plugin.disable", {"name": "parquet"})
        for n in range(0, 50):
            d.rpc("sectors.update", {"miner": MINER, "number": n, "fields": {"AbortReason": "second"}})
        d.wait_delivered()
    finally:
        finish(d)
    return home


def _copy_home(src: Path, dst: Path) -> Path:
    """A copy of a stopped home, its config's paths moved to the copy (the default config
    writes them absolute)."""
    shutil.copytree(src, dst, symlinks=True)
    config = dst / "config.toml"
    config.write_text(config.read_text().replace(f'"{src}/', f'"{dst}/'))
    return dst


def _overwrite(path: Path, offset: int, n: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(n))


def _damage_kv(home: Path) -> Path:
    """Three 4 KiB pages of the SQLite file overwritten, none of them its header."""
    kv = home / "data/kv/kv.sqlite"
    size = kv.stat().st_size
    for share in (0.3, 0.55, 0.8):
        _overwrite(kv, int(size * share) // 4096 * 4096, 4096)
    return kv


def _doctor(home: Path, *extra: str) -> Any:
    return run_cli(home, "doctor", "--home", str(home), *extra, check=False, timeout=300)


def test_doctor_names_each_damaged_file_with_its_fix(written_home: Path, tmp_path: Path) -> None:
    clean = _doctor(written_home)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no problem" in clean.stdout

    home = _copy_home(written_home, tmp_path / "damaged")
    kv = _damage_kv(home)
    duck = home / "data/duckdb/sectors.duckdb"
    _overwrite(duck, duck.stat().st_size // 2 // 4096 * 4096, 64 << 10)
    parquet = sorted((home / "data/parquet").rglob("*.parquet"))[0]
    _overwrite(parquet, parquet.stat().st_size - 12, 12)  # the footer's end: its length and magic
    segment = sorted((home / "data/journal/segments").glob("seg-*.vsmj"))[0]
    _overwrite(segment, 64, 16)  # inside the first frame's payload: its crc no longer matches
    artifact = home / "plugins/plugin-memdb.vsmp"
    _overwrite(artifact, artifact.stat().st_size // 3, 200)
    (home / "token").write_bytes(b"\x00\x01garbled")

    out = _doctor(home)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stdout.splitlines()
    expect = {
        str(kv): "vsm-pool restore", str(duck): "vsm-pool doctor --repair", str(parquet): "vsm-pool doctor --repair",
        str(segment): "vsm-pool doctor --repair", str(artifact): "vsm-pool plugin build --bundled memdb",
        str(home / "token"): "vsm-pool start",
    }
    for path, fix in expect.items():
        named = [line for line in lines if line.startswith(path)]
        assert len(named) == 1, f"{path} not named once in:\n{out.stdout}"
        assert "; fix: " in named[0] and fix in named[0].split("; fix: ", 1)[1], named[0]
    assert len(lines) == len(expect), out.stdout

    broken = _copy_home(written_home, tmp_path / "bad-config")
    with open(broken / "config.toml", "a") as f:
        f.write("\n[Common.DB\nDriver = 'sqlite'\n")
    out = _doctor(broken)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert [line for line in out.stdout.splitlines() if line.startswith(str(broken / "config.toml")) and "; fix: " in line], out.stdout


def test_start_on_a_damaged_kv_refuses_in_one_line(written_home: Path, tmp_path: Path) -> None:
    home = _copy_home(written_home, tmp_path / "kv")
    kv = _damage_kv(home)
    proc, log, _ = launch(home)
    try:
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    text = log.read_text()
    assert rc != 0, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("vsm-pool: error:")]
    assert len(errors) == 1, text
    assert str(kv) in errors[0] and "is damaged" in errors[0] and "vsm-pool restore" in errors[0], errors[0]


def test_a_damaged_duckdb_is_set_aside_and_rebuilt(written_home: Path, tmp_path: Path) -> None:
    home = _copy_home(written_home, tmp_path / "duck")
    duck = home / "data/duckdb/sectors.duckdb"
    with open(duck, "r+b") as f:
        f.truncate(duck.stat().st_size // 2)
    d = start(home)  # serves, the damaged sink shown as a problem that names the way back
    try:
        problems = [p for p in d.rpc("status")["problems"] if p["part"] == "sink/duckdb"]
        assert problems and "is damaged" in problems[0]["cause"] and "vsm-pool doctor --repair" in problems[0]["cause"], problems
    finally:
        finish(d)
    out = _doctor(home, "--repair")
    assert out.returncode == 0, out.stdout + out.stderr
    assert [p.name for p in duck.parent.glob("sectors.duckdb.damaged-*")], out.stdout  # kept, renamed
    assert "rebuilt sink duckdb" in out.stdout, out.stdout
    d = start(home)
    try:
        rows = d.rpc("query", {"sql": "select count(*) from sectors"})["rows"]
        assert rows == [[SECTORS]], rows
    finally:
        finish(d)


def test_backup_under_load_restores_every_acknowledged_update(tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "live")
    d = start(home)
    try:
        d.rpc("sectors.init", {"sectors": [{"miner": MINER, "number": n} for n in range(200)]})
        acked: list[tuple[float, int, int]] = []  # (acknowledged at, sector, value)
        stop = threading.Event()
        failures: list[str] = []

        def load() -> None:  # batches of 20 updates: a few hundred a second on 2 busy cores
            value = 0
            while not stop.is_set():
                batch = [(value + i + 1, (value + i + 1) % 200) for i in range(20)]
                value += 20
                status, replies = d.post_rpc([{"jsonrpc": "2.0", "id": v, "method": "sectors.update",
                                               "params": {"miner": MINER, "number": n, "fields": {"AbortReason": f"v{v}"}}} for v, n in batch])
                now = time.time()
                by_id = {r.get("id"): r for r in replies} if status == 200 and isinstance(replies, list) else {}
                for v, n in batch:
                    if "result" in by_id.get(v, {}):
                        acked.append((now, n, v))
                    else:
                        failures.append(str(by_id.get(v, replies)))

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(3)
        began = time.time()
        dest = tmp_path / "backup"
        out = d.cli("backup", str(dest), timeout=300)
        time.sleep(0.5)
        stop.set()
        loader.join(60)
        assert not failures, failures[:3]
        before = [a for a in acked if a[0] < began]
        rate = len([a for a in before if a[0] > began - 2]) / 2
        assert rate > 100, f"{rate:.0f} updates/s before the backup: not the load this test is about"
        assert "backed up" in out.stdout, out.stdout
    finally:
        finish(d)

    restored = tmp_path / "restored"
    out = run_cli(restored, "restore", str(dest), "--home", str(restored), timeout=300)
    assert "sinks rebuilt" in out.stdout, out.stdout
    r = start(restored)
    try:
        last: dict[int, int] = {}
        for _, n, value in before:
            last[n] = max(last.get(n, 0), value)
        for n, value in sorted(last.items()):
            got = r.rpc("sectors.get", {"miner": MINER, "number": n})
            have = int(str(got["AbortReason"]).lstrip("v") or 0) if got.get("AbortReason") else 0
            assert have >= value, f"sector {n}: the restored home has update v{have}, but v{value} was acknowledged before the backup"
        rows = r.rpc("query", {"sql": "select count(*) from sectors"})["rows"]
        assert rows == [[200]], rows
    finally:
        finish(r)
    print(json.dumps({"updates_per_s_before_backup": round(rate), "acked_before": len(before), "acked_total": len(acked)}))


def test_backup_and_restore_refuse_in_one_line(written_home: Path, tmp_path: Path) -> None:
    """A KV that cannot back up says why and leaves no folder; a backup file damaged since is
    named by restore, which makes no home from it."""
    mem = _copy_home(written_home, tmp_path / "mem")
    config = mem / "config.toml"
    config.write_text(config.read_text().replace('Driver = "sqlite"', 'Driver = "memory"').replace(f'Path = "{mem}/data/kv/kv.sqlite"', ""))
    out = run_cli(mem, "backup", str(tmp_path / "mem-backup"), check=False, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("vsm-pool: error: kv.backup: the KVStore plugin 'memdb' cannot back up: memdb keeps"), out.stderr
    assert not (tmp_path / "mem-backup").exists()

    backup = tmp_path / "backup"
    run_cli(written_home, "backup", str(backup), timeout=300)  # no daemon: a manager in-process
    _overwrite(backup / "kv.backup", 4096, 16)
    out = run_cli(tmp_path, "restore", str(backup), "--home", str(tmp_path / "new"), check=False, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"vsm-pool: error: {backup / 'kv.backup'}: damaged (its sha256 differs from the one vsm-backup.json recorded): use another backup"
    ), out.stderr
    assert not (tmp_path / "new").exists()


def test_a_call_meeting_a_damaged_kv_page_says_so_in_one_line(written_home: Path, tmp_path: Path) -> None:
    """With the check at open turned off, the daemon serves on a damaged KV; a call that reads
    a damaged page fails with one line naming the file and the way back, the daemon goes on, and
    status lists the damage as a problem."""
    home = _copy_home(written_home, tmp_path / "served")
    config = home / "config.toml"
    kv_line = f'Path = "{home}/data/kv/kv.sqlite"'
    config.write_text(config.read_text().replace(kv_line, kv_line + '\nCheckOnOpen = "false"'))
    _damage_kv(home)
    d = start(home)
    try:
        errors = []
        for ws in ("online", "offline"):
            status, reply = d.post_rpc({"jsonrpc": "2.0", "id": 1, "method": "sectors.list", "params": {"worker_state": ws, "limit": 10000}})
            if "error" in reply:
                errors.append(reply["error"]["message"])
        assert errors, "no call met the damaged pages"
        for message in errors:
            assert "\n" not in message and "Traceback" not in message, message
            assert "<home>/data/kv/kv.sqlite is damaged" in message and "vsm-pool restore" in message, message
        damaged = [p for p in d.rpc("status")["problems"] if p["part"] == "kv"]  # and status is not green
        assert damaged and damaged[0]["state"] == "damaged" and "vsm-pool restore" in damaged[0]["fix"], d.rpc("status")["problems"]
        assert "kv: damaged:" in d.cli("status").stdout
    finally:
        finish(d)
