"""`vsm-pool plugin build` / `plugin new` and reading artifacts back, through the real CLI."""

from __future__ import annotations

import datetime
import json
import zipfile

import pytest

from vsm.plugin.artifact import read_artifact_manifest
from vsm.errors import ArtifactError

from .conftest import BUNDLED, run_cli


def _json_tail(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


@pytest.mark.parametrize("name", ["memdb", "sqlitekv", "fsstore"])
def test_build_bundled_plugin_like_the_go_tool(tmp_path, name):
    proc = run_cli("plugin", "build", "--src-dir", str(BUNDLED / name), "--out-dir", str(tmp_path), check=True)
    first = proc.stdout.splitlines()[0]
    assert first == f'Package "{BUNDLED / name}" as plugin "{tmp_path / f"plugin-{name}.vsmp"}" success.'
    printed = _json_tail(proc.stdout)
    assert printed["name"] == name and printed["kind"] in ("KVStore", "ObjStore")
    stamped = datetime.datetime.fromisoformat(printed["buildTime"])  # RFC 3339
    assert stamped.tzinfo is not None
    manifest, _ = read_artifact_manifest(tmp_path / f"plugin-{name}.vsmp")
    assert manifest.build_time == printed["buildTime"]
    assert [p.name for p in tmp_path.iterdir()] == [f"plugin-{name}.vsmp"]  # no temp file left


@pytest.mark.parametrize(
    "kind, name",
    [("KVStore", "AtomicCounter"), ("ObjStore", "my_objstore"), ("SyncSectorState", "my-sink"), ("RegisterJsonRpc", "concurrent-limiter")],
)
def test_new_plugin_source_builds(tmp_path, kind, name):
    """Names as damocles allows them (its examples: concurrent-limiter; AtomicCounter)."""
    run_cli("plugin", "new", "--kind", kind, "--dir", str(tmp_path), name, check=True)
    proc = run_cli("plugin", "build", "--src-dir", str(tmp_path / name), "--out-dir", str(tmp_path / "out"), check=True)
    assert _json_tail(proc.stdout)["kind"] == kind and _json_tail(proc.stdout)["name"] == name
    listed = json.loads(run_cli("plugin", "list", "--dir", str(tmp_path / "out"), "--json", check=True).stdout)
    assert [(p["name"], p["artifact"].rsplit("/", 1)[-1]) for p in listed] == [(name, f"plugin-{name}.vsmp")]


def test_new_refuses_bad_name_and_existing_folder(tmp_path):
    proc = run_cli("plugin", "new", "--kind", "KVStore", "--dir", str(tmp_path), "../escape")
    assert proc.returncode == 2 and "not a valid plugin name" in proc.stderr
    run_cli("plugin", "new", "--kind", "KVStore", "--dir", str(tmp_path), "twice", check=True)
    proc = run_cli("plugin", "new", "--kind", "KVStore", "--dir", str(tmp_path), "twice")
    assert proc.returncode == 2 and "exists already" in proc.stderr


def test_build_refuses_invalid_source_with_one_line(tmp_path, write_plugin):
    folder = write_plugin('name = "p"\nkind = "KVStore"\nexport = [{extPoint="Constructor", impl="nope"}]\n', "def open(meta): pass\n")
    proc = run_cli("plugin", "build", "--src-dir", str(folder), "--out-dir", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"vsm-pool: error: {folder}/manifest.toml: export.Constructor: {folder}/p.py has no top-level function 'nope' (functions defined: open)"
    )
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_artifact_errors_name_the_file(tmp_path):
    good = tmp_path / "plugin-memdb.vsmp"
    run_cli("plugin", "build", "--src-dir", str(BUNDLED / "memdb"), "--out-dir", str(tmp_path), check=True)
    truncated = tmp_path / "plugin-cut.vsmp"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_zip = tmp_path / "plugin-text.vsmp"
    not_zip.write_text("hello")
    no_manifest = tmp_path / "plugin-empty.vsmp"
    with zipfile.ZipFile(no_manifest, "w") as zf:
        zf.writestr("src/x.py", "")
    cases = {
        truncated: "not a readable zip archive",
        not_zip: "not a readable zip archive",
        no_manifest: "has no manifest.json",
        tmp_path / "plugin-gone.vsmp": "no such artifact file",
    }
    for path, cause in cases.items():
        with pytest.raises(ArtifactError) as info:
            read_artifact_manifest(path)
        assert str(info.value).startswith(str(path)) and cause in str(info.value)


def test_build_bundled_by_name(tmp_path):
    proc = run_cli("plugin", "build", "--bundled", "memdb", "--out-dir", str(tmp_path), check=True)
    assert (tmp_path / "plugin-memdb.vsmp").is_file(), proc.stdout
    proc = run_cli("plugin", "build", "--bundled", "nosuch", "--out-dir", str(tmp_path))
    assert proc.returncode == 2 and "no bundled plugin 'nosuch'" in proc.stderr
