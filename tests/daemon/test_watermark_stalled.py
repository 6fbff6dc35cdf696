"""A watermark held by one change while later ones commit is a problem the operator sees
(issue 24 item 3): `vsm-pool status`, `vsm-pool sinks status`, /metrics and the problems list
the dashboard's badge shows name the ticket, its client and since when; it clears once the
change ends. The KVStore is sqlitekv's code with two workers, whose writes of sector 7 wait
while a gate file exists (the other worker serves the other updates meanwhile)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vsm.plugin.artifact import build
from vsm.sdk.sectors import SectorID, SectorState
from vsm.sectors import write_import_file

from .harness import ROOT, cli_env, prepare_home

pytestmark = pytest.mark.timeout(240)

MINER = 5151


def _gated_kv(tmp_path: Path, home: Path, gate: Path) -> None:
    src = tmp_path / "gatedkv"
    shutil.copytree(ROOT / "plugins" / "sqlitekv", src)
    manifest = src / "manifest.toml"
    text = re.sub(r'(?m)^name = ".*"$', 'name = "gatedkv"', manifest.read_text())
    text = re.sub(r"(?m)^sandbox = true", "sandbox = false", text)  # it reads the gate file, outside its folder
    manifest.write_text(re.sub(r"(?m)^maxWorkers = 1 ", "maxWorkers = 2 ", text))
    module = src / "sqlitekv.py"
    module.write_text(module.read_text() + f'''

class _Probe:
    """Records the keys an update's function writes, without a transaction."""

    def __init__(self):
        self.keys = []

    def put(self, key, value):
        self.keys.append(bytes(key))

    def delete(self, key):
        self.keys.append(bytes(key))


_ungated_update = Collection.update


def _gated_update(self, fn):
    import os, time
    probe = _Probe()
    try:
        fn(probe)
    except Exception:
        pass
    if any(k.endswith(b"-n-7") for k in probe.keys):
        while os.path.exists({str(gate)!r}):
            time.sleep(0.05)
    return _ungated_update(self, fn)


Collection.update = _gated_update
_ungated_put_many = Collection.put_many


def _gated_put_many(self, items):
    import os, time
    items = list(items)
    if any(bytes(k).endswith(b"-n-7") for k, _ in items):
        while os.path.exists({str(gate)!r}):
            time.sleep(0.05)
    return _ungated_put_many(self, items)


Collection.put_many = _gated_put_many
''')
    build(src, home / "plugins")


def test_a_held_watermark_is_a_problem_until_it_moves(start_daemon: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    home = prepare_home(tmp_path / "home", append="[Common.Plugins.gatedkv]\nWorkers = 2\nCallTimeout = 300\n")
    config = home / "config.toml"
    config.write_text(config.read_text().replace('Driver = "sqlite"', 'Driver = "plugin"\n[Common.DB.Plugin]\nPluginName = "gatedkv"', 1))
    _gated_kv(tmp_path, home, gate)
    d = start_daemon(home)
    states = tmp_path / "states.jsonl"
    write_import_file(str(states), (SectorState(SectorID(MINER, n), 8) for n in range(1, 10)))
    d.cli("sectors", "import", str(states))
    d.wait_delivered()
    gate.write_text("")
    head = d.rpc("sinks.status")["journal"]["head"]
    held = subprocess.Popen([sys.executable, "-m", "vsm", "sectors", "update", str(MINER), "7", "AbortReason=slow"], cwd=ROOT,
                            env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while d.rpc("sinks.status")["journal"]["head"] <= head:  # journaled; its KV write waits at the gate
            assert time.monotonic() < deadline and held.poll() is None, held.communicate()
            time.sleep(0.05)
        d.cli("sectors", "update", str(MINER), "8", "AbortReason=behind")
        d.cli("sectors", "update", str(MINER), "9", "AbortReason=behind")
        deadline = time.monotonic() + 90
        while True:
            rows = [p for p in d.rpc("status")["problems"] if p["part"] == "journal"]
            if rows:
                break
            assert time.monotonic() < deadline, "no problem while the watermark waited: " + str(d.rpc("sinks.status")["journal"])
            time.sleep(0.5)
        assert [r["state"] for r in rows] == ["stalled"], rows
        cause = rows[0]["cause"]
        assert f"for seq {head + 1}-{head + 1} (update of m-{MINER}-n-7 by JSON-RPC from 127.0.0.1) since " in cause, cause
        assert "2 events committed to the KV wait behind it and reach no sink" in cause, cause
        assert "journal: stalled: the watermark waits at seq" in d.cli("status").stdout
        assert "journal: stalled: the watermark waits at seq" in d.cli("sinks", "status").stdout
        metrics = d.request("GET", "/metrics")[2].decode()
        assert "vsm_journal_watermark_gap_events 2.0" in metrics, metrics
        age = float(re.search(r"^vsm_journal_watermark_age_seconds (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
        assert age >= 10, metrics
        assert re.search(r'^vsm_problem\{.*part="journal".*state="stalled"', metrics, re.M), metrics
    finally:
        gate.unlink(missing_ok=True)
        _, err = held.communicate(timeout=120)
    # its answer came, after 10 s and more (the HeaderTimeout guard dropped such a request)
    assert held.returncode == 0, err
    d.wait_delivered()
    assert d.rpc("sectors.get", {"miner": MINER, "number": 7})["AbortReason"] == "slow"
    assert not [p for p in d.rpc("status")["problems"] if p["part"] == "journal"]
    metrics = d.request("GET", "/metrics")[2].decode()
    assert "vsm_journal_watermark_gap_events 0.0" in metrics and "vsm_journal_watermark_age_seconds 0.0" in metrics, metrics
