"""`vsm-pool backup DEST` and `vsm-pool restore SRC --home DIR`: a home, hot, into a folder; a
folder into a new home that starts (issue 25, item 3).

    vsm-pool backup DEST                          the daemon (or a manager started for it)
      1. DEST/kv.backup   <- kv.backup (JSON-RPC, admin) -> the KV plugin's worker: its DB's own
                             backup(dest) into the worker's temp folder (a sandboxed plugin may
                             write there), moved into DEST by the daemon
      2. DEST/config.toml, token, tokens.json, plugins/*.vsmp, plugin-state.json: copies
      3. DEST/vsm-backup.json  written last: what was copied, each file's sha256, the source home
                             and the moment the backup began; a folder without it is no backup

    vsm-pool restore SRC --home DIR               no daemon: DIR is new
      1. every file's sha256 checked against vsm-backup.json (a damaged copy is named, not used)
      2. config.toml with the source home's paths moved under DIR; token, tokens.json, plugins
      3. kv.backup -> the restored config's DB Meta Path
      4. a manager started in-process on DIR rebuilds every sink from the sector states
         (`sinks rebuild`): the sinks' files are not copied, the KV holds their truth

What a restored home holds: every state committed to the KV before the KV's backup ran (the
DB's backup is one moment of it: sqlitekv copies in one read transaction), so every update
acknowledged before `vsm-pool backup` began; the sinks hold one row per sector (kind "rebuild")
and lack the events' history. What the sinks alone held (the history in sector_events, the
Parquet files) is not in a backup: keep those files' own copies if you need them.

Crash argument: a backup is complete only once vsm-backup.json is in place (written to a temp
name, fsynced, renamed); restore refuses a folder without it or with a file whose hash differs.
A restore killed midway leaves DIR partly made, never SRC changed: remove DIR and run it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import VsmError

__all__ = ["BackupError", "backup_home", "backup_kv", "restore_home", "MANIFEST"]

MANIFEST = "vsm-backup.json"
KV_FILE = "kv.backup"
FORMAT = 1


class BackupError(VsmError):
    """A backup or a restore that cannot be done: one line, what and why."""


def backup_kv(manager: Any, dest: str) -> dict[str, Any]:
    """(daemon side, JSON-RPC kv.backup) The KV's consistent copy at `dest`, a new file."""
    if not os.path.isabs(dest) or not os.path.isdir(os.path.dirname(dest)) or os.path.exists(dest):
        raise ValueError(f"dest must be a new file in an existing folder, as an absolute path; got {dest!r}")
    db = manager.db
    if db is None:
        raise RuntimeError("the DB is not open: the manager is not running")
    started = time.monotonic()
    tmp = db.pool.call("backup", timeout=None)  # the worker's other threads serve meanwhile
    try:
        shutil.move(tmp, dest)
        _fsync(dest)
    except BaseException:
        for left in (tmp, dest):
            if os.path.exists(left):
                os.unlink(left)
        raise
    return {"plugin": manager.config.db.plugin_name, "bytes": os.path.getsize(dest), "seconds": time.monotonic() - started}


