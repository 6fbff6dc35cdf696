"""What the command modules share: the common options, table printing, the config, and the
client of the running daemon or, without one, of a manager started in-process."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import click

from .client import DaemonError, daemon_client

__all__ = ["LocalClient", "config_option", "daemon_or_fail", "env_text", "no_daemon", "home_option", "json_option", "load_and_prepare", "load_config_for", "meta_pairs", "open_client", "print_table", "setup_logging"]

_verbose: bool | None = None  # the -v flag until logging is set up; None once it is


def setup_logging(verbose: bool | None = None, now: bool = True) -> None:
    """Route loguru to stderr in the CLI's format. `now=False` only notes -v: a client command
    calls this again (without arguments) on its in-process branch, before the manager logs."""
    global _verbose
    if verbose is not None:
        _verbose = verbose
    if not now or _verbose is None:
        return
    import logging
    import sys

    from loguru import logger

    logger.remove()
    # diagnose (local variables in traces) only when asked: they may hold tokens or data
    logger.add(
        sys.stderr, level="DEBUG" if _verbose else "INFO", format="{time:YYYY-MM-DDTHH:mm:ss.SSSZZ} {level: <7} {message}",
        backtrace=bool(_verbose), diagnose=bool(_verbose),
    )
    # vsm.sectors logs through the standard library: its lines go to the same place
    vsm_log = logging.getLogger("vsm")
    if not any(type(h).__name__ == "_ToLoguru" for h in vsm_log.handlers):
        vsm_log.addHandler(_to_loguru(logger))
    vsm_log.setLevel(logging.DEBUG if _verbose else logging.INFO)
    _verbose = None


def _to_loguru(logger: Any) -> Any:
    import logging

    class _ToLoguru(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            level = record.levelname if record.levelname in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else record.levelno
            logger.opt(exception=record.exc_info).log(level, record.getMessage())

    return _ToLoguru()


def home_option(f: Any) -> Any:
    return click.option("--home", type=click.Path(path_type=Path), default=None, help="Home folder (default: $VSM_HOME or ~/.vsm-pool).")(f)


def print_table(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    """Aligned columns; the last column wraps at the terminal's width (whole words, never cut
    short: an error message is read in full), continuing under itself."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("(none)")
        return
    import shutil
    import textwrap

    table = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
    indent = sum(w + 2 for w in widths[:-1])
    room = max(40, shutil.get_terminal_size((120, 24)).columns - indent)
    widths[-1] = min(widths[-1], max(room, len(columns[-1])))
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in table:
        last = textwrap.wrap(row[-1], room, break_long_words=False, break_on_hyphens=False) or [""]
        click.echo("  ".join(v.ljust(w) for v, w in zip([*row[:-1], last[0]], widths)).rstrip())
        for more in last[1:]:
            click.echo(" " * indent + more)


def env_text(env: dict[str, Any] | None) -> str:
    """A plugin's environment in a table cell: '' for the manager's packages, else its key and
    its packages' versions (or that it is made on first start)."""
    if not env:
        return ""
    packages = env.get("packages")
    if packages is None:
        return f"{env['key']}: not created yet ({', '.join(env['requirements'])})"
    return f"{env['key']}: " + (", ".join(f"{n} {v}" for n, v in packages.items()) or "(nothing to install)")


def config_option(f: Any) -> Any:
    return click.option("--config", "config_file", type=click.Path(path_type=Path), help="Config file (default: <home>/config.toml).")(f)


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)


