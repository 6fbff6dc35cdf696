"""`vsm-pool plugin ...`: build, create, list and test plugins; enable, disable, reload, flush and
rescan them in the running daemon."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from loguru import logger

from ._common import daemon_or_fail, env_text, home_option, load_config_for, meta_pairs, print_table

__all__ = ["plugin"]


@click.group()
def plugin() -> None:
    """Build, create, list and test plugins."""


@plugin.command("build")
@click.option("--src-dir", type=click.Path(path_type=Path), help="Plugin source folder (holds manifest.toml).")
@click.option("--bundled", "bundled", help="Build a plugin bundled with vsm-pool, by its name (e.g. duckdb, redis; its folder name works too).")
@click.option("--all", "build_all", is_flag=True, help="Build every bundled plugin a new home gets (those that need no server; "
              "redis, s3store and sqlsink by --bundled NAME).")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True)
@click.option("--with-deps", is_flag=True, help="Bundle the wheels of its requirements for this platform: loads with no index access.")
def plugin_build(src_dir: Path | None, bundled: str | None, build_all: bool, out_dir: Path, with_deps: bool) -> None:
    """Validate a plugin source folder and write plugin-<name>.vsmp into --out-dir."""
    from ..home import DEFAULT_PLUGINS, bundled_sources_by_name

    if sum(map(bool, (src_dir, bundled, build_all))) != 1:
        raise click.UsageError("give one of --src-dir DIR, --bundled NAME or --all")
    if build_all:
        for src in (src for src in bundled_sources_by_name().values() if src.name in DEFAULT_PLUGINS):
            _build_one(src, out_dir, with_deps, quiet=True)
        return
    if bundled:
        sources = bundled_sources_by_name()
        by_folder = {p.name: p for p in sources.values()}
        src_dir = sources.get(bundled) or by_folder.get(bundled)
        if src_dir is None:
            raise click.BadParameter(f"no bundled plugin {bundled!r}; bundled: {', '.join(sources)} (or --all)", param_hint="--bundled")
    assert src_dir is not None
    _build_one(src_dir, out_dir, with_deps, quiet=False)


def _build_one(src_dir: Path, out_dir: Path, with_deps: bool, quiet: bool) -> None:
    """Build one artifact; `quiet` (--all): its line only, not its manifest."""
    from ..plugin.artifact import build

    path, manifest, warnings = build(src_dir, out_dir, with_deps=with_deps)
    for w in warnings:
        logger.warning(w)
    click.echo(f'Package "{src_dir}" as plugin "{path}" success.')
    if with_deps:
        from ..plugin.artifact import bundled_wheels

        wheels = bundled_wheels(path)
        click.echo(f"bundled {len(wheels)} wheel(s) for this platform: {', '.join(wheels) or '(none needed)'}", err=True)
    if not quiet:
        click.echo(json.dumps(manifest.to_toml_dict(), indent=2))


@plugin.command("new")
@click.option("--kind", required=True, type=click.Choice(["KVStore", "ObjStore", "SyncSectorState", "RegisterJsonRpc"]))
@click.option("--dir", "parent", type=click.Path(path_type=Path), default=Path("."), show_default=True)
@click.argument("name")
def plugin_new(kind: str, parent: Path, name: str) -> None:
    """Write a ready-to-edit plugin source folder NAME/ of the given kind."""
    from ..plugin.scaffold import write_plugin_source

    folder = write_plugin_source(kind, name, parent)
    click.echo(f"wrote {folder}; build it with: vsm-pool plugin build --src-dir {folder} --out-dir <plugins dir>")


@plugin.command("list")
@home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="Config file (default: <home>/config.toml).")
@click.option("--dir", "plugins_dir", type=click.Path(path_type=Path), help="List this plugins dir instead of the config's.")
@click.option("--json", "as_json", is_flag=True)
def plugin_list(home: Path | None, config_file: Path | None, plugins_dir: Path | None, as_json: bool) -> None:
    """Kind, name, version, build time, state and artifact of every plugin."""
    from .client import daemon_client

    from ..config import resolve_home

    if plugins_dir is None:
        client = daemon_client(home, config_file)
        if client is not None:
            _print_plugins(client.call("plugin.list"), as_json)
            return
        config = load_config_for(home, config_file)
        plugins_dir = config.plugins_dir
    else:
        config = None
    from ..plugin.loader import Registry, discover

    plugins, _ = discover(plugins_dir, entry_points=True)
    Registry(plugins, config)  # what each plugin's workers would run under
    envs_dir = resolve_home(home) / "envs"
    _print_plugins([{**p.describe(), "env": p.env_row(envs_dir)} for p in plugins], as_json)


_PLUGIN_COLUMNS = ["kind", "name", "version", "build_time", "state", "artifact", "env", "limits", "sandbox", "error"]


def _print_plugins(rows: list[dict], as_json: bool) -> None:
    if not as_json:
        rows = [
            {**r, "env": env_text(r.get("env")), "limits": (r.get("limits") or {}).get("text", ""), "sandbox": (r.get("sandbox") or {}).get("text", "")}
            for r in rows
        ]
    print_table(rows, _PLUGIN_COLUMNS, as_json)


@plugin.command("test")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--meta", multiple=True, help="KEY=VALUE for the Constructor (repeatable); over the manifest's testMeta. "
              "{scratch} and {prefix} become a folder and a name prefix of this run.")
@click.option("--workers", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def plugin_test(artifact: Path, meta: tuple[str, ...], workers: int, as_json: bool) -> None:
    """Run the conformance kit of the artifact's kind against it, in its own pool: every rule
    with PASS/FAIL/SKIP; exit 1 if any fails. What the kit wrote is removed afterwards."""
    from ..plugin.conformance import format_result, summary_line
    from ..plugin.conformance.runner import run_conformance

    def show(result: Any) -> None:
        click.echo(format_result(result))

    run = run_conformance(artifact, meta_pairs(meta, "--meta"), workers=workers, on_result=None if as_json else show)
    if as_json:
        click.echo(json.dumps({"plugin": run.label, "meta": run.meta, "results": [r.as_dict() for r in run.results],
                               "cleanup": run.cleanup}, indent=2))
    else:
        click.echo(f"{run.label}: {summary_line(run.results)}" + (f" (cleanup: {run.cleanup})" if run.cleanup else ""))
    sys.exit(1 if run.failed else 0)


@plugin.command("bench")
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--meta", multiple=True, help="KEY=VALUE for the Constructor (repeatable), over the manifest's testMeta.")
@click.option("--workers", type=int, default=1, show_default=True, help="Workers of the pool side.")
@click.option("--quick", is_flag=True, help="Smaller workloads: a smoke run.")
@click.option("--json", "as_json", is_flag=True)
def plugin_bench(artifact: Path, meta: tuple[str, ...], workers: int, quick: bool, as_json: bool) -> None:
    """The plugin's calls (streams for an ObjStore, deliveries for a sink) in its own pool beside
    the same plugin in-process, measured in one run: what isolation costs it, as ratios."""
    from ..plugin.bench import run_bench

    widths = (44, 18, 18)
    if not as_json:
        click.echo(f"{'workload':<{widths[0]}}{'in its pool':>{widths[1]}}{'in-process':>{widths[2]}}  ratio")

    def show(row: Any) -> None:
        inline = f"{row.inline:,.0f} {row.unit}" if row.inline is not None else "-"
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        click.echo(f"{row.workload:<{widths[0]}}{f'{row.pool:,.0f} {row.unit}':>{widths[1]}}{inline:>{widths[2]}}  {ratio}")

    label, rows = run_bench(artifact, meta_pairs(meta, "--meta"), workers=workers, quick=quick, on_row=None if as_json else show)
    if as_json:
        click.echo(json.dumps({"plugin": label, "workers": workers, "rows": [r.as_dict() for r in rows]}, indent=2))
    else:
        click.echo(f"{label}: pool of {workers} worker(s) vs in-process, one run; ratio = pool / in-process")


@plugin.command("dev")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="Config file (default: <home>/config.toml).")
@click.option("--meta", multiple=True, help="KEY=VALUE for the kit's Constructor (repeatable), as for `plugin test`.")
@click.option("--no-kit", is_flag=True, help="Build and reload only.")
@click.option("--interval", type=float, default=0.3, show_default=True, help="Seconds between looks at the folder.")
def plugin_dev(src_dir: Path, home: Path | None, config_file: Path | None, meta: tuple[str, ...], no_kit: bool, interval: float) -> None:
    """Watch SRC_DIR: on every save build it, reload it into the running daemon (or a manager
    started here when none runs), rerun its kit; one line per save. A broken save leaves the
    last good build serving. Builds are served from <home>/dev/<folder>/; Ctrl-C stops."""
    import signal

    from ..plugin.dev import DevLoop
    from ._common import open_client

    pairs = meta_pairs(meta, "--meta")
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    with open_client(home, config_file) as client:
        cfg = load_config_for(home, config_file)
        loop = DevLoop(src_dir, client, Path(cfg.plugins_dir), Path(cfg.home) / "dev" / src_dir.resolve().name,
                       meta=pairs, kit=not no_kit, say=lambda line: click.echo(line))
        try:
            loop.run(interval=interval, stop=lambda: bool(stopping))
        except KeyboardInterrupt:
            pass
    from ._common import LocalClient

    if isinstance(client, LocalClient):
        click.echo("stopped, with the manager it started")
    else:
        click.echo(f"stopped; build {loop.serving} serves on" if loop.serving else "stopped")


@plugin.command("disable")
@home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.argument("name")
def plugin_disable(home: Path | None, config_file: Path | None, as_json: bool, name: str) -> None:
    """Stop a plugin's pool and keep it stopped across restarts (a sink keeps its checkpoint)."""
    row = daemon_or_fail(home, config_file).call("plugin.disable", {"name": name})
    click.echo(json.dumps(row, indent=2, default=str) if as_json else f"disabled {row['kind']}/{row['name']}")


