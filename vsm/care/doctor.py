"""`vsm-pool doctor`: check every file of a home, and name the way back for each damaged one
(issue 25, item 2). A damaged file was found only by the call that met it, or not at all.

    check                     reads                                        a damaged one's way back
    config.toml               load_config (TOML, every key)                the key it names; or restore
    token, tokens.json        the admin token's form and mode; JSON         delete: a new one at start
    plugins/*.vsmp            zip CRCs (testzip) and the manifest          plugin build (--bundled NAME)
    the KV                    its plugin's own check() in its own pool     vsm-pool restore (a backup)
                              (sqlitekv: open + quick_check, integrity_check)
    the DuckDB sink's file    every table read through, read-only          --repair: set aside, rebuilt
    the Parquet sink's files  each footer (pyarrow.parquet.read_metadata)  --repair: set aside, rebuilt
    journal segments          every frame's header and crc32               --repair: frames past a bad
                                                                           one cut, every sink rebuilt
    sink checkpoints          a sequence number each                       --repair: set aside, rebuilt

It reads the files as they lie, so the daemon must be stopped (DuckDB's file is locked while it
runs, and a live journal's tail is being written). `--repair` (vsm-pool doctor --repair) sets a
damaged sink file aside (renamed `<file>.damaged-<time>`, kept), starts a manager on the home
and refills the sink from the sector states in the KV (`sinks rebuild`); a journal with a bad
frame is copied aside, cut at the bad frame by the manager's start (as a torn tail is), and
every sink is rebuilt. What only the damaged file held (a sink's event history) is not made
up: a rebuilt sink holds one row per sector with its current state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import struct
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["Problem", "check_home", "repair"]

_FRAME = struct.Struct("<4sIQQII")  # vsm/sectors/_journal.py's frame header
_MAGIC = b"VSJ1"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One damaged file: what is wrong, and the way back."""

    file: str
    cause: str
    fix: str
    sink: str | None = None  # --repair sets `file` aside and rebuilds this sink ("*": every sink)

    def line(self) -> str:
        return f"{self.file}: {self.cause}; fix: {self.fix}"


@dataclasses.dataclass
class _Home:
    """The paths of a home, from its config, or the default layout when the config is unreadable."""

    home: Path
    cfg: Any = None
    config_file: Path | None = None

    def _meta(self, plugin: str, default: Path) -> Path:
        path = (self.cfg.settings(plugin).meta.get("Path") if self.cfg is not None else None) or str(default)
        return Path(path) if os.path.isabs(path) else self.home / path

    @property
    def plugins_dir(self) -> Path:
        return Path(self.cfg.plugins_dir) if self.cfg is not None else self.home / "plugins"

    @property
    def duckdb(self) -> Path:
        return self._meta("duckdb", self.home / "data" / "duckdb" / "sectors.duckdb")

    @property
    def parquet(self) -> Path:
        return self._meta("parquet", self.home / "data" / "parquet")

    @property
    def journal(self) -> Path:
        path = self.cfg.sector_sync.journal_dir if self.cfg is not None else ""
        return Path(path) if path else self.home / "data" / "journal"


def check_home(home: Path, config_file: Path | None = None, progress: Callable[[str], None] = lambda _: None) -> list[Problem]:
    """Every problem found in the files of `home` (stopped), in the order of the table above."""
    h = _Home(home, config_file=config_file)
    checks: list[tuple[str, Callable[[_Home], Iterator[Problem]]]] = [
        ("config", _config), ("tokens", _tokens), ("plugins", _artifacts), ("KV", _kv), ("DuckDB", _duckdb),
        ("Parquet", _parquet), ("journal", _journal),
    ]
    problems: list[Problem] = []
    for name, check in checks:
        progress(name)
        problems.extend(check(h))
    return problems


def _config(h: _Home) -> Iterator[Problem]:
    from ..config import load_config
    from ..errors import VsmError

    file = h.config_file or h.home / "config.toml"
    try:
        h.cfg, _ = load_config(h.config_file, h.home)
    except (VsmError, OSError, ValueError) as e:
        yield Problem(str(file), str(e).removeprefix(f"{file}: "), "correct what it names (`vsm-pool config init` writes the "
                      "commented default into a new home), or take config.toml from a backup (vsm-pool restore)")


