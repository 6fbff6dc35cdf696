"""Config: the seed's keys, and one line naming file and key path for every mistake."""

from __future__ import annotations

import pytest

from vsm.config import MAX_WORKERS, default_config_text, load_config, resolve_home
from vsm.errors import ConfigError

from .conftest import run_cli


def _load(tmp_path, text):
    (tmp_path / "config.toml").write_text(text)
    return load_config(None, tmp_path)


def test_default_config_loads_and_uses_embedded_plugins(tmp_path):
    cfg, warnings = _load(tmp_path, default_config_text(tmp_path))
    assert warnings == []
    assert cfg.db.driver == "sqlite" and cfg.db.plugin_name == "sqlitekv"
    assert cfg.db.meta == {"Path": str(tmp_path / "data" / "kv" / "kv.sqlite")}
    assert [s.name for s in cfg.piece_stores] == ["pieces"] and cfg.piece_stores[0].plugin_name == "fsstore"
    assert cfg.plugins_dir == str(tmp_path / "plugins")
    assert cfg.settings("duckdb").meta["Path"].endswith("sectors.duckdb")


def test_seed_keys(tmp_path):
    cfg, _ = _load(
        tmp_path,
        """
[Common.Plugins]
Dir = "/abs/plugins"
[Common.Plugins.redis]
Workers = 4
CallTimeout = 2.5
[[Common.PieceStores]]
Name = "my-s3-store"
Path = "/path"
PluginName = "s3store"
[Common.PieceStores.Meta]
Bucket = "mybucket"
[[Common.PersistStores]]
Path = "/mnt/sealed"
ReadOnly = true
Weight = 0
[Common.DB]
Driver = "Plugin"
[Common.DB.Plugin]
PluginName = "redis"
[Common.DB.Plugin.Meta]
Addr = "127.0.0.1:6379"
""",
    )
    assert cfg.plugins_dir == "/abs/plugins"
    assert cfg.settings("redis").workers == 4 and cfg.settings("redis").call_timeout == 2.5
    s3 = cfg.piece_stores[0]
    assert (s3.name, s3.path, s3.plugin_name, s3.meta) == ("my-s3-store", "/path", "s3store", {"Bucket": "mybucket"})
    sealed = cfg.persist_stores[0]
    assert sealed.name == "/mnt/sealed" and sealed.read_only and sealed.weight == 1  # Go: empty Name is Path, Weight 0 is 1
    assert (cfg.db.driver, cfg.db.plugin_name, cfg.db.meta) == ("plugin", "redis", {"Addr": "127.0.0.1:6379"})


