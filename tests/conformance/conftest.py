"""Fixtures that load the bundled plugins in-process, straight from their source folders."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import tomllib
import types
from typing import Any, Callable, Iterator

import pytest

from vsm.sdk import Config

PLUGINS = pathlib.Path(__file__).resolve().parents[2] / "plugins"


def read_manifest(name: str) -> dict[str, Any]:
    with open(PLUGINS / name / "manifest.toml", "rb") as f:
        return tomllib.load(f)


def load_plugin(name: str) -> types.ModuleType:
    """Import plugins/<name>/<module>.py under a private module name."""
    module = read_manifest(name).get("module", name)
    path = PLUGINS / name / f"{module}.py"
    mod_name = f"_vsm_plugin_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None, f"cannot import {path}"
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod  # before exec: dataclasses and pickling look the module up
    spec.loader.exec_module(mod)
    return mod


def constructor(name: str) -> Callable[..., Any]:
    """The plugin's exported Constructor function."""
    exports = {e["extPoint"]: e["impl"] for e in read_manifest(name)["export"]}
    return getattr(load_plugin(name), exports["Constructor"])


def _open_kv(name: str, tmp_path: pathlib.Path) -> Any:
    meta = {"Path": str(tmp_path / "kv" / "kv.db")} if name == "sqlitekv" else {}
    return constructor(name)(meta)


@pytest.fixture(name="load_plugin")
def load_plugin_fixture() -> Callable[[str], types.ModuleType]:
    """load_plugin(name): the plugin's module, imported from its source folder."""
    return load_plugin


@pytest.fixture(name="constructor")
def constructor_fixture() -> Callable[[str], Callable[..., Any]]:
    """constructor(name): the plugin's exported Constructor."""
    return constructor


@pytest.fixture(params=["memdb", "sqlitekv"])
def kv_db(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Any]:
    """A running DB of each bundled KVStore plugin."""
    db = _open_kv(request.param, tmp_path)
    db.run()
    yield db
    db.close()


@pytest.fixture
def make_fsstore(tmp_path: pathlib.Path) -> Callable[[bool], Any]:
    """make_store(read_only) over one folder, as the ObjStore kit wants."""
    root = tmp_path / "store"
    root.mkdir()
    open_store = constructor("fsstore")

    def make(read_only: bool) -> Any:
        return open_store(Config(name="", path=str(root), read_only=read_only))

    return make
