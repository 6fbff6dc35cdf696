"""`vsm-pool`: the command line. Errors a user can cause end as one line on stderr, exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from loguru import logger

from . import __version__
from .errors import VsmError

__all__ = ["main"]


def _setup_logging(verbose: bool) -> None:
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "INFO", format="{time:YYYY-MM-DDTHH:mm:ss.SSSZZ} {level: <7} {message}")


class _Cli(click.Group):
    """Turns the manager's own errors into one clean line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VsmError as e:
            click.echo(f"vsm-pool: error: {e}", err=True)
            ctx.exit(2)


def _home_option(f: Any) -> Any:
    return click.option("--home", type=click.Path(path_type=Path), default=None, help="Home folder (default: $VSM_HOME or ~/.vsm-pool).")(f)


def _print(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("(none)")
        return
    table = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@click.group(cls=_Cli)
@click.version_option(__version__, prog_name="vsm-pool")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """vsm-pool: venus-sector-manager's plugin system, one worker pool per plugin."""
    _setup_logging(verbose)


# --- config ------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """The config file."""


@config.command("init")
@_home_option
@click.option("--force", is_flag=True, help="Overwrite an existing config.toml.")
def config_init(home: Path | None, force: bool) -> None:
    """Write a commented default config (and the home folder's layout)."""
    from .config import default_config_text, resolve_home
    from .home import ensure_home

    home = resolve_home(home)
    target = home / "config.toml"
    if target.exists() and force:
        target.write_text(default_config_text(home), encoding="utf-8")
    elif target.exists():
        raise click.ClickException(f"{target} exists; use --force to overwrite it")
    ensure_home(home)
    click.echo(str(target))


# --- plugin ------------------------------------------------------------------------------


@main.group()
def plugin() -> None:
    """Build, create, list and test plugins."""


@plugin.command("build")
@click.option("--src-dir", type=click.Path(path_type=Path), help="Plugin source folder (holds manifest.toml).")
@click.option("--bundled", "bundled", help="Build a plugin bundled with vsm-pool, by folder name (e.g. redis).")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True)
def plugin_build(src_dir: Path | None, bundled: str | None, out_dir: Path) -> None:
    """Validate a plugin source folder and write plugin-<name>.vsmp into --out-dir."""
    from .artifact import build
    from .home import bundled_plugin_sources

    if bundled:
        sources = {p.name: p for p in bundled_plugin_sources()}
        if bundled not in sources:
            raise click.BadParameter(f"no bundled plugin {bundled!r}; bundled: {', '.join(sources)}", param_hint="--bundled")
        src_dir = sources[bundled]
    if src_dir is None:
        raise click.UsageError("give --src-dir DIR or --bundled NAME")
    path, manifest, warnings = build(src_dir, out_dir)
    for w in warnings:
        logger.warning(w)
    click.echo(f'Package "{src_dir}" as plugin "{path}" success.')
    click.echo(json.dumps(manifest.to_toml_dict(), indent=2))


@plugin.command("new")
@click.option("--kind", required=True, type=click.Choice(["KVStore", "ObjStore", "SyncSectorState", "RegisterJsonRpc"]))
@click.option("--dir", "parent", type=click.Path(path_type=Path), default=Path("."), show_default=True)
@click.argument("name")
def plugin_new(kind: str, parent: Path, name: str) -> None:
    """Write a ready-to-edit plugin source folder NAME/ of the given kind."""
    from .scaffold import write_plugin_source

    folder = write_plugin_source(kind, name, parent)
    click.echo(f"wrote {folder}; build it with: vsm-pool plugin build --src-dir {folder} --out-dir <plugins dir>")