@pytest.mark.parametrize(
    "text, key, cause",
    [
        ("[Common.DB\n", "", "TOML syntax error"),
        ('[[Common.PieceStores]]\nPath = "/p"\nWeight = "heavy"\n', "Common.PieceStores[0].Weight", "must be an integer, got 'heavy'"),
        ("[[Common.PieceStores]]\nName = 'x'\n", "Common.PieceStores[0].Path", "missing"),
        ('[Common.DB]\nDriver = "mongo"\n', "Common.DB.Driver", 'vsm-pool has no MongoDB KVStore'),
        ('[Common.DB]\nDriver = "plugin"\n', "Common.DB.Plugin.PluginName", "missing"),
        ("[Common.Plugins.redis]\nWorkers = 0\n", "Common.Plugins.redis.Workers", "must be between 1 and"),
        # issue 20 item 6: a pool of hundreds of processes, or a timeout no call can meet
        (f"[Common.Plugins.redis]\nWorkers = {MAX_WORKERS + 8}\n", "Common.Plugins.redis.Workers", f"must be between 1 and {MAX_WORKERS}"),
        ("[Common.Plugins.redis]\nCallTimeout = 1e-9\n", "Common.Plugins.redis.CallTimeout", "must be between 0.1 and 86400 seconds"),
        ("[Common.Plugins.redis]\nStartTimeout = 0\n", "Common.Plugins.redis.StartTimeout", "must be between 1 and 3600 seconds"),
        ("[Common.Api]\nMaxListLimit = 0\n", "Common.Api.MaxListLimit", "must be between 1 and"),
        ("[Common.Api]\nHeaderTimeout = 1e-9\n", "Common.Api.HeaderTimeout", "must be between 0.5 and"),
        ("[Common.Plugins]\nStrict = 'yes'\n", "Common.Plugins.Strict", "must be true or false"),
        ('[[Common.PieceStores]]\nName="a"\nPath="/x"\n[[Common.PersistStores]]\nName="a"\nPath="/y"\n', "Common.PersistStores[0].Name", "used twice"),
        # issue 16: resource limits per plugin, or for all
        ('[Common.Plugins.redis]\nMemoryLimit = "lots"\n', "Common.Plugins.redis.MemoryLimit", 'must be a size such as "2GiB"'),
        ('[Common.Plugins]\nMemoryLimit = "1MiB"\n', "Common.Plugins.MemoryLimit", "must be at least 128MiB"),
        ("[Common.Plugins.redis]\nMaxOpenFiles = 3\n", "Common.Plugins.redis.MaxOpenFiles", "must be between 16 and"),
        ('[Common.Plugins.redis]\nCPUs = "0-x"\n', "Common.Plugins.redis.CPUs", "must be CPU numbers"),
        ('[Common.Plugins.redis]\nCPUs = "4096"\n', "Common.Plugins.redis.CPUs", "not available to this process"),
        ("[Common.Plugins.redis]\nNice = 40\n", "Common.Plugins.redis.Nice", "must be between -20 and 19"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, key, cause):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert info.value.file == str(tmp_path / "config.toml") and info.value.key == key
    assert cause in str(info.value) and "\n" not in str(info.value)


def test_config_not_utf8_is_one_line(tmp_path):
    """issue 20 item 6: a config with invalid UTF-8 ends in one line through the CLI, no traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[Common.Api]\nListen = "127.0.0.1:1789"\n# caf\xe9\n')
    with pytest.raises(ConfigError, match=r"not UTF-8 text: byte 0xe9 at line 3 \(offset 44\)"):
        load_config(bad, tmp_path)
    proc = run_cli("start", "--home", str(tmp_path / "home"), "--config", str(bad), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"vsm-pool: error: {bad}: not UTF-8 text: byte 0xe9 at line 3 (offset 44)", proc.stderr


def test_kv_constructor_failure_is_one_line(tmp_path):
    """issue 20 item 6: a KVStore whose Constructor raises stops start-up with one line."""
    home = tmp_path / "home"
    run_cli("config", "init", "--home", str(home), check=True)
    config = home / "config.toml"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config.write_text(config.read_text().replace(f'Path = "{home}/data/kv/kv.sqlite"', f'Path = "{blocker}/kv.sqlite"'))
    proc = run_cli("start", "--home", str(home), "--listen", "127.0.0.1:0", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"vsm-pool: error: {config}: Common.DB: the KVStore plugin 'sqlitekv' failed to open the DB: "), proc.stderr


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file does not exist"):
        load_config(tmp_path / "nope.toml", tmp_path)


def test_unknown_keys_warn(tmp_path):
    _, warnings = _load(tmp_path, "[Common.DB]\nDriverr = 'x'\n[Extra]\n")
    assert any("Common.DB.Driverr: unknown key" in w for w in warnings)
    assert any("Extra: unknown key" in w for w in warnings)


def test_home_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("VSM_HOME", str(tmp_path / "env"))
    assert resolve_home(None) == tmp_path / "env"
    assert resolve_home(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("VSM_HOME")
    assert resolve_home(None).name == ".vsm-pool"


def test_config_init_writes_home(tmp_path):
    home = tmp_path / "home"
    proc = run_cli("config", "init", "--home", str(home), check=True)
    assert proc.stdout.strip() == str(home / "config.toml")
    cfg, warnings = load_config(None, home)
    assert warnings == []
    built = sorted(p.name for p in (home / "plugins").iterdir())
    assert "plugin-sqlitekv.vsmp" in built and "plugin-fsstore.vsmp" in built and "plugin-memdb.vsmp" in built
    again = run_cli("config", "init", "--home", str(home))
    assert again.returncode != 0 and "exists" in again.stderr


def test_backend_keys_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"Common.Plugins.Backend: must be one of process, ray, got 'dask'"):
        _load(tmp_path, '[Common.Plugins]\nBackend = "dask"\n')
    with pytest.raises(ConfigError, match=r"Common.Plugins.x.RayAddress: differs from"):
        _load(tmp_path, '[Common.Plugins]\nRayAddress = "a:1"\n[Common.Plugins.x]\nRayAddress = "b:2"\n')
    with pytest.raises(ConfigError, match=r"Common.Plugins.x.RayResources.CPU: must be a number >= 0"):
        _load(tmp_path, '[Common.Plugins.x]\nRayResources = { CPU = -1 }\n')
    cfg, _ = _load(tmp_path, '[Common.Plugins]\nBackend = "ray"\n[Common.Plugins.x]\nBackend = "process"\n')
    assert cfg.settings("x").backend == "process" and cfg.settings("other").backend == "ray"


def test_resource_limits_default_inherit_and_override(tmp_path):
    cfg, warnings = _load(
        tmp_path,
        '[Common.Plugins]\nMemoryLimit = "2GiB"\nNice = 2\n[Common.Plugins.redis]\nMemoryLimit = 0\nCPUs = [0]\nMaxOpenFiles = 0\n',
    )
    assert not [w for w in warnings if "unknown key" in w], warnings
    redis, other = cfg.settings("redis"), cfg.settings("fsstore")
    assert (redis.memory_limit, redis.cpus, redis.max_open_files, redis.nice) == (None, (0,), None, 2)
    assert (other.memory_limit, other.cpus, other.max_open_files, other.nice) == (2 << 30, None, 4096, 2)
    plain, _ = _load(tmp_path, "")
    assert (plain.settings("x").memory_limit, plain.settings("x").max_open_files) == (4 << 30, 4096)
