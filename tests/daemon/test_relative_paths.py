"""Relative paths in a plugin store's Path and in plugin Meta are relative to the home folder,
as the README says (issue 13, item 8), not to the daemon's working directory."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from vsm.plugin.artifact import build

from .harness import ROOT, Daemon, prepare_home

pytestmark = pytest.mark.timeout(180)

REL_STORE, REL_PARQUET = "rel-store-issue13", "rel-parquet-issue13"


def test_relative_paths_resolve_against_the_home(start_daemon: Any, tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home")
    src = tmp_path / "myfs"
    shutil.copytree(ROOT / "plugins" / "fsstore", src)
    manifest = src / "manifest.toml"
    manifest.write_text(re.sub(r'(?m)^name = ".*"$', 'name = "myfs"', manifest.read_text()))
    build(src, home / "plugins")
    (home / REL_STORE).mkdir()
    config = home / "config.toml"
    text = config.read_text()
    text = re.sub(r'(?m)^(\[Common.Plugins.parquet.Meta\]\nPath = )".*"', rf'\1"{REL_PARQUET}"', text)
    assert REL_PARQUET in text
    config.write_text(text + f'\n[[Common.PieceStores]]\nName = "rel"\nPath = "{REL_STORE}"\nPluginName = "myfs"\n')
    try:
        d: Daemon = start_daemon(home)  # its working directory is the repository (harness)
        status, _, body = d.request("PUT", "/pieces/rel/a/b.bin", b"relative")
        assert status == 201, body
        assert (home / REL_STORE / "a" / "b.bin").read_bytes() == b"relative"
        d.rpc("sectors.init", {"sectors": [{"miner": 5, "number": 1, "proof_type": 8}]})
        deadline = time.monotonic() + 30
        while not list((home / REL_PARQUET).rglob("*.parquet")):
            assert time.monotonic() < deadline, d.rpc("sinks.status")
            time.sleep(0.2)
        assert not (ROOT / REL_STORE).exists() and not (ROOT / REL_PARQUET).exists()
    finally:
        for junk in (ROOT / REL_STORE, ROOT / REL_PARQUET):  # where the old code put them
            shutil.rmtree(junk, ignore_errors=True)
