"""The bundled plugins keep the plugin format: manifest keys, impl signatures, SDK-only imports."""

from __future__ import annotations

import ast
import inspect
import pathlib
import sys
import tomllib
from typing import Any, Callable

import pytest

from vsm.sdk import Kind
from vsm.sdk._kinds import EXT_POINTS

pytestmark = pytest.mark.timeout(60)

PLUGINS = pathlib.Path(__file__).resolve().parents[2] / "plugins"
BUNDLED = ["memdb", "sqlitekv", "fsstore"]
KNOWN_KEYS = {"name", "description", "kind", "module", "version", "onInit", "onShutdown", "export",
              "maxWorkers", "requirements", "requiresPython", "testMeta", "sandbox", "pathMeta", "readPathMeta", "addressMeta", "pathIsName", "pluginsDirFiles"}


def read_manifest(name: str) -> dict[str, Any]:
    with open(PLUGINS / name / "manifest.toml", "rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize("name", BUNDLED)
def test_manifest_follows_the_format(name: str, load_plugin: Callable[[str], Any]) -> None:
    m = read_manifest(name)
    assert set(m) <= KNOWN_KEYS, f"unknown keys {set(m) - KNOWN_KEYS}"
    assert m["name"] == name
    kind = Kind(m["kind"])
    mod = load_plugin(name)
    for export in m["export"]:
        _, params = EXT_POINTS[kind][export["extPoint"]]
        impl = getattr(mod, export["impl"])
        assert tuple(inspect.signature(impl).parameters) == params
    if "onInit" in m:
        assert tuple(inspect.signature(getattr(mod, m["onInit"])).parameters) == ("plugins_dir", "manifest")


@pytest.mark.parametrize("name", BUNDLED)
def test_plugin_imports_only_the_sdk_and_stdlib(name: str) -> None:
    module = read_manifest(name).get("module", name)
    tree = ast.parse((PLUGINS / name / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for n in names:
            top = n.split(".")[0]
            assert n == "vsm.sdk" or n.startswith("vsm.sdk.") or (top != "vsm" and top in sys.stdlib_module_names), n


def test_max_workers() -> None:
    assert {n: read_manifest(n).get("maxWorkers") for n in BUNDLED} == {"memdb": 1, "sqlitekv": 1, "fsstore": 0}
