"""The home folder: config.toml, plugins/ (artifacts), data/, the API token and the pid lock.

    ~/.vsm-pool/            (--home, or $VSM_HOME)
      config.toml           commented default written on first use
      plugins/              plugin-<name>.vsmp; the bundled plugins are built here on first use
      data/                 kv/kv.sqlite, pieces/, journal/, duckdb/sectors.duckdb, parquet/ (a folder
                            each: a sandboxed plugin may write its own folder only)
      token                 API bearer token, mode 0600
      daemon.json           pid and listen address of the running daemon
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PLUGINS", "bundled_plugin_sources", "bundled_plugins_dir", "bundled_root", "daemon_info", "ensure_home", "read_token", "token_path"]

# Bundled plugins built into a new home: the embedded default needs no server. The plugins for
# real backends (redis, s3store, sqlsink) are built on request: `vsm-pool plugin build --bundled`.
DEFAULT_PLUGINS = ("memdb", "sqlitekv", "fsstore", "duckdb_sink", "parquet_sink", "concurrent_limiter")


def bundled_root() -> Path:
    """The folder holding plugins/ and bench/: the source tree, or vsm/_bundled in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_bundled", here.parent):
        if (candidate / "plugins").is_dir() and (candidate / "bench").is_dir():
            return candidate
    raise FileNotFoundError("the bundled plugins and benchmarks are missing from this installation of vsm-pool")


def bundled_plugins_dir() -> Path:
    """plugins/ of the source tree, or its copy inside an installed wheel."""
    return bundled_root() / "plugins"


def bundled_plugin_sources() -> list[Path]:
    return sorted(p for p in bundled_plugins_dir().iterdir() if (p / "manifest.toml").is_file())


def ensure_home(home: Path) -> Path:
    """Create the home folder's layout and default config if missing; build any bundled plugin
    whose artifact is not in the plugins dir yet. Returns the config file."""
    import tomli
    from loguru import logger

    from .config import default_config_text
    from .plugin.artifact import artifact_name, build

    home.mkdir(parents=True, exist_ok=True)
    for folder in ("pieces", "kv", "duckdb"):  # the default config's stores, each in its own folder
        (home / "data" / folder).mkdir(parents=True, exist_ok=True)
    plugins = home / "plugins"
    plugins.mkdir(exist_ok=True)
    config = home / "config.toml"
    if not config.exists():
        config.write_text(default_config_text(home), encoding="utf-8")
        logger.info("wrote default config {}", config)
    for src in bundled_plugin_sources():
        if src.name not in DEFAULT_PLUGINS:
            continue
        name = tomli.loads((src / "manifest.toml").read_text(encoding="utf-8"))["name"]
        if not (plugins / artifact_name(name)).exists():
            path, _, _ = build(src, plugins)
            logger.info("built bundled plugin {}", path.name)
    os.chmod(home, 0o700)
    return config


def token_path(home: Path) -> Path:
    return Path(home) / "token"


def read_token(home: Path) -> str:
    return token_path(home).read_text().strip()


def daemon_info(home: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(home) / "daemon.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
