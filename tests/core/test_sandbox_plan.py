"""The sandbox's policy (vsm/plugin/isolation.plan_sandbox) for the bundled plugins: what each
may write, read and connect to, from the config it is given. (That the kernel then refuses the
rest is tests/daemon/test_isolation.py's; that the bundled plugins work under it, the daemon
tests' and tests/backends/test_sandboxed.py's.)"""

from __future__ import annotations

import os

import pytest

from vsm.config import default_config_text, load_config
from vsm.plugin.isolation import plan_sandbox
from vsm.plugin.manifest import read_source_manifest

from .conftest import BUNDLED

SOURCES = {"duckdb": "duckdb_sink", "parquet": "parquet_sink", "concurrent-limiter": "concurrent_limiter"}


def _plan(tmp_path, name: str, extra: str = ""):
    (tmp_path / "config.toml").write_text(default_config_text(tmp_path) + "\n" + extra)
    cfg, _ = load_config(None, tmp_path)
    manifest, _ = read_source_manifest(BUNDLED / SOURCES.get(name, name))
    return plan_sandbox(manifest, cfg.settings(name), cfg, (), abi=7), cfg


@pytest.mark.parametrize("name", ["memdb", "sqlitekv", "fsstore", "duckdb", "parquet", "concurrent-limiter", "redis", "s3store", "sqlsink"])
def test_every_bundled_plugin_is_sandboxed_by_default(tmp_path, name):
    plan, cfg = _plan(tmp_path, name)
    assert plan.mode == "best-effort" and plan.state == "on", plan.describe()
    writes = plan.describe()["write"]
    own = {str(tmp_path / "tmp" / name), str(tmp_path / "plugins" / f"{name}.toml"), str(tmp_path / "plugins" / f".{name}")}
    assert str(tmp_path) not in writes and all(w.startswith(str(tmp_path / "data")) or w in own for w in writes), writes
    assert str(tmp_path / "token") not in plan.rules.read and str(tmp_path) not in plan.rules.read


def test_what_the_default_home_gives_each(tmp_path):
    data = tmp_path / "data"
    expect = {
        "sqlitekv": [str(data / "kv")],
        "fsstore": [str(data / "pieces")],
        "duckdb": [str(data / "duckdb")],
        "parquet": [str(data / "parquet")],
        "memdb": [],
        "concurrent-limiter": [str(tmp_path / "plugins" / "concurrent-limiter.toml"), str(tmp_path / "plugins" / ".concurrent-limiter")],
    }
    for name, writes in expect.items():
        plan, _ = _plan(tmp_path, name)
        assert plan.describe()["write"] == [*writes, str(tmp_path / "tmp" / name)], name
        assert plan.describe()["connect"] == [], name


def test_concurrent_limiter_writes_its_two_files_of_the_plugins_dir(tmp_path):
    """Its config file and DataDir, as damocles' example keeps them (pluginsDirFiles): nothing
    else of the plugins dir, which holds the other plugins' artifacts."""
    plan, cfg = _plan(tmp_path, "concurrent-limiter")
    plugins = tmp_path / "plugins"
    mine = [str(plugins / "concurrent-limiter.toml"), str(plugins / ".concurrent-limiter")]
    assert plan.state == "on" and plan.describe()["write"] == [*mine, str(tmp_path / "tmp" / "concurrent-limiter")]
    plugins.mkdir()
    plan.prepare()  # made before it starts (a rule needs an existing path); the file empty
    assert (plugins / "concurrent-limiter.toml").read_bytes() == b"" and (plugins / ".concurrent-limiter").is_dir()
    plan, _ = _plan(tmp_path, "fsstore")
    assert not any(w.startswith(str(plugins)) for w in plan.rules.write)


def test_a_sink_reads_the_journal_segments_and_writes_none(tmp_path):
    segments = str(tmp_path / "data" / "journal" / "segments")
    for name in ("duckdb", "parquet", "sqlsink"):
        plan, _ = _plan(tmp_path, name)
        assert segments in plan.rules.read and not any(segments.startswith(w) for w in plan.rules.write), name
    plan.prepare()  # made before the pool starts (a journal not yet opened), so it can be granted
    assert os.path.isdir(segments)
    plan, _ = _plan(tmp_path, "sqlitekv")
    assert segments not in plan.rules.read


def test_addresses_come_from_the_instances_the_config_makes(tmp_path):
    plan, _ = _plan(tmp_path, "s3store")
    assert plan.rules.connect_tcp == ()  # no store uses it: no port (not AWS's 443 either)
    store = '[[Common.PersistStores]]\nName = "s3"\nPath = "/s3"\nPluginName = "s3store"\n[Common.PersistStores.Meta]\nBucket = "b"\n'
    plan, _ = _plan(tmp_path, "s3store", store + 'Endpoint = "http://10.0.0.9:9000"\n')
    assert plan.rules.connect_tcp == (9000,)
    assert plan.rules.write == tuple(w for w in plan.rules.write if not w.startswith("/s3"))  # "/s3" only names it
    plan, _ = _plan(tmp_path, "s3store", store)
    assert plan.rules.connect_tcp == (443,)  # AWS
    plan, _ = _plan(tmp_path, "sqlsink", '[Common.Plugins.sqlsink.Meta]\nDSN = "mysql://root@db.example:3307/x"\n')
    assert plan.rules.connect_tcp == (3307,)
    plan, _ = _plan(tmp_path, "redis", '[Common.Plugins.redis]\nAllowConnect = [26379]\n')
    assert plan.rules.connect_tcp == (26379,)  # not the DB: no Addr, so only what is allowed