def _tokens(h: _Home) -> Iterator[Problem]:
    from ..server.auth import MIN_TOKEN_CHARS

    path = h.home / "token"
    redo = "delete it: the next `vsm-pool start` writes a new admin token (the CLI reads it itself)"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        yield Problem(str(path), "missing: the CLI has no admin token for the daemon", "run `vsm-pool start`: it writes one")
        raw = None
    if raw is not None:
        text = raw.decode("utf-8", "replace").strip()
        if len(text) < MIN_TOKEN_CHARS or not text.isprintable() or " " in text:
            yield Problem(str(path), f"not a token (want {MIN_TOKEN_CHARS}+ printable characters, found {len(raw)} bytes)", redo)
        elif stat.S_IMODE(path.stat().st_mode) & 0o077:
            yield Problem(str(path), f"mode {stat.S_IMODE(path.stat().st_mode):04o}: others may read the admin token", f"chmod 600 {path}")
    tokens = h.home / "tokens.json"
    if tokens.exists():
        try:
            ok = isinstance(json.loads(tokens.read_text()), dict)
        except (ValueError, UnicodeDecodeError) as e:
            yield Problem(str(tokens), f"not readable JSON ({e})", "take tokens.json from a backup, or delete it: every token made "
                          "with `vsm-pool auth create-token` is then refused (make them again)")
        else:
            if not ok:
                yield Problem(str(tokens), "not a JSON object of tokens", "take tokens.json from a backup, or delete it and make the tokens again")


def _artifacts(h: _Home) -> Iterator[Problem]:
    from ..errors import VsmError
    from ..home import bundled_sources_by_name
    from ..plugin.artifact import read_artifact_manifest

    folder = h.plugins_dir
    if not folder.is_dir():
        return
    bundled = {f"plugin-{name}.vsmp": name for name in bundled_sources_by_name()}
    for artifact in sorted(folder.glob("plugin-*.vsmp")):
        try:
            with zipfile.ZipFile(artifact) as z:
                bad = z.testzip()
            if bad is not None:
                raise ValueError(f"{bad}: CRC mismatch")
            read_artifact_manifest(artifact)
        except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, VsmError) as e:
            cause = str(e).removeprefix(f"{artifact}: ")
            name = bundled.get(artifact.name)
            fix = (f"vsm-pool plugin build --bundled {name} --out-dir {folder}" if name else
                   f"build it again from its source: vsm-pool plugin build --src-dir SRC --out-dir {folder}")
            yield Problem(str(artifact), f"damaged plugin artifact ({cause})", fix)


def _kv(h: _Home) -> Iterator[Problem]:
    """The KV plugin's own check, in a pool of its own: the plugin opens the DB as at start."""
    if h.cfg is None:
        return  # the config is the problem: which KV is unknown
    from executors import make_pool

    from ..plugin.loader import Registry, discover
    from ..plugin.proxies import PooledDB
    from ..sdk import Kind

    cfg = h.cfg
    where = cfg.db.meta.get("Path") or f"the KV of plugin '{cfg.db.plugin_name}'"
    back = "restore the home from a backup: vsm-pool restore BACKUP --home NEWDIR (then start it there)"
    registry = Registry(discover(cfg.plugins_dir)[0], cfg)
    plugin = registry.get(Kind.KVStore, cfg.db.plugin_name)
    if plugin is None:
        return  # its artifact's problem is named above; config says which plugin is missing
    pool = make_pool(registry.pool_spec(plugin))
    try:
        pool.start()
        PooledDB(pool, cfg.db.meta).run()
        found = pool.call("check", timeout=None)
    except Exception as e:  # noqa: BLE001 - the plugin could not open its DB: that is the finding
        yield Problem(where, _one_line(e), back)
        return
    finally:
        pool.close()
    if found:
        yield Problem(where, f"damaged: {'; '.join(found[:5])}" + (f" (and {len(found) - 5} more)" if len(found) > 5 else ""), back)


