"""damocles-manager's own config file, read with damocles' meaning: every key it writes is
known, keys match case-insensitively (BurntSushi/toml), what vsm-pool cannot do (Badger,
MongoDB) is one line that says what to do instead, never a silent fallback.

damocles/sector-manager.cfg is byte for byte what `damocles-manager daemon init` writes
(damocles/gen_default_config.go: DefaultConfig(true) through ConfigComment, BurntSushi/toml
v1.5.0)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from vsm.config import load_config
from vsm.errors import ConfigError

from .conftest import run_cli

DEFAULT_CFG = Path(__file__).parent / "damocles" / "sector-manager.cfg"


def _load(tmp_path: Path, text: str, name: str = "config.toml"):  # type: ignore[no-untyped-def]
    (tmp_path / name).write_text(text)
    return load_config(tmp_path / name, tmp_path)


def _uncommented() -> str:
    """The default with every example value set: each key damocles writes."""
    return re.sub(r"^#(?=\w)", "", DEFAULT_CFG.read_text(), flags=re.M)


def test_damocles_default_config_loads_unchanged(tmp_path: Path) -> None:
    damocles_home = tmp_path / "damocles"
    damocles_home.mkdir()
    shutil.copy(DEFAULT_CFG, damocles_home / "sector-manager.cfg")
    cfg, warnings = load_config(damocles_home / "sector-manager.cfg", tmp_path / "home")
    f = damocles_home / "sector-manager.cfg"
    assert warnings == [
        f'{f}: Common.DB.Driver: not set (damocles-manager\'s default is "badger", which vsm-pool cannot open): '
        'using vsm-pool\'s embedded SQLite store; write Driver = "sqlite" to say so',
        f"{f}: Common.PieceStores[0]: an entry without any key (as damocles-manager's `daemon init` writes it): ignored",
        f"{f}: Common.PersistStores[0]: an entry without any key (as damocles-manager's `daemon init` writes it): ignored",
    ]
    assert cfg.db.plugin_name == "sqlitekv" and cfg.piece_stores == () and cfg.persist_stores == ()

    # the same file beside damocles' Badger data: that data cannot be read here, so no start
    (damocles_home / "meta").mkdir()
    (damocles_home / "meta" / "MANIFEST").write_bytes(b"badger")
    with pytest.raises(ConfigError) as info:
        load_config(damocles_home / "sector-manager.cfg", tmp_path / "home")
    assert info.value.key == "Common.DB.Driver" and f"its data is in {damocles_home}" in str(info.value)
    assert "vsm-pool sectors import" in str(info.value) and "\n" not in str(info.value)


def test_every_key_damocles_writes_is_known(tmp_path: Path) -> None:
    text = _uncommented()
    with pytest.raises(ConfigError, match=r'Common\.DB\.Driver: "badger" is damocles-manager\'s embedded store.*set Driver = "sqlite"'):
        _load(tmp_path, text)
    cfg, warnings = _load(tmp_path, text.replace('Driver = "badger"', 'Driver = "sqlite"'))
    assert warnings == []
    piece, persist = cfg.piece_stores[0], cfg.persist_stores[0]
    assert (piece.name, piece.path, piece.plugin_name, piece.meta) == ("{store_name}", "{store_path}", "s3store", {"SomeKey": "SomeValue"})
    assert (persist.allow_miners, persist.deny_miners, persist.weight) == ((1, 2), (3, 4), 1)
    assert [persist.allows(m) for m in (1, 2, 3, 5)] == [True, True, False, False]


def test_keys_match_case_insensitively(tmp_path: Path) -> None:
    cfg, warnings = _load(
        tmp_path,
        """
