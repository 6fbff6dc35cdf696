"""`vsm-pool plugin new` writes a plugin that passes its kind's kit as written, and whose names
shadow nothing an author's module may need (the Constructor is not `open`)."""

from __future__ import annotations

import ast
import builtins
import tomllib

import pytest

from vsm.plugin.conformance import JSONRPC_CHECKS, KVSTORE_CHECKS, OBJSTORE_CHECKS, SECTORSYNC_CHECKS

from .conftest import run_cli

pytestmark = pytest.mark.timeout(180)

CHECKS = {"KVStore": KVSTORE_CHECKS, "ObjStore": OBJSTORE_CHECKS, "SyncSectorState": SECTORSYNC_CHECKS, "RegisterJsonRpc": JSONRPC_CHECKS}


@pytest.mark.parametrize("kind", list(CHECKS))
def test_a_new_plugin_passes_its_kit_as_written(tmp_path, kind):
    name = f"my_{kind.lower()}"
    run_cli("plugin", "new", "--kind", kind, "--dir", str(tmp_path), name, check=True)
    run_cli("plugin", "build", "--src-dir", str(tmp_path / name), "--out-dir", str(tmp_path / "out"), check=True)
    proc = run_cli("plugin", "test", str(tmp_path / "out" / f"plugin-{name}.vsmp"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    statuses = {line.split()[1].rstrip(":"): line.split()[0] for line in proc.stdout.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")}
    assert set(statuses) == {c.__name__ for c in CHECKS[kind]} and "FAIL" not in statuses.values(), proc.stdout
    assert proc.stdout.splitlines()[-1].startswith(f"{kind}/{name}: "), proc.stdout


@pytest.mark.parametrize("kind", list(CHECKS))
def test_a_new_plugins_names_shadow_no_builtin(tmp_path, kind):
    name = f"my_{kind.lower()}"
    run_cli("plugin", "new", "--kind", kind, "--dir", str(tmp_path), name, check=True)
    manifest = tomllib.loads((tmp_path / name / "manifest.toml").read_text())
    tree = ast.parse((tmp_path / name / f"{name}.py").read_text())
    top = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    top |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert not top & set(dir(builtins)), top & set(dir(builtins))
    impls = {e["impl"] for e in manifest["export"]}
    assert impls <= top and "open" not in impls
