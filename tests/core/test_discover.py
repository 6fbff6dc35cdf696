"""Discovery: artifacts in the plugins dir and entry-point plugins, read as data."""

from __future__ import annotations

import json
import sys
import zipfile

import pytest

from vsm.plugin.artifact import build
from vsm.errors import PluginLoadError
from vsm.plugin.loader import PluginState, discover

from .conftest import BUNDLED, run_cli


def _rewrite_manifest(artifact, **changes):
    with zipfile.ZipFile(artifact) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    data = json.loads(entries["manifest.json"])
    data.update(changes)
    entries["manifest.json"] = json.dumps(data).encode()
    with zipfile.ZipFile(artifact, "w") as zf:
        for n, b in entries.items():
            zf.writestr(n, b)


def test_discovers_in_file_name_order_and_ignores_other_files(tmp_path):
    for name in ("sqlitekv", "fsstore", "memdb"):
        build(BUNDLED / name, tmp_path)
    (tmp_path / "README.txt").write_text("not a plugin")
    (tmp_path / "subdir").mkdir()
    build(BUNDLED / "memdb", tmp_path / "subdir")  # not recursive
    plugins, _ = discover(tmp_path, entry_points=False)
    assert [p.manifest.name for p in plugins] == ["fsstore", "memdb", "sqlitekv"]
    assert all(p.state is PluginState.LOADED for p in plugins)


def test_empty_and_missing_plugin_dir(tmp_path):
    assert discover(tmp_path, entry_points=False)[0] == []
    with pytest.raises(PluginLoadError, match=r"nowhere: plugins dir does not exist"):
        discover(tmp_path / "nowhere", entry_points=False)


def test_duplicate_name_names_both_files_and_the_rest_loads(tmp_path):
    """Issue 24 item 4: a name declared twice costs the second artifact, not the scan."""
    first, _, _ = build(BUNDLED / "memdb", tmp_path)
    build(BUNDLED / "sqlitekv", tmp_path)
    copy = tmp_path / "plugin-memdb-copy.vsmp"  # sorts before plugin-memdb.vsmp
    copy.write_bytes(first.read_bytes())
    found = {p.source: p for p in discover(tmp_path, entry_points=False)[0]}
    assert found[copy].state is PluginState.LOADED and found[first].state is PluginState.FAILED
    assert str(first) in found[first].error and str(copy) in found[first].error and "remove one" in found[first].error
    assert found[tmp_path / "plugin-sqlitekv.vsmp"].state is PluginState.LOADED
    # the one running now keeps its name (a rescan)
    found = {p.source: p for p in discover(tmp_path, entry_points=False, keep=[first])[0]}
    assert found[first].state is PluginState.LOADED and found[copy].state is PluginState.FAILED


@pytest.mark.parametrize(
    "changes, cause",
    [
        ({"spiVersion": 99}, "built for vsm-pool SPI 99, this manager speaks SPI 1: rebuild the plugin"),
        ({"requiresPython": ">=4.0"}, "requires Python >=4.0, this is Python 3."),
        ({"requirements": ["no such package"]}, "requirement 'no such package' is not a pip requirement"),
        ({"requirements": ["pyarrow>=999"]}, "requirement 'pyarrow>=999' conflicts with vsm-pool's runtime: every worker runs pyarrow "),
        ({"requirements": ["cloudpickle<1"]}, "requirement 'cloudpickle<1' conflicts with vsm-pool's runtime: every worker runs cloudpickle "),
    ],
)
def test_incompatible_artifact_fails_alone_with_a_clear_line(tmp_path, changes, cause):
    build(BUNDLED / "fsstore", tmp_path)
    bad, _, _ = build(BUNDLED / "memdb", tmp_path)
    _rewrite_manifest(bad, **changes)
    plugins, _ = discover(tmp_path, entry_points=False)
    by_name = {p.manifest.name: p for p in plugins}
    assert by_name["fsstore"].state is PluginState.LOADED
    assert by_name["memdb"].state is PluginState.FAILED
    assert by_name["memdb"].error.startswith(str(bad)) and cause in by_name["memdb"].error


def test_broken_artifact_fails_alone(tmp_path):
    build(BUNDLED / "memdb", tmp_path)
    (tmp_path / "plugin-broken.vsmp").write_bytes(b"PK\x03\x04 garbage")
    plugins, _ = discover(tmp_path, entry_points=False)
    states = {p.source.name: (p.state, p.error) for p in plugins}
    assert states["plugin-memdb.vsmp"][0] is PluginState.LOADED
    assert states["plugin-broken.vsmp"][0] is PluginState.FAILED
    assert "not a readable zip archive" in states["plugin-broken.vsmp"][1]


def test_entry_point_plugin_is_found_without_importing_it(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "acme_kv"
    pkg.mkdir(parents=True)
    (pkg / "manifest.toml").write_text('name = "acme"\nkind = "KVStore"\nmodule = "acme_kv"\nexport = [{extPoint="Constructor", impl="open"}]\n')
    (pkg / "__init__.py").write_text("raise SystemExit('imported in the manager!')\ndef open(meta): pass\n")
    dist = tmp_path / "site" / "acme_kv-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-kv\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[vsm_pool.plugins]\nacme = acme_kv\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    plugins, _ = discover(None, entry_points=True)
    acme = [p for p in plugins if p.manifest.name == "acme"]
    assert len(acme) == 1 and acme[0].state is PluginState.LOADED and acme[0].source == pkg
    assert "acme_kv" not in sys.modules


def test_plugin_list_cli(tmp_path):
    build(BUNDLED / "memdb", tmp_path)
    (tmp_path / "plugin-broken.vsmp").write_text("nope")
    proc = run_cli("plugin", "list", "--dir", str(tmp_path), "--json", check=True)
    rows = json.loads(proc.stdout)
    assert [(r["name"], r["kind"], r["state"]) for r in rows] == [("broken", "-", "failed"), ("memdb", "KVStore", "loaded")]
    assert rows[1]["version"] and rows[1]["build_time"] and rows[1]["artifact"].endswith("plugin-memdb.vsmp")
    human = run_cli("plugin", "list", "--dir", str(tmp_path), check=True).stdout
    assert human.splitlines()[0].split()[:5] == ["KIND", "NAME", "VERSION", "BUILD_TIME", "STATE"]