[common.db]
driver = "Plugin"
[Common.DB.plugin]
pluginname = "memdb"
[Common.DB.Plugin.Meta]
KeyCase = "kept"
[[common.persiststores]]
path = "/mnt/a"
readonly = true
allowminers = [7]
[Common.API]
Token = "for damocles' chain services"
[Common.Api]
listen = "127.0.0.1:1999"
""",
    )
    assert warnings == []
    assert (cfg.db.driver, cfg.db.plugin_name, cfg.db.meta) == ("plugin", "memdb", {"KeyCase": "kept"})
    store = cfg.persist_stores[0]
    assert (store.path, store.read_only, store.allows(7), store.allows(8)) == ("/mnt/a", True, True, False)
    assert cfg.api.listen == "127.0.0.1:1999"
    with pytest.raises(ConfigError, match=r"Common\.DB\.driver: set twice: keys match case-insensitively"):
        _load(tmp_path, '[Common.DB]\nDriver = "sqlite"\ndriver = "memory"\n')


@pytest.mark.parametrize(
    "text, key, says",
    [
        ('[Common.DB]\nDriver = "mongo"\n', "Common.DB.Driver", 'set Driver = "plugin"'),
        ('[Common.DB]\nDriver = "Badger"\n', "Common.DB.Driver", 'set Driver = "sqlite"'),
        ('[Common.DB.Badger]\nBaseDir = "/var/damocles"\n', "Common.DB.Driver", "(BaseDir '/var/damocles')"),
        ("[Common.MongoKVStore]\nEnable = true\nDSN = 'mongodb://x'\n", "Common.MongoKVStore.Enable", "remove [Common.MongoKVStore]"),
        ("[[Common.PieceStores]]\nPath = '/p'\nPlugin = '/opt/plugins/objstore.so'\n", "Common.PieceStores[0].Plugin", "set PluginName"),
        ("[[Common.PersistStores]]\nPath = '/p'\nDenyMiners = [-1]\n", "Common.PersistStores[0].DenyMiners[0]", "miner actor id"),
        ("[[Common.PersistStores]]\nPluginName = 's3store'\n", "Common.PersistStores[0].Name", "needs a Name"),
    ],
)
def test_what_vsm_pool_cannot_do_is_one_line_saying_what_to_do(tmp_path: Path, text: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert info.value.key == key and says in str(info.value) and "\n" not in str(info.value)


def test_store_names_paths_and_v05_plugin_key(tmp_path: Path) -> None:
    cfg, warnings = _load(
        tmp_path,
        """
[Common.DB]
Driver = "sqlite"
[Common.MongoKVStore]
Enable = false
[[Common.PieceStores]]
Path = "data/pieces"
[[Common.PieceStores]]
Name = "s3"
Plugin = "s3store"
""",
    )
    assert warnings == []
    local, s3 = cfg.piece_stores
    # damocles: an empty Name is Path as written; Path relative to the home folder here
    assert (local.name, local.path, local.plugin_name) == ("data/pieces", str(tmp_path / "data" / "pieces"), "fsstore")
    assert (s3.name, s3.path, s3.plugin_name) == ("s3", "", "s3store")  # v0.5 `Plugin` names it


def test_scan_persist_stores(tmp_path: Path) -> None:
    for name, body in (("a", {"ID": "6df11a94", "Weight": 2, "AllowMiners": [1001], "readonly": True}), ("b", None)):
        (tmp_path / "mnt" / name).mkdir(parents=True)
        if body is not None:
            (tmp_path / "mnt" / name / "sectorstore.json").write_text(json.dumps(body))
    cfg, warnings = _load(tmp_path, f'[Common]\nScanPersistStores = ["{tmp_path}/mnt/*"]\n[Common.DB]\nDriver = "sqlite"\n')
    assert warnings == []
    (found,) = cfg.persist_stores
    assert (found.name, found.path, found.weight, found.read_only, found.allow_miners) == (
        "6df11a94", str(tmp_path / "mnt" / "a"), 2, True, (1001,)
    )


def test_start_refuses_damocles_config_beside_its_badger_data(tmp_path: Path) -> None:
    """Through the CLI: `start --config sector-manager.cfg` beside Badger data is one line
    (tests/daemon/test_damocles_layout.py starts the daemon on the same file without it)."""
    damocles_home = tmp_path / "damocles"
    damocles_home.mkdir()
    shutil.copy(DEFAULT_CFG, damocles_home / "sector-manager.cfg")
    (damocles_home / "offline_meta").mkdir()
    (damocles_home / "offline_meta" / "MANIFEST").write_bytes(b"badger")
    proc = run_cli("start", "--home", str(tmp_path / "home"), "--config", str(damocles_home / "sector-manager.cfg"),
                   "--listen", "127.0.0.1:0", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"vsm-pool: error: {damocles_home / 'sector-manager.cfg'}: Common.DB.Driver: not set, so damocles-manager's default \"badger\""
    ), proc.stderr
