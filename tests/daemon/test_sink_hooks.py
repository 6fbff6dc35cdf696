"""A SyncSectorState plugin with damocles' Go hooks, built and run by the daemon: each hook is
called once per operation with the arguments damocles' state manager passes (OnImport gets
the override the import was made with)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from vsm.plugin.artifact import build
from vsm.sdk.sectors import SectorID, SectorState

from .harness import prepare_home

pytestmark = pytest.mark.timeout(180)

GOSINK = '''
import json


class Recorder:
    def __init__(self, path):
        self.path = path

    def _log(self, *row):
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\\n")

    def on_import(self, worker_state, state, override):
        self._log("OnImport", worker_state, [state.id.miner, state.id.number], override)

    def on_init(self, sectors, worker_state):
        self._log("OnInit", [s.id.number for s in sectors], worker_state)

    def on_update(self, sector_id, worker_state, fields):
        self._log("OnUpdate", sector_id.number, worker_state, sorted(fields))


def make_sink(meta):
    return Recorder(meta["Path"])
'''


def test_go_hooks_once_per_operation_with_the_real_override(tmp_path: Path, start_daemon: Any) -> None:
    src = tmp_path / "gosink"
    src.mkdir()
    (src / "manifest.toml").write_text(
        'name = "gosink"\nkind = "SyncSectorState"\nmodule = "gosink"\nversion = "1.0.0"\n'
        'export = [{extPoint = "Constructor", impl = "make_sink"}]\nmaxWorkers = 1\n'
    )
    (src / "gosink.py").write_text(GOSINK)
    log = tmp_path / "hooks.jsonl"
    home = prepare_home(tmp_path / "home", append=f'[Common.Plugins.gosink.Meta]\nPath = "{log}"\n')
    build(src, home / "plugins")
    d = start_daemon(home)
    states = tmp_path / "states.jsonl"
    states.write_bytes(b"".join(SectorState(SectorID(9, n), 8).to_go_json() + b"\n" for n in (1, 2)))
    d.cli("sectors", "import", str(states))
    d.cli("sectors", "import", "--override", str(states))
    d.rpc("sectors.init", {"sectors": [{"miner": 9, "number": n, "proof_type": 8} for n in (10, 11)]})
    d.rpc("sectors.init", {"sectors": [{"miner": 9, "number": 12, "proof_type": 8}]})
    d.cli("sectors", "update", "9", "10", "AbortReason=x")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(log.read_text().splitlines() if log.exists() else []) < 7:
        time.sleep(0.05)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [
        ["OnImport", "online", [9, 1], False],
        ["OnImport", "online", [9, 2], False],
        ["OnImport", "online", [9, 1], True],
        ["OnImport", "online", [9, 2], True],
        ["OnInit", [10, 11], "online"],
        ["OnInit", [12], "online"],
        ["OnUpdate", 10, "online", ["AbortReason"]],
    ]
