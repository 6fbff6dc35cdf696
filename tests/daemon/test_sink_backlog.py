"""A disabled sink keeps its events through the real daemon (issue 13, item 1): `plugin disable`,
events, compaction, `plugin enable` -> every event exactly once; past [Common.Journal] MaxBacklog
the sink is marked (plain status, /metrics, log), never resumes past the gap, and `vsm-pool
sinks rebuild` refills it from the sector states."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from vsm.sdk.sectors import SectorID, SectorState
from vsm.sectors import write_import_file

from .harness import Daemon, prepare_home

pytestmark = pytest.mark.timeout(300)



def _home(path: Path) -> Path:
    """A home whose journal has a segment per frame (compaction can cut anywhere) and a small bound."""
    home = prepare_home(path)
    config = home / "config.toml"
    text = config.read_text()
    assert "\nMaxBacklog = 10000000\n" in text
    config.write_text(text.replace("\nMaxBacklog = 10000000\n", "\nMaxBacklog = 1500\nSegmentBytes = 1\n"))
    return home


def _import(d: Daemon, tmp_path: Path, miner: int, n: int) -> int:
    path = tmp_path / f"states-{miner}.jsonl"
    write_import_file(str(path), [SectorState(id=SectorID(miner, i), sector_type=8) for i in range(n)])
    d.cli("sectors", "import", "--chunk", "100", str(path))
    return int(d.rpc("sinks.status")["journal"]["head"])


def _parquet_rows(d: Daemon) -> list[dict[str, Any]]:
    root = d.home / "data" / "parquet"
    if not any(root.rglob("*.parquet")):
        return []
    return ds.dataset(str(root), format="parquet", partitioning="hive").to_table(columns=["seq", "kind", "miner", "number"]).to_pylist()


def _wait(what: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return got


def _sink(d: Daemon, name: str) -> dict[str, Any]:
    return d.rpc("sinks.status")["sinks"][name]  # type: ignore[no-any-return]


def test_disabled_sink_keeps_its_events_then_past_the_bound_needs_a_rebuild(start_daemon: Any, tmp_path: Path) -> None:
    d: Daemon = start_daemon(_home(tmp_path / "home"))
    head = _import(d, tmp_path, 1, 300)
    _wait(lambda: _sink(d, "parquet")["checkpoint"] >= head)
    d.cli("plugin", "disable", "parquet")
    head = _import(d, tmp_path, 2, 1000)
    # the others pass; compaction (every 5 s) keeps what the disabled sink needs
    _wait(lambda: d.rpc("sinks.status")["journal"]["first_seq"] > 1)  # what all had passed is gone
    assert d.rpc("sinks.status")["journal"]["first_seq"] <= 301
    st = d.cli("status").stdout
    assert "sink/parquet: disabled: 1000 events behind" in st and "vsm-pool plugin enable parquet" in st, st
    d.cli("plugin", "enable", "parquet")
    _wait(lambda: _sink(d, "parquet")["checkpoint"] >= head)
    seqs = sorted(r["seq"] for r in _parquet_rows(d))
    assert seqs == list(range(1, head + 1))  # every event, exactly once

    # past MaxBacklog: marked, loudly, and nothing past the gap
    d.cli("plugin", "disable", "parquet")
    _import(d, tmp_path, 3, 2000)
    _wait(lambda: _sink(d, "parquet")["needs_rebuild"])
    st = d.cli("status").stdout
    assert "sink/parquet: needs-rebuild: events" in st and "MaxBacklog = 1500" in st, st
    assert "`vsm-pool plugin enable parquet`, then `vsm-pool sinks rebuild parquet`" in st, st
    metrics = d.request("GET", "/metrics")[2].decode()
    assert 'vsm_sink_needs_rebuild{sink="parquet"} 1.0' in metrics
    assert 'vsm_problem{cause="events' in metrics and 'part="sink/parquet"' in metrics
    assert "sink 'parquet' needs a rebuild" in d.log_text()
    d.cli("plugin", "enable", "parquet")
    time.sleep(1.5)
    assert _sink(d, "parquet")["state"] == "needs-rebuild"
    assert max(r["seq"] for r in _parquet_rows(d)) == head  # never resumed past the gap

    out = d.cli("sinks", "rebuild", "parquet").stdout
    assert out.startswith("rebuilt sink parquet: 3300 sector states"), out
    head = _import(d, tmp_path, 4, 10)
    _wait(lambda: _sink(d, "parquet")["checkpoint"] >= head)
    rows = _parquet_rows(d)
    rebuilt = {(r["miner"], r["number"]) for r in rows if r["kind"] == "rebuild"}
    assert len(rebuilt) == 3300 and (3, 1999) in rebuilt
    assert sorted(r["number"] for r in rows if r["miner"] == 4) == list(range(10))
    assert len({r["seq"] for r in rows}) == len(rows)
    assert "problems: none" in d.cli("status").stdout

    # a sink whose plugin goes away: `sinks forget` drops its checkpoint (it holds nothing then)
    d.cli("plugin", "disable", "parquet")
    listed = d.cli("sinks", "status").stdout
    assert "parquet" in listed and "False" in listed, listed
    refused = d.cli("sinks", "forget", "duckdb", check=False)
    assert refused.returncode != 0 and "is running" in refused.stderr, refused.stderr
    d.cli("sinks", "forget", "parquet")
    assert "parquet" not in d.rpc("sinks.status")["sinks"]
    d.cli("plugin", "enable", "parquet")  # it starts over on a compacted journal: marked, loudly
    _wait(lambda: (_sink(d, "parquet").get("needs_rebuild") or "").endswith("before this sink was first attached)"))