def _duckdb(h: _Home) -> Iterator[Problem]:
    path = h.duckdb
    if not path.exists():
        return
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
        try:
            for (table,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall():
                reader = con.sql(f'SELECT * FROM "{table}"').to_arrow_reader(100_000)
                for _ in reader:  # every block read: its checksum checked
                    pass
        finally:
            con.close()
    except Exception as e:  # noqa: BLE001 - any failure to read it through is damage
        yield Problem(str(path), f"damaged DuckDB file ({_one_line(e)})", _repair_fix("duckdb", path), sink="duckdb")


def _parquet(h: _Home) -> Iterator[Problem]:
    import pyarrow.parquet as pq

    for path in sorted(h.parquet.rglob("*.parquet")) if h.parquet.is_dir() else []:
        try:
            pq.read_metadata(path)
        except Exception as e:  # noqa: BLE001 - an unreadable footer is damage
            yield Problem(str(path), f"damaged Parquet file ({_one_line(e)})", _repair_fix("parquet", path), sink="parquet")


def _journal(h: _Home) -> Iterator[Problem]:
    """Every frame's header and crc; a short last frame of the last segment is a torn tail (a
    killed writer's: its events were never acknowledged), cut at start, not a problem."""
    segs = h.journal / "segments"
    names = sorted(n for n in os.listdir(segs) if n.startswith("seg-") and n.endswith(".vsmj")) if segs.is_dir() else []
    for i, name in enumerate(names):
        path = segs / name
        size, off, frames = path.stat().st_size, 0, 0
        with open(path, "rb") as f:
            while off + _FRAME.size <= size:
                f.seek(off)
                magic, crc, first, last, _rows, plen = _FRAME.unpack(f.read(_FRAME.size))
                end = off + _FRAME.size + ((plen + 7) & ~7)
                if magic != _MAGIC:
                    bad = "no frame header (garbled)"
                elif end > size:
                    bad = "" if i == len(names) - 1 else "the frame runs past the end of the file"
                elif zlib.crc32(f.read(plen)) != crc:
                    bad = f"bad crc32 (seqs {first}-{last})"
                else:
                    off, frames = end, frames + 1
                    continue
                if bad:
                    yield Problem(f"{path} (offset {off})", f"journal frame {frames + 1}: {bad}; the start cuts the segment there, "
                                  f"losing the {size - off} bytes of events after it from the journal (their states are in the KV)",
                                  "vsm-pool doctor --repair (copies the segment aside, cuts it, rebuilds every sink from the KV)", sink="*")
                break
    ckpts = h.journal / "sinks"
    for ckpt in sorted(ckpts.glob("*.ckpt")) if ckpts.is_dir() else []:
        try:
            int(ckpt.read_text().strip() or 0)
        except (ValueError, UnicodeDecodeError):
            yield Problem(str(ckpt), "not a sequence number", f"vsm-pool doctor --repair (rebuilds sink {ckpt.stem} from the KV)", sink=ckpt.stem)


def _repair_fix(sink: str, path: Path) -> str:
    return f"vsm-pool doctor --repair (sets it aside as {path.name}.damaged-<time> and rebuilds sink {sink} from the KV)"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if not text.startswith(("sqlitekv", "config")) else text


def repair(home: Path, problems: list[Problem], config_file: Path | None = None, log: Callable[[str], None] = print) -> dict[str, int]:
    """Set each repairable damaged file aside and rebuild the sinks that held it, on a manager
    started in-process; returns {sink: rows}. The KV, config, tokens and artifacts are not
    repaired here: their problems name their own way back."""
    from ..config import load_config
    from ..manager import Manager

    stamp = time.strftime("%Y%m%dT%H%M%S")
    sinks: set[str] = set()
    for p in problems:
        if p.sink is None:
            continue
        sinks.add(p.sink)
        path = Path(p.file.split(" (offset ")[0])
        if p.sink == "*":  # a journal file: the start cuts it; keep a copy of what it was
            shutil.copy2(path, f"{path}.damaged-{stamp}")
            log(f"copied {path} to {path.name}.damaged-{stamp}")
            continue
        for part in (path, Path(f"{path}.wal")):
            if part.exists():
                os.replace(part, f"{part}.damaged-{stamp}")
                log(f"set {part} aside as {part.name}.damaged-{stamp}")
    if not sinks:
        return {}
    manager = Manager(load_config(config_file, home)[0]).start()
    try:
        attached = [n for n, s in manager.sectors.status()["sinks"].items() if s.get("attached")]
        return {n: int(manager.rebuild_sink(n)["rows"]) for n in attached if "*" in sinks or n in sinks}
    finally:
        manager.close()
