"""Loading plugins into their pools: onInit, import failures, strict mode, the log line, and the
conformance kit run by `vsm-pool plugin test` against real built artifacts."""

from __future__ import annotations

import pytest
from loguru import logger

from vsm.plugin.artifact import build
from vsm.errors import PluginLoadError
from vsm.plugin.loader import PluginState, Registry, discover

from .conftest import BUNDLED, run_cli

pytestmark = pytest.mark.timeout(120)

KV = 'name = "{name}"\nkind = "KVStore"\nonInit = "on_init"\nexport = [{{extPoint="Constructor", impl="open"}}]\n'


@pytest.fixture
def logs():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


@pytest.mark.parametrize("name", ["memdb", "sqlitekv", "fsstore", "duckdb_sink", "parquet_sink", "concurrent_limiter"])
def test_bundled_plugins_pass_their_conformance_kit_in_a_pool(tmp_path, name):
    artifact, _, _ = build(BUNDLED / name, tmp_path)
    proc = run_cli("plugin", "test", str(artifact))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert " 0 failed (cleanup: " in last and int(last.split()[1]) >= 6, proc.stdout


def test_plugin_test_reports_a_broken_plugin(tmp_path, write_plugin):
    folder = write_plugin(
        KV.format(name="liar"),
        "from vsm.sdk import KeyNotFoundError\n"
        "def on_init(d, m): pass\n"
        "class C:\n"
        "    def __init__(self): self.d = {}\n"
        "    def get(self, k): return self.d.get(k, b'')\n"  # wrong: must raise KeyNotFoundError
        "    def put(self, k, v): self.d[k] = v\n"
        "    def delete(self, k): self.d.pop(k, None)\n"
        "    def peek(self, k, fn): return fn(self.get(k))\n"
        "    def scan(self, p): return iter(sorted((k, v) for k, v in self.d.items() if k.startswith(p)))\n"
        "    def view(self, fn): return fn(self)\n"
        "    def update(self, fn): return fn(self)\n"
        "    def need_retry_transactions(self): return False\n"
        "class DB:\n"
        "    def __init__(self): self.c = {}\n"
        "    def run(self): pass\n"
        "    def close(self): pass\n"
        "    def open_collection(self, n): return self.c.setdefault(n, C())\n"
        "def open(meta): return DB()\n",
        name="liar",
    )
    artifact, _, _ = build(folder, tmp_path / "out")
    proc = run_cli("plugin", "test", str(artifact))
    assert proc.returncode == 1
    assert "FAIL  get_missing_raises: " in proc.stdout and " failed" in proc.stdout.splitlines()[-1]


def _registry(tmp_path, write_plugin, module: str) -> Registry:
    out = tmp_path / "plugins"
    build(BUNDLED / "memdb", out)
    build(write_plugin(KV.format(name="bad"), module, name="bad"), out)
    plugins, _ = discover(out, entry_points=False)
    return Registry(plugins)


@pytest.mark.parametrize(
    "module, words, cause",
    [
        (
            "raise RuntimeError('no config for bad')\ndef open(meta): pass\ndef on_init(d, m): pass\n",
            "import error in plugin",
            "RuntimeError: no config for bad (at bad.py:1 in <module>)",
        ),
        (
            "import json\nimport no_such_module_xyz\ndef open(meta): pass\ndef on_init(d, m): pass\n",
            "import error in plugin",
            "ModuleNotFoundError: No module named 'no_such_module_xyz' (at bad.py:2 in <module>)",
        ),
        (
            "def open(meta): pass\ndef on_init(d, m):\n    raise ValueError('bad plugins dir ' + d)\n",
            "call Plugin OnInit failure",
            "ValueError: bad plugins dir",
        ),
    ],
)
def test_failing_plugin_is_disabled_and_the_rest_go_on(tmp_path, write_plugin, logs, module, words, cause):
    registry = _registry(tmp_path, write_plugin, module)
    try:
        registry.start_all(needed={"bad", "memdb"})
        by_name = {p.manifest.name: p for p in registry.plugins}
        assert by_name["bad"].state is PluginState.DISABLED and cause in by_name["bad"].error
        assert "\n" not in by_name["bad"].error and "plugin-bad.vsmp" in by_name["bad"].error
        assert by_name["memdb"].state is PluginState.READY
        warning = [line for line in logs if f"{words} 'KVStore/bad'" in line]
        assert len(warning) == 1 and cause in warning[0], logs
        assert by_name["bad"].error.startswith("import error: " if "import" in words else "onInit failure: ")
        assert "loaded plugin 'KVStore/memdb', build time: '" in "\n".join(logs)
        assert "at bad.py:3 in on_init" in by_name["bad"].error or "import" in words
        assert not any("loaded plugin 'KVStore/bad'" in line for line in logs)
    finally:
        registry.close()


def test_strict_mode_stops_on_a_failing_plugin(tmp_path, write_plugin):
    registry = _registry(tmp_path, write_plugin, "def open(meta): pass\ndef on_init(d, m):\n    raise ValueError('nope')\n")
    try:
        with pytest.raises(PluginLoadError, match="KVStore/bad.*nope"):
            registry.start_all(needed={"bad", "memdb"}, strict=True)
    finally:
        registry.close()


def test_log_line_is_exactly_the_go_format(tmp_path, logs):
    artifact, manifest, _ = build(BUNDLED / "memdb", tmp_path)
    plugins, _ = discover(tmp_path, entry_points=False)
    registry = Registry(plugins)
    try:
        registry.start_all(needed={"memdb"})
    finally:
        registry.close()
    assert f"loaded plugin 'KVStore/memdb', build time: '{manifest.build_time}'." in logs


def test_on_shutdown_runs_in_every_worker_when_the_pool_stops(tmp_path, write_plugin):
    marks = tmp_path / "marks"
    marks.mkdir()
    folder = write_plugin(
        'name = "tidy"\nkind = "KVStore"\nonShutdown = "on_shutdown"\nexport = [{extPoint="Constructor", impl="open"}]\n',
        "import os\n"
        f"MARKS = {str(marks)!r}\n"
        "def open(meta): return None\n"
        "def on_shutdown(manifest):\n"
        "    open_ = __builtins__['open'] if isinstance(__builtins__, dict) else __builtins__.open\n"
        "    with open_(os.path.join(MARKS, f'{manifest.name}-{os.getpid()}'), 'w'): pass\n",
        name="tidy",
    )
    build(folder, tmp_path / "plugins")
    plugins, _ = discover(tmp_path / "plugins", entry_points=False)
    registry = Registry(plugins)
    pool = registry.start(plugins[0], workers=2)
    pids = {w["pid"] for w in pool.status()["workers"]}
    registry.close()
    assert {p.name for p in marks.iterdir()} == {f"tidy-{pid}" for pid in pids}
    assert plugins[0].pool is None and plugins[0].state is PluginState.LOADED
