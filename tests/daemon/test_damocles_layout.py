"""damocles' key layout: states under `sector-states/...` in `meta` and
`sector-states-offline/...` in `offline_meta`; a home written with bare keys by an earlier
vsm-pool is moved there at start, once, with a log line, and nothing else is touched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vsm.sdk.sectors import SectorID, SectorState

from vsm.config import load_config

from ..sectors.helpers import load_plugin
from .harness import prepare_home, run_cli, start, stop_checked

pytestmark = pytest.mark.timeout(240)


def _kv(home: Path) -> Any:
    """The home's sqlitekv database, opened in this process through the plugin itself."""
    db = load_plugin("sqlitekv", "sqlitekv").open(dict(load_config(None, home)[0].db.meta))  # the daemon's own KV file
    db.run()
    return db


def _keys(db: Any, coll: str) -> dict[bytes, bytes]:
    it = db.open_collection(coll).scan(b"")
    try:
        return dict(it)
    finally:
        it.close()


def test_bare_keys_of_an_earlier_home_move_to_damocles_layout(tmp_path: Path, start_daemon: Any) -> None:
    home = prepare_home(tmp_path / "home")
    online = {n: SectorState(SectorID(1000, n), 8).to_go_json() for n in range(5)}
    offline = SectorState(SectorID(1000, 9), 8, finalized=True).to_go_json()
    db = _kv(home)
    meta = db.open_collection("meta")
    for n, v in online.items():  # as vsm-pool wrote them before
        meta.put(b"m-1000-n-%d" % n, v)
    db.open_collection("offline_meta").put(b"m-1000-n-9", offline)
    meta.put(b"sector-number/1000", b"41")  # damocles' allocator: not a state, left alone
    meta.put(b"m-notes", b"x")  # not a sector key either
    db.close()

    d = start_daemon(home)
    assert "moved 5 bare keys m-<miner>-n-<number> in 'meta' to damocles' sector-states/" in d.log_text()
    assert "moved 1 bare keys m-<miner>-n-<number> in 'offline_meta' to damocles' sector-states-offline/" in d.log_text()
    got = json.loads(d.cli("sectors", "get", "--json", "1000", "3").stdout)
    assert got["ID"] == {"Miner": 1000, "Number": 3}
    listed = d.cli("sectors", "list", "--offline", "--json").stdout
    assert [s["ID"]["Number"] for s in json.loads(listed)] == [9]
    d.cli("sectors", "update", "1000", "4", "AbortReason=moved")
    d.stop()

    db = _kv(home)
    try:
        assert _keys(db, "meta").keys() == {*(b"sector-states/m-1000-n-%d" % n for n in range(5)), b"sector-number/1000", b"m-notes"}
        assert _keys(db, "meta")[b"sector-states/m-1000-n-2"] == online[2]
        assert _keys(db, "offline_meta") == {b"sector-states-offline/m-1000-n-9": offline}
    finally:
        db.close()

    # idempotent: the next start has nothing to move and says nothing
    d = start_daemon(home)
    assert "bare keys" not in d.log_text().split("loaded plugin")[-1]
    assert json.loads(d.cli("sectors", "get", "--json", "1000", "4").stdout)["AbortReason"] == "moved"
    d.stop()


def test_import_finalize_restore_route_and_flag_as_damocles(tmp_path: Path) -> None:
    """Without a daemon (the CLI runs the manager for each command). As damocles' state
    manager and import-json: a finalized state imports offline, the others online; finalize
    sets Finalized while moving offline, restore clears it while moving back."""
    home = prepare_home(tmp_path / "home")
    states = tmp_path / "states.jsonl"
    states.write_bytes(
        SectorState(SectorID(77, 1), 8).to_go_json() + b"\n" + SectorState(SectorID(77, 2), 8, finalized=True).to_go_json() + b"\n"
    )
    assert "imported 2 of 2" in run_cli(home, "sectors", "import", str(states)).stdout
    db = _kv(home)
    try:
        assert list(_keys(db, "meta")) == [b"sector-states/m-77-n-1"]
        assert list(_keys(db, "offline_meta")) == [b"sector-states-offline/m-77-n-2"]
    finally:
        db.close()

    run_cli(home, "sectors", "finalize", "77", "1")
    db = _kv(home)
    try:
        assert _keys(db, "meta") == {}
        stored = _keys(db, "offline_meta")[b"sector-states-offline/m-77-n-1"]
        assert json.loads(stored)["Finalized"] is True and stored == SectorState(SectorID(77, 1), 8, finalized=True).to_go_json()
    finally:
        db.close()
    restored = json.loads(run_cli(home, "sectors", "restore", "--json", "77", "2").stdout)
    assert restored["Finalized"] is False
    online = json.loads(run_cli(home, "sectors", "list", "--json").stdout)
    assert [(s["ID"]["Number"], s["Finalized"]) for s in online] == [(2, False)]

    # --online puts every state online, whatever its flag (an explicit choice)
    again = tmp_path / "again.jsonl"
    again.write_bytes(SectorState(SectorID(78, 1), 8, finalized=True).to_go_json() + b"\n")
    run_cli(home, "sectors", "import", "--online", str(again))
    assert json.loads(run_cli(home, "sectors", "get", "--json", "78", "1").stdout)["WorkerState"] == "online"


def test_daemon_runs_on_damocles_default_config_unchanged(tmp_path: Path) -> None:
    """`vsm-pool start --config <damocles home>/sector-manager.cfg`, the file as damocles'
    `daemon init` writes it: the daemon starts on its embedded store, says why in one
    warning, and serves sectors."""
    damocles_home = tmp_path / "damocles"
    damocles_home.mkdir()
    cfg = damocles_home / "sector-manager.cfg"
    cfg.write_bytes((Path(__file__).parents[1] / "core" / "damocles" / "sector-manager.cfg").read_bytes())
    home = prepare_home(tmp_path / "home")
    d = start(home, None, "--config", str(cfg))
    try:
        assert 'Common.DB.Driver: not set (damocles-manager\'s default is "badger"' in d.log_text()
        assert d.rpc("sectors.init", {"sectors": [{"miner": 5, "number": 1, "proof_type": 8}]})[0]["ID"] == {"Miner": 5, "Number": 1}
    finally:
        stop_checked(d)