@plugin.command("list")
@_home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="Config file (default: <home>/config.toml).")
@click.option("--dir", "plugins_dir", type=click.Path(path_type=Path), help="List this plugins dir instead of the config's.")
@click.option("--json", "as_json", is_flag=True)
def plugin_list(home: Path | None, config_file: Path | None, plugins_dir: Path | None, as_json: bool) -> None:
    """Kind, name, version, build time, state and artifact of every plugin."""
    from .client import daemon_client

    if plugins_dir is None:
        client = daemon_client(home, config_file)
        if client is not None:
            _print(client.call("plugin.list"), _PLUGIN_COLUMNS, as_json)
            return
        plugins_dir = _config(home, config_file).plugins_dir
    from .loader import discover

    plugins, _ = discover(plugins_dir, entry_points=True)
    _print([p.describe() for p in plugins], _PLUGIN_COLUMNS, as_json)


_PLUGIN_COLUMNS = ["kind", "name", "version", "build_time", "state", "artifact", "error"]


@plugin.command("test")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--meta", multiple=True, help="KEY=VALUE passed to the Constructor (repeatable).")
@click.option("--workers", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def plugin_test(artifact: Path, meta: tuple[str, ...], workers: int, as_json: bool) -> None:
    """Run the conformance kit of the artifact's kind against it, in its own pool."""
    from .testing import run_conformance

    pairs = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        pairs[key] = value
    results = run_conformance(artifact, pairs, workers=workers)
    failed = [r for r in results if not r.passed]
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        for r in results:
            click.echo(f"{'PASS' if r.passed else 'FAIL'}  {r.name}" + (f"\n      {r.error}" if r.error else ""))
        click.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--quick", is_flag=True, help="Smaller sizes, for a smoke run (about a minute).")
@click.option("--suite", "suites", multiple=True, type=click.Choice(["executor", "sectors", "ray"]), help="Run only these suites.")
@click.option(
    "--backend",
    type=click.Choice(["process", "ray", "both"]),
    default="process",
    show_default=True,
    help="process: the local suites (executor, sectors). ray: the Ray suite, i.e. small calls, "
    "byte streams and the sink fan-out on Ray pools beside local pools in one run "
    "(pip install 'vsm-pool[ray]'). both: all suites. With --suite, ray/both add the Ray suite.",
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-results.json"), show_default=True, help="Write the rows here as JSON.")
def bench(quick: bool, suites: tuple[str, ...], backend: str, out: Path) -> None:
    """Measure vsm-pool against what users would pick instead, side by side in one run."""
    from .home import bundled_root

    sys.path.insert(0, str(bundled_root()))
    from bench.run import main as run_bench

    if backend != "process":
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise click.ClickException(f"--backend {backend} needs Ray: pip install 'vsm-pool[ray]' (import ray failed: {e})") from None
    names = list(suites) or {"process": ["executor", "sectors"], "ray": ["ray"], "both": ["executor", "sectors", "ray"]}[backend]
    if backend != "process" and "ray" not in names:
        names.append("ray")
    sys.exit(run_bench(names, quick, out))


@main.group()
def util() -> None:
    """Maintenance tools."""


def _meta_pairs(items: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        pairs[key] = value
    return pairs


@util.command("migrate")
@_home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="Config file (default: <home>/config.toml).")
@click.option("--dir", "plugins_dir", type=click.Path(path_type=Path), help="Plugins dir (default: the config's).")
@click.option("--from", "source", required=True, help="Source KVStore plugin name.")
@click.option("--from-meta", multiple=True, help="Source Meta KEY=VALUE (repeatable).")
@click.option("--to", "target", required=True, help="Target KVStore plugin name.")
@click.option("--to-meta", multiple=True, help="Target Meta KEY=VALUE (repeatable).")
@click.option("--collection", "collections", multiple=True, help="Collections to copy (default: damocles' collections).")
def util_migrate(home: Path | None, config_file: Path | None, plugins_dir: Path | None, source: str, from_meta: tuple[str, ...],
                 target: str, to_meta: tuple[str, ...], collections: tuple[str, ...]) -> None:
    """Copy every KV collection from one KVStore plugin to another, then check the counts."""
    from tqdm import tqdm

    from .loader import Registry, discover
    from .migrate import COLLECTIONS, migrate

    directory = plugins_dir or _config(home, config_file).plugins_dir
    plugins, _ = discover(directory)
    with tqdm(unit=" keys", desc="migrate", file=sys.stderr, disable=None) as bar:
        report = migrate(
            Registry(plugins),
            (source, _meta_pairs(from_meta, "--from-meta")),
            (target, _meta_pairs(to_meta, "--to-meta")),
            collections or COLLECTIONS,
            progress=lambda coll, n: (bar.set_postfix_str(coll), bar.update(n)),
        )
    bad = [r for r in report if not r.ok]
    _print([{**r.__dict__, "ok": r.ok} for r in report], ["name", "copied", "source_count", "target_count", "ok"], False)
    if bad:
        raise click.ClickException(f"count check failed for: {', '.join(r.name for r in bad)}")
    click.echo(f"migrated {sum(r.copied for r in report)} keys in {len(report)} collections from {source} to {target}")


def _daemon_or_fail(home: Path | None, config_file: Path | None) -> Any:
    from .client import daemon_client

    client = daemon_client(home, config_file)
    if client is None:
        raise click.ClickException("no vsm-pool daemon is running for this home folder (start one with `vsm-pool start`)")
    return client


@plugin.command("disable")
@_home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.argument("name")
def plugin_disable(home: Path | None, config_file: Path | None, as_json: bool, name: str) -> None:
    """Stop a plugin's pool and keep it stopped across restarts (a sink keeps its checkpoint)."""
    row = _daemon_or_fail(home, config_file).call("plugin.disable", {"name": name})
    click.echo(json.dumps(row, indent=2, default=str) if as_json else f"disabled {row['kind']}/{row['name']}")


@plugin.command("enable")
@_home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.argument("name")
def plugin_enable(home: Path | None, config_file: Path | None, as_json: bool, name: str) -> None:
    """Start a disabled plugin again (a sink catches up from its checkpoint)."""
    row = _daemon_or_fail(home, config_file).call("plugin.enable", {"name": name})
    click.echo(json.dumps(row, indent=2, default=str) if as_json else f"enabled {row['kind']}/{row['name']}: {row['state']}")


@plugin.command("reload")
@_home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.argument("name")
@click.argument("artifact", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def plugin_reload(home: Path | None, config_file: Path | None, as_json: bool, name: str, artifact: Path | None) -> None:
    """Swap a running plugin for a new build (its file in the plugins dir, or ARTIFACT) while the
    manager keeps serving; if the new build fails, the old one keeps serving."""
    params = {"name": name, "artifact": str(artifact.resolve()) if artifact else None}
    row = _daemon_or_fail(home, config_file).call("plugin.reload", params)
    if as_json:
        click.echo(json.dumps(row, indent=2, default=str))
    else:
        click.echo(f"reloaded {row['kind']}/{row['name']}: {row['previous_version']} -> {row['version']} (build time {row['build_time']})")


@plugin.command("flush")
@_home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.argument("name")
def plugin_flush(home: Path | None, config_file: Path | None, name: str) -> None:
    """Ask every worker of the plugin to re-read its own settings (its onFlush hook)."""
    answers = _daemon_or_fail(home, config_file).call("plugin.flush", {"name": name})
    if not any(answers):
        click.echo(f"{name} has no onFlush hook: nothing to do")
    else:
        click.echo(f"flushed {name} in {len(answers)} worker(s)")


@plugin.command("rescan")
@_home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def plugin_rescan(home: Path | None, config_file: Path | None, as_json: bool) -> None:
    """Pick up changed or new artifacts in the plugins dir (never done silently)."""
    changes = _daemon_or_fail(home, config_file).call("plugin.rescan")
    _print(changes, ["name", "change", "version", "artifact", "error"], as_json)


def _config(home: Path | None, config_file: Path | None) -> Any:
    from .config import load_config, resolve_home

    cfg, warnings = load_config(config_file, resolve_home(home))
    for w in warnings:
        logger.warning(w)
    return cfg


# The daemon and its client commands (start, stop, status, sectors, pieces, query) live in
# vsm/cli_daemon.py; importing it registers them on `main`.
from . import cli_daemon  # noqa: E402,F401
