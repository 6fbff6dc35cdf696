"""The home folder: config.toml, plugins/ (artifacts), data/, the API token and the pid lock.

    ~/.vsm-pool/            (--home, or $VSM_HOME)
      config.toml           commented default written on first use
      plugins/              plugin-<name>.vsmp; the bundled plugins are built here on first use
      data/                 kv/kv.sqlite, pieces/, journal/, duckdb/sectors.duckdb, parquet/ (a folder
                            each: a sandboxed plugin may write its own folder only)
      token                 API bearer token, mode 0600
      daemon.json           pid and listen address of the running daemon
      daemon.starting       pid of a `vsm-pool start` that does not serve yet
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PLUGINS", "bundled_plugin_sources", "bundled_plugins_dir", "bundled_sources_by_name", "bundled_root", "daemon_info", "ensure_home", "mark_starting", "starting_pid", "read_token", "token_path"]

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


def bundled_sources_by_name() -> dict[str, Path]:
    """Each bundled plugin's source folder by its manifest name (duckdb: .../duckdb_sink), the
    name a config and `plugin build --bundled` use."""
    import tomli

    return {tomli.loads((src / "manifest.toml").read_text(encoding="utf-8"))["name"]: src for src in bundled_plugin_sources()}


def ensure_home(home: Path, own_config: bool = True, bundled_plugins: bool = True) -> Path:
    """Create the home folder's layout and default config if missing; build any bundled plugin
    whose artifact is not in the plugins dir yet, and rebuild one that is an older build of the
    bundled plugin (_refresh_bundled). Returns the config file. A home started with `--config
    FILE` (`own_config=False`) gets no config.toml of its own, and its plugins/ only when that
    config loads them from there (`bundled_plugins`: issue 26)."""
    from loguru import logger

    from .config import default_config_text
    from .plugin.artifact import artifact_name, build

    home.mkdir(parents=True, exist_ok=True)
    for folder in ("pieces", "kv", "duckdb"):  # the default config's stores, each in its own folder
        (home / "data" / folder).mkdir(parents=True, exist_ok=True)
    plugins = home / "plugins"
    plugins.mkdir(exist_ok=True)
    config = home / "config.toml"
    if own_config and not config.exists():
        config.write_text(default_config_text(home), encoding="utf-8")
        logger.info("wrote default config {}", config)
    for name, src in bundled_sources_by_name().items() if bundled_plugins else ():
        if src.name not in DEFAULT_PLUGINS:
            continue
        if not (plugins / artifact_name(name)).exists():
            path, _, _ = build(src, plugins)
            logger.info("built bundled plugin {}", path.name)
        else:
            _refresh_bundled(home, src, plugins / artifact_name(name))
    os.chmod(home, 0o700)
    return config


def _refresh_bundled(home: Path, src: Path, artifact: Path) -> None:
    """Rebuild `artifact` from the bundled source `src` when it is a build of the same plugin
    name and version whose content differs (made by an older vsm-pool: e.g. its manifest did not
    yet say `sandbox = true`), so a home's bundled plugins follow the installed vsm-pool. A
    build of another version (the operator's own) is left alone; the replaced file is kept as
    `<artifact>.old` (not loaded). Never while a daemon runs on this home: its workers import
    from the file."""
    import fcntl

    from loguru import logger

    from .errors import ArtifactError, ManifestError
    from .plugin.artifact import artifact_digest, build, read_artifact_manifest, source_digest
    from .plugin.manifest import read_source_manifest

    try:
        have, _ = read_artifact_manifest(artifact)
    except (ArtifactError, ManifestError):
        return  # not readable: discovery reports it; the operator's to replace
    bundled, _ = read_source_manifest(src)
    if (have.name, have.version) != (bundled.name, bundled.version) or artifact_digest(artifact) == source_digest(src):
        return
    fd = os.open(home / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the daemon holds it while it runs
        except BlockingIOError:
            logger.warning("bundled plugin {} is out of date; it is rebuilt at the next start of vsm-pool on {}", artifact.name, home)
            return
        shutil.copy2(artifact, artifact.with_name(artifact.name + ".old"))
        build(src, artifact.parent)  # replaces the file at once (a rename)
        logger.info("rebuilt bundled plugin {}: this vsm-pool's build differs (the previous file is kept as {}.old)", artifact.name, artifact.name)
    finally:
        os.close(fd)


def token_path(home: Path) -> Path:
    return Path(home) / "token"


def read_token(home: Path) -> str:
    return token_path(home).read_text().strip()


def mark_starting(home: Path) -> Path:
    """<home>/daemon.starting: this process's pid, from the first moment of `vsm-pool start` until
    it ends; a command run before the daemon serves (daemon.json) waits for it instead of saying
    that no daemon runs (issue 26). The caller deletes it."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "daemon.starting"
    path.write_text(f"{os.getpid()}\n")
    return path


def starting_pid(home: Path) -> int:
    """The pid in <home>/daemon.starting while that process is a `vsm-pool start`, else 0: a
    marker a kill -9 left behind may name a pid the system gave to another program since
    (`stop` signals this pid). Whether it still runs is the caller's check."""
    try:
        pid = int((Path(home) / "daemon.starting").read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except (OSError, ValueError):
        return 0
    names = {os.path.basename(a) for a in args[:3]}
    return pid if "start" in {a.decode(errors="replace") for a in args} and names & {b"vsm-pool", b"vsm"} else 0


def daemon_info(home: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(home) / "daemon.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
