"""Persist-store miner policies, enforced where damocles enforces them: choosing the store for
a sector's sealed files (StoreReserveSpace), over the daemon's JSON-RPC; the reservations are
kept where damocles keeps them and released when the sector is finalized."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vsm.config import load_config

from ..sectors.helpers import load_plugin
from .harness import prepare_home

pytestmark = pytest.mark.timeout(180)


def test_reserve_space_follows_allow_and_deny_miners(tmp_path: Path, start_daemon: Any) -> None:
    stores = {name: tmp_path / name for name in ("only-1000", "not-1000", "frozen")}
    for folder in stores.values():
        folder.mkdir()
    home = prepare_home(
        tmp_path / "home",
        append=f"""
[[Common.PersistStores]]
Name = "only-1000"
Path = "{stores['only-1000']}"
AllowMiners = [1000]
[[Common.PersistStores]]
Name = "not-1000"
Path = "{stores['not-1000']}"
DenyMiners = [1000, 3000]
Weight = 5
[[Common.PersistStores]]
Name = "frozen"
Path = "{stores['frozen']}"
ReadOnly = true
""",
    )
    d = start_daemon(home)
    d.rpc("sectors.init", {"sectors": [{"miner": m, "number": 1, "proof_type": 8} for m in (1000, 2000, 3000)]})
    picks = {m: {d.rpc("stores.reserve_space", {"miner": m, "number": 1, "size": 1 << 20})["Name"] for _ in range(3)} for m in (1000, 2000)}
    assert picks == {1000: {"only-1000"}, 2000: {"not-1000"}}  # deny wins, allow lists restrict, read-only never
    assert d.rpc("stores.reserve_space", {"miner": 3000, "number": 1, "size": 1 << 20}) is None  # allowed nowhere
    assert d.rpc("stores.reserve_space", {"miner": 2000, "number": 1, "size": 1 << 20, "candidates": ["frozen"]}) is None
    err = d.rpc_error("stores.reserve_space", {"miner": 1000, "number": 99, "size": 1})
    assert "SectorNotFoundError" in err["message"] and "m-1000-n-99" in err["message"]
    huge = d.rpc("stores.reserve_space", {"miner": 2000, "number": 1, "size": 1 << 60})
    assert huge is None  # no store has an exbibyte free

    d.rpc("sectors.finalize", {"miner": 1000, "number": 1})  # releases its reservation
    assert d.rpc("stores.release_reserved", {"miner": 1000, "number": 1}) is False
    d.stop()

    db = load_plugin("sqlitekv", "sqlitekv").open(dict(load_config(None, home)[0].db.meta))  # the daemon's own KV file
    db.run()
    try:
        raw = db.open_collection("common").get(b"objstore/StoreReserveSummary")  # damocles' key
    finally:
        db.close()
    summary = json.loads(raw)
    assert summary["Stats"]["only-1000"] == {"ReservedSize": 0, "Reserved": {}}
    held = summary["Stats"]["not-1000"]["Reserved"]["s-t02000-1"]
    assert held["By"] == "s-t02000-1" and held["Size"] == 1 << 20 and summary["Stats"]["not-1000"]["ReservedSize"] == 1 << 20
    assert raw.startswith(b'{"Stats":{"not-1000":{"ReservedSize":1048576,"Reserved":{"s-t02000-1":{"By":"s-t02000-1","Size":1048576,"At":')


def test_strict_persist_store_serves_only_regular_files(tmp_path: Path, start_daemon: Any) -> None:
    """GET of a FIFO in a Strict store is a prompt 404 (object not found, as damocles'
    filestore reports it), never a worker blocked opening it; regular files are served.
    (The pieces API stats first, and fsstore's stat admits regular files only, Strict or not;
    tests/conformance/test_fsstore.py checks Strict on get itself.)"""
    import os

    folder = tmp_path / "sealed"
    folder.mkdir()
    os.mkfifo(folder / "fifo")
    (folder / "s-t01000-1").write_bytes(b"sealed bytes")
    home = prepare_home(tmp_path / "home", append=f'[[Common.PersistStores]]\nName = "sealed"\nPath = "{folder}"\nStrict = true\n')
    d = start_daemon(home)
    status, _, body = d.request("GET", "/pieces/sealed/fifo")
    assert status == 404 and b"ObjectNotFoundError" in body, (status, body)
    assert d.request("GET", "/pieces/sealed/s-t01000-1")[2] == b"sealed bytes"
