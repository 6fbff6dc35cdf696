"""manifest.toml validation: one clear line per problem, naming file and key."""

from __future__ import annotations

import pytest

from vsm.errors import ManifestError
from vsm.plugin.manifest import read_source_manifest
from vsm.sdk import Kind

KV_MODULE = "def open(meta):\n    return None\n\ndef on_init(plugins_dir, manifest):\n    pass\n"
GOOD = 'name = "p"\nkind = "KVStore"\nonInit = "on_init"\nexport = [{extPoint="Constructor", impl="open"}]\n'


def test_good_manifest_reads_as_data(write_plugin):
    folder = write_plugin(GOOD, KV_MODULE + "raise SystemExit('imported!')\n")
    manifest, warnings = read_source_manifest(folder)  # would exit if the module were imported
    assert manifest.kind is Kind.KVStore and manifest.exports == {"Constructor": "open"}
    assert manifest.module == "p" and warnings == []


@pytest.mark.parametrize(
    "manifest, module, key, cause",
    [
        ('name = "p"\nkind = "KVStore"\nexport = [', KV_MODULE, "", "TOML syntax error"),
        ('name = "p"\nkind = "Audit"\nexport = []', KV_MODULE, "kind", "unknown kind 'Audit'"),
        ('name = "my plugin"\nkind = "KVStore"', KV_MODULE, "name", "not a valid plugin name"),
        ('name = "../x"\nkind = "KVStore"', KV_MODULE, "name", "not a valid plugin name"),
        ('kind = "KVStore"', KV_MODULE, "name", "missing"),
        ('name = "p"\nkind = "KVStore"\nexport = []', KV_MODULE, "export", "must export 'Constructor'"),
        ('name = "p"\nkind = "KVStore"\nexport = [{extPoint="Open", impl="open"}]', KV_MODULE, "export[0].extPoint", "not an extension point of KVStore"),
        ('name = "p"\nkind = "KVStore"\nexport = [{extPoint="Constructor", impl="make"}]', KV_MODULE, "export.Constructor", "p.py has no top-level function 'make' (functions defined: on_init, open)"),
        ('name = "p"\nkind = "KVStore"\nexport = [{extPoint="Constructor", impl="open"}]', "def open():\n    pass\n", "export.Constructor", "p.py:1: export.Constructor: found def open(), expected def open(meta)"),
        ('name = "p"\nkind = "KVStore"\nonInit = "on_init"\nexport = [{extPoint="Constructor", impl="open"}]', "def open(meta): pass\ndef on_init(x): pass\n", "onInit", "p.py:2: onInit: found def on_init(x), expected def on_init(plugins_dir, manifest)"),
        ('name = "p"\nkind = "KVStore"\nexport = [{extPoint="Constructor", impl="open"}]', "def open(meta:\n", "", "p.py:1: syntax error"),
        ('name = "p"\nkind = "SyncSectorState"\nexport = []', KV_MODULE, "export", "at least one of"),
        ('name = "p"\nkind = "KVStore"\nmaxWorkers = -1\nexport = [{extPoint="Constructor", impl="open"}]', KV_MODULE, "maxWorkers", ">= 0"),
    ],
)
def test_bad_manifest_names_file_key_and_cause(write_plugin, manifest, module, key, cause):
    folder = write_plugin(manifest, module)
    with pytest.raises(ManifestError) as info:
        read_source_manifest(folder)
    err = info.value
    assert err.file.startswith(str(folder)), err
    assert err.key == key, err
    assert cause in str(err), err
    assert "\n" not in str(err)


def test_missing_manifest_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no manifest.toml"):
        read_source_manifest(tmp_path / "empty")
    with pytest.raises(ManifestError, match="does not exist"):
        read_source_manifest(tmp_path / "nowhere")


def test_missing_module_file(write_plugin):
    folder = write_plugin(GOOD, KV_MODULE, module_name="other")
    with pytest.raises(ManifestError, match=r"module: no p.py or p/__init__.py"):
        read_source_manifest(folder)


def test_unknown_key_is_a_warning(write_plugin):
    folder = write_plugin(GOOD + 'colour = "blue"\n', KV_MODULE)
    _, warnings = read_source_manifest(folder)
    assert len(warnings) == 1 and "colour: unknown key, ignored" in warnings[0]


def test_impl_bound_by_import_is_accepted(write_plugin):
    folder = write_plugin(GOOD, "from os import path as open\ndef on_init(a, b): pass\n")
    manifest, warnings = read_source_manifest(folder)
    assert manifest.exports == {"Constructor": "open"} and manifest.on_init == "on_init" and warnings == []


def test_optional_and_varargs_parameters_fit(write_plugin):
    folder = write_plugin(GOOD, "def open(meta, extra=None): pass\ndef on_init(*args): pass\n")
    manifest, warnings = read_source_manifest(folder)
    assert manifest.exports == {"Constructor": "open"} and manifest.on_init == "on_init" and warnings == []