@plugin.command("enable")
@home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.argument("name")
def plugin_enable(home: Path | None, config_file: Path | None, as_json: bool, name: str) -> None:
    """Start a disabled plugin again (a sink catches up from its checkpoint)."""
    row = daemon_or_fail(home, config_file).call("plugin.enable", {"name": name})
    click.echo(json.dumps(row, indent=2, default=str) if as_json else f"enabled {row['kind']}/{row['name']}: {row['state']}")


@plugin.command("reload")
@home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.argument("name")
@click.argument("artifact", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def plugin_reload(home: Path | None, config_file: Path | None, as_json: bool, name: str, artifact: Path | None) -> None:
    """Swap a running plugin for a new build (its file in the plugins dir, or ARTIFACT) while the
    manager keeps serving; if the new build fails, the old one keeps serving."""
    params = {"name": name, "artifact": str(artifact.resolve()) if artifact else None}
    row = daemon_or_fail(home, config_file).call("plugin.reload", params)
    if as_json:
        click.echo(json.dumps(row, indent=2, default=str))
    else:
        click.echo(f"reloaded {row['kind']}/{row['name']}: {row['previous_version']} -> {row['version']} (build time {row['build_time']})")


@plugin.command("flush")
@home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.argument("name")
def plugin_flush(home: Path | None, config_file: Path | None, name: str) -> None:
    """Ask every worker of the plugin to re-read its own settings (its onFlush hook)."""
    answers = daemon_or_fail(home, config_file).call("plugin.flush", {"name": name})
    if not any(answers):
        click.echo(f"{name} has no onFlush hook: nothing to do")
    else:
        click.echo(f"flushed {name} in {len(answers)} worker(s)")


@plugin.command("rescan")
@home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def plugin_rescan(home: Path | None, config_file: Path | None, as_json: bool) -> None:
    """Pick up changed or new artifacts in the plugins dir (never done silently). Exits 1 if an
    artifact did not load (every one is listed; the others are picked up all the same)."""
    changes = daemon_or_fail(home, config_file).call("plugin.rescan")
    print_table(changes, ["name", "change", "version", "artifact", "error"], as_json)
    broken = [c for c in changes if c["change"] in ("failed", "refused")]
    if broken:
        click.echo(f"{len(broken)} artifact(s) did not load: fix or remove each one listed, then `vsm-pool plugin rescan` again "
                   "(`vsm-pool status` lists them meanwhile)", err=True)
        sys.exit(1)


@plugin.group("env")
def plugin_env() -> None:
    """The plugins' own environments (<home>/envs): list them, prune the unused ones."""


def _envs_in_use(home: Path | None, config_file: Path | None) -> dict[str, list[str]]:
    """Environment key -> the plugins that use it: every artifact of the plugins dir (and of
    the entry points), and whatever the running daemon has loaded (a reload from elsewhere)."""
    from ..plugin.loader import discover
    from .client import daemon_client

    used: dict[str, list[str]] = {}
    plugins, _ = discover(load_config_for(home, config_file).plugins_dir, entry_points=True)
    rows = [{"name": p.manifest.name, "env": p.env_row()} for p in plugins]
    client = daemon_client(home, config_file)
    if client is not None:
        rows += client.call("plugin.list")
    for row in rows:
        if row.get("env"):
            names = used.setdefault(row["env"]["key"], [])
            if row["name"] not in names:
                names.append(row["name"])
    return used


@plugin_env.command("list")
@home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def plugin_env_list(home: Path | None, config_file: Path | None, as_json: bool) -> None:
    """Every environment: its packages, the plugins that use it, its size and creation time."""
    from ..config import resolve_home
    from ..plugin.envs import describe_packages, list_envs

    used = _envs_in_use(home, config_file)
    rows = []
    for env in list_envs(resolve_home(home) / "envs"):
        env["used_by"] = used.get(env["key"], [])
        if not as_json:
            env = {**env, "packages": describe_packages(env["packages"]), "used_by": ", ".join(env["used_by"]) or "(unused)",
                   "size": f"{env['bytes'] / 1e6:.1f} MB", "seconds": f"{env['seconds']:.1f} s"}
        rows.append(env)
    print_table(rows, ["key", "packages", "used_by", "size", "created", "seconds"], as_json)


@plugin_env.command("prune")
@home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path))
def plugin_env_prune(home: Path | None, config_file: Path | None) -> None:
    """Remove the environments that no artifact of the plugins dir (nor the running daemon) uses."""
    from ..config import resolve_home
    from ..plugin.envs import prune

    envs_dir = resolve_home(home) / "envs"
    removed = prune(envs_dir, set(_envs_in_use(home, config_file)))
    for name in removed:
        click.echo(f"removed {envs_dir / name}")
    click.echo(f"{len(removed)} environment(s) removed")