def meta_pairs(items: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        pairs[key] = value
    return pairs


def no_daemon(home: Path | None) -> click.ClickException:
    """The one line for "no daemon here": which home folder was looked at, and how to pick one."""
    from ..config import resolve_home

    where = resolve_home(home)
    how = "--home" if home else "$VSM_HOME" if os.environ.get("VSM_HOME") else "the default (~/.vsm-pool)"
    return click.ClickException(
        f"no vsm-pool daemon is running for the home folder {where} (chosen by {how}); "
        "start one with `vsm-pool start`, or choose another home with --home DIR or $VSM_HOME"
    )


def daemon_or_fail(home: Path | None, config_file: Path | None) -> Any:
    client = daemon_client(home, config_file)
    if client is None:
        raise no_daemon(home)
    return client


def load_config_for(home: Path | None, config_file: Path | None) -> Any:
    """The config of the home folder (or --config), its warnings logged."""
    from ..config import load_config, resolve_home

    return _logged(load_config(config_file, resolve_home(home)))


def load_and_prepare(home: Path | None, config_file: Path | None) -> tuple[Any, Path]:
    """The config and the home folder, made with its default layout first if it is new."""
    from ..config import load_config, resolve_home
    from ..home import ensure_home

    home_dir = resolve_home(home)
    if config_file is None:
        ensure_home(home_dir)
        return _logged(load_config(None, home_dir)), home_dir
    # --config FILE (e.g. damocles' sector-manager.cfg) on a new home: the home is made all the
    # same (token, data/), its plugins/ built when that config loads plugins from there
    cfg = _logged(load_config(config_file, home_dir))
    ensure_home(home_dir, own_config=False, bundled_plugins=Path(cfg.plugins_dir) == home_dir / "plugins")
    return cfg, home_dir


def _logged(loaded: tuple[Any, list[str]]) -> Any:
    setup_logging()
    from loguru import logger

    cfg, warnings = loaded
    for w in warnings:
        logger.warning(w)
    return cfg


class LocalClient:
    """The Client interface over an in-process manager (no daemon running)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    def call(self, method: str, params: Any = None) -> Any:
        from ..server.methods import METHODS

        fn = METHODS.get(method)
        if fn is None:
            raise DaemonError(f"{method}: needs a running daemon (vsm-pool start)")
        params = params or {}
        return self._translated(method, lambda: fn(self.manager, *params) if isinstance(params, list) else fn(self.manager, **params))

    @staticmethod
    def _translated(what: str, run: Any) -> Any:
        """run(), its errors translated as the daemon translates them: the same mistake gets
        the same one line (DaemonError) with a daemon or without, not a traceback."""
        from ..server.jsonrpc import RpcError, translate_errors

        try:
            return translate_errors(run, what, str)
        except RpcError as e:
            raise DaemonError(f"{what}: {e.message}") from None

    def import_batches(self, batches: Any, override: bool, worker_state: str | None) -> dict[str, int]:
        received = [0]

        def counted() -> Any:
            for batch in batches:
                received[0] += batch.num_rows
                yield batch

        sectors = self.manager.sectors
        if sectors is None:
            raise DaemonError("the sector state manager is not running")
        written = self._translated("sectors import", lambda: sectors.import_arrow(counted(), override=override, worker_state=worker_state))
        return {"written": written, "received": received[0]}

    def put_piece(self, store: str, path: str, source: Any, size: int, progress: Any = None) -> Any:
        target = self._translated(f"put {store}/{path}", lambda: self.manager.store(store))
        if not target.cfg.read_only:  # the daemon's rule (PooledStore.space_refusal), here too
            refused = self._translated(f"put {store}/{path}", lambda: target.space_refusal(path, size))
            if refused:
                raise DaemonError(f"put {store}/{path}: {refused}")
        reader = _Progress(source, progress)
        n = self._translated(f"put {store}/{path}", lambda: self.manager.store(store).put(path, reader))
        return {"store": store, "path": path, "size": n}

    def get_piece(self, store: str, path: str, sink: Any, progress: Any = None) -> int:
        reader = self._translated(f"get {store}/{path}", lambda: self.manager.store(store).get(path))
        total = 0
        try:
            while chunk := reader.read(1 << 20):
                sink.write(chunk)
                total += len(chunk)
                if progress:
                    progress(len(chunk))
        finally:
            reader.close()
        return total


class _Progress:
    def __init__(self, source: Any, progress: Any) -> None:
        self.source, self.progress = source, progress

    def readinto(self, buf: Any) -> int:
        n = self.source.readinto(buf)
        if n and self.progress:
            self.progress(n)
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        if data and self.progress:
            self.progress(len(data))
        return data


@contextlib.contextmanager
def open_client(home: Path | None, config_file: Path | None, *, offline: bool = True) -> Iterator[Any]:
    client = daemon_client(home, config_file)
    if client is not None:
        yield client
        return
    if not offline:
        raise no_daemon(home)
    setup_logging()
    from ..manager import Manager

    cfg, _ = load_and_prepare(home, config_file)
    manager = Manager(cfg).start()
    try:
        yield LocalClient(manager)
    finally:
        manager.close()