def backup_home(client: Any, cfg: Any, home: Path, dest: Path, step: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Write the backup folder `dest` (new or empty) of `home`, its KV through `client` (the
    daemon's, or a LocalClient); returns the manifest."""
    dest = dest.resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest}: exists and is not an empty folder: back up into a new folder")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o700)  # it holds the tokens and every sector state
    try:
        return _write_backup(client, cfg, home, dest, step)
    except BaseException:
        for left in dest.iterdir():  # a part of a backup is no backup: leave none behind
            if left.is_dir():
                shutil.rmtree(left)
            else:
                left.unlink()
        if created:
            dest.rmdir()
        raise


def _write_backup(client: Any, cfg: Any, home: Path, dest: Path, step: Callable[[str], None]) -> dict[str, Any]:
    began = time.time()
    step("KV")
    kv = client.call("kv.backup", {"dest": str(dest / KV_FILE)})
    files = {KV_FILE: str(dest / KV_FILE)}
    step("config and tokens")
    for src, name in ((Path(cfg.file), "config.toml"), (home / "token", "token"), (home / "tokens.json", "tokens.json"),
                      (Path(cfg.data_dir) / "plugin-state.json", "plugin-state.json")):
        if src.is_file():
            _copy(src, dest / name)
            files[name] = str(dest / name)
            if name.startswith("token"):
                os.chmod(dest / name, 0o600)
    step("plugins")
    plugins = Path(cfg.plugins_dir)
    for artifact in sorted(plugins.glob("plugin-*.vsmp")) if plugins.is_dir() else []:
        (dest / "plugins").mkdir(exist_ok=True)
        _copy(artifact, dest / "plugins" / artifact.name)
        files[f"plugins/{artifact.name}"] = str(dest / "plugins" / artifact.name)
    step("hashes")
    manifest = {
        "format": FORMAT, "began": began, "finished": time.time(), "home": str(home.resolve()), "plugins_dir": str(plugins),
        "db": {"driver": cfg.db.driver, "plugin": cfg.db.plugin_name}, "kv": kv,
        "files": {name: _sha256(Path(path)) for name, path in files.items()},
    }
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    _fsync(str(tmp))
    os.replace(tmp, dest / MANIFEST)
    _fsync(str(dest))
    return manifest


def read_manifest(src: Path) -> dict[str, Any]:
    """The backup's manifest, each file's hash checked; BackupError naming what is wrong."""
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{src}: not a complete vsm-pool backup ({MANIFEST} is missing: the backup did not finish)") from None
    except ValueError as e:
        raise BackupError(f"{src / MANIFEST}: not readable JSON ({e}): the backup is damaged") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{src / MANIFEST}: format {manifest.get('format')!r}; this vsm-pool reads format {FORMAT}")
    for name, digest in manifest["files"].items():
        path = src / name
        if not path.is_file():
            raise BackupError(f"{path}: missing from the backup")
        if _sha256(path) != digest:
            raise BackupError(f"{path}: damaged (its sha256 differs from the one {MANIFEST} recorded): use another backup")
    return manifest  # type: ignore[no-any-return]


def restore_home(src: Path, home: Path, step: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Make the new home `home` from the backup folder `src`, its sinks rebuilt; returns what
    was restored: {"states", "sinks": {name: rows}, "kv": path}."""
    from ..config import load_config

    src, home = src.resolve(), home.resolve()
    step("checking the backup")
    manifest = read_manifest(src)
    if home.exists() and (not home.is_dir() or any(home.iterdir())):
        raise BackupError(f"{home}: exists and is not empty: restore into a new home folder (--home DIR)")
    home.mkdir(parents=True, exist_ok=True)
    step("config, tokens and plugins")
    old = manifest["home"]
    text = (src / "config.toml").read_text(encoding="utf-8")
    # paths into the old home (the default config writes them absolute) move under the new one
    (home / "config.toml").write_text(re.sub(r"(?<=[\"'])" + re.escape(old) + r"(?=[/\"'])", str(home).replace("\\", r"\\"), text), encoding="utf-8")
    for name in ("token", "tokens.json"):
        if (src / name).is_file():
            _copy(src / name, home / name)
            os.chmod(home / name, 0o600)
    for name in manifest["files"]:
        if name.startswith("plugins/"):
            (home / "plugins").mkdir(exist_ok=True)
            _copy(src / name, home / name)
    cfg, _ = load_config(None, home)
    if (src / "plugin-state.json").is_file():
        Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
        _copy(src / "plugin-state.json", Path(cfg.data_dir) / "plugin-state.json")
    step("KV")
    kv_path = cfg.db.meta.get("Path", "")
    if not kv_path:
        raise BackupError(f"{home / 'config.toml'}: Common.DB.Plugin.Meta has no Path: the KV backup of plugin "
                          f"'{cfg.db.plugin_name}' cannot be put back (a restore places the file at Meta Path)")
    kv = Path(kv_path) if os.path.isabs(kv_path) else home / kv_path
    kv.parent.mkdir(parents=True, exist_ok=True)
    _copy(src / KV_FILE, kv)
    step("sinks")
    sinks = _rebuild_sinks(home)
    return {"kv": str(kv), "sinks": sinks, "began": manifest["began"]}


def _rebuild_sinks(home: Path) -> dict[str, int]:
    """Start a manager on the restored home, refill every sink from the sector states, stop."""
    from ..config import load_config
    from ..home import ensure_home
    from ..manager import Manager

    ensure_home(home)  # its data folders; bundled plugins the backup did not hold
    manager = Manager(load_config(None, home)[0]).start()
    try:
        return {name: int(manager.rebuild_sink(name)["rows"]) for name, sink in manager.sectors.status()["sinks"].items() if sink.get("attached")}
    finally:
        manager.close()


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    _fsync(str(dst))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
