"""The bundled concurrent-limiter, as damocles' example of the same name: its own config file
in the plugins dir, limits per name, slots held across a restart of the daemon (persisted in
DataDir) and shared by every worker of its pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .harness import prepare_home

pytestmark = pytest.mark.timeout(180)


def test_limits_from_its_config_and_slots_survive_a_restart(tmp_path: Path, start_daemon: Any) -> None:
    # a DataDir of its own choice: the sandbox grants only <plugins dir>/.concurrent-limiter
    home = prepare_home(tmp_path / "home", append=f'[Common.Plugins.concurrent-limiter]\nWorkers = 2\nAllowWrite = ["{tmp_path / "slots"}"]\n')
    (tmp_path / "slots").mkdir()
    (home / "plugins" / "concurrent-limiter.toml").write_text(
        f'datadir = "{tmp_path / "slots"}"\n[Concurrent]\nadd_pieces = 1\npc1 = 2\n'
    )
    d = start_daemon(home)
    assert d.rpc("DAMOCLES_LIMITER.Acquire", ["add_pieces", "w1"]) == "0-add_pieces"
    assert [d.rpc("DAMOCLES_LIMITER.Acquire", ["add_pieces", f"w{i}"]) for i in range(2, 6)] == [""] * 4  # both workers agree
    assert [d.rpc("DAMOCLES_LIMITER.Acquire", ["pc1", f"w{i}"]) for i in range(3)] == ["0-pc1", "1-pc1", ""]
    d.stop()
    import sqlite3

    held = sqlite3.connect(tmp_path / "slots" / "slots.sqlite").execute("SELECT slot, id FROM slots ORDER BY slot").fetchall()
    assert held == [("0-add_pieces", "w1"), ("0-pc1", "w0"), ("1-pc1", "w1")]  # kept in DataDir, each with its 30 s lease

    d = start_daemon(home)
    assert d.rpc("DAMOCLES_LIMITER.Extend", ["0-add_pieces", "w1"]) is True  # the holder goes on (its lease renewed)
    assert d.rpc("DAMOCLES_LIMITER.Acquire", ["add_pieces", "w9"]) == ""
    assert d.rpc("DAMOCLES_LIMITER.Release", ["0-add_pieces", "w1"]) is True
    assert d.rpc("DAMOCLES_LIMITER.Acquire", ["add_pieces", "w9"]) == "0-add_pieces"
