"""`vsm-pool config init`, `vsm-pool util migrate` and `vsm-pool bench`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._common import home_option, load_config_for, meta_pairs, print_table

__all__ = ["bench", "config", "util"]


@click.group()
def config() -> None:
    """The config file."""


@config.command("init")
@home_option
@click.option("--force", is_flag=True, help="Overwrite an existing config.toml.")
def config_init(home: Path | None, force: bool) -> None:
    """Write a commented default config (and the home folder's layout)."""
    from ..config import default_config_text, resolve_home
    from ..home import ensure_home

    home = resolve_home(home)
    target = home / "config.toml"
    if target.exists() and force:
        target.write_text(default_config_text(home), encoding="utf-8")
    elif target.exists():
        raise click.ClickException(f"{target} exists; use --force to overwrite it")
    ensure_home(home)
    click.echo(str(target))


@config.command("reload")
@home_option
def config_reload(home: Path | None) -> None:
    """Apply the config file's changes to the running daemon (as `kill -HUP`): stores, plugins'
    pool settings and Meta, store policies; list what needs a restart."""
    from ._common import daemon_or_fail

    report = daemon_or_fail(home, None).call("config.reload")
    if not report["changed"]:
        click.echo(f"{report['file']}: nothing changed")
    for line in report["applied"]:
        click.echo(f"applied: {line}")
    for line in report["restart"]:
        click.echo(f"needs a restart: {line} (`vsm-pool stop`, then `vsm-pool start`)")
    for line in report["failed"]:
        click.echo(f"not applied: {line}", err=True)
    if report["failed"]:
        sys.exit(1)


@click.command()
@click.option("--quick", is_flag=True, help="Smaller sizes, for a smoke run (about a minute).")
@click.option("--suite", "suites", multiple=True, type=click.Choice(["executor", "isolation", "sectors", "operator", "envs", "ray", "soak"]),
              help="Run only these suites (soak: only on request; the daemon under load and faults for --soak-minutes).")
@click.option("--soak-minutes", type=float, default=None, help="Length of the soak suite (default 10, 1 with --quick).")
@click.option(
    "--backend",
    type=click.Choice(["process", "ray", "both"]),
    default="process",
    show_default=True,
    help="process: the local suites (executor, isolation, sectors, operator, envs). ray: the Ray suite, i.e. small calls, "
    "byte streams and the sink fan-out on Ray pools beside local pools in one run "
    "(pip install 'vsm-pool[ray]'). both: all suites. With --suite, ray/both add the Ray suite.",
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-results.json"), show_default=True, help="Write the rows here as JSON.")
def bench(quick: bool, suites: tuple[str, ...], soak_minutes: float | None, backend: str, out: Path) -> None:
    """Measure vsm-pool against what users would pick instead, side by side in one run."""
    import os

    from ..home import bundled_root

    if soak_minutes is not None:
        os.environ["VSM_SOAK_MINUTES"] = str(soak_minutes)

    sys.path.insert(0, str(bundled_root()))
    from bench.run import main as run_bench

    if backend != "process":
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise click.ClickException(f"--backend {backend} needs Ray: pip install 'vsm-pool[ray]' (import ray failed: {e})") from None
    names = list(suites) or {"process": ["executor", "isolation", "sectors", "operator", "envs"], "ray": ["ray"], "both": ["executor", "isolation", "sectors", "operator", "envs", "ray"]}[backend]
    if backend != "process" and "ray" not in names:
        names.append("ray")
    sys.exit(run_bench(names, quick, out))


@click.group()
def util() -> None:
    """Maintenance tools."""


@util.command("migrate")
@home_option
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="Config file (default: <home>/config.toml).")
@click.option("--dir", "plugins_dir", type=click.Path(path_type=Path), help="Plugins dir (default: the config's).")
@click.option("--from", "source", required=True, help="Source KVStore plugin name.")
@click.option("--from-meta", multiple=True, help="Source Meta KEY=VALUE (repeatable).")
@click.option("--to", "target", required=True, help="Target KVStore plugin name.")
@click.option("--to-meta", multiple=True, help="Target Meta KEY=VALUE (repeatable).")
@click.option("--collection", "collections", multiple=True, help="Collections to copy (default: every one the source holds).")
def util_migrate(home: Path | None, config_file: Path | None, plugins_dir: Path | None, source: str, from_meta: tuple[str, ...],
                 target: str, to_meta: tuple[str, ...], collections: tuple[str, ...]) -> None:
    """Copy every KV collection from one KVStore plugin to another, then check the counts."""
    from tqdm import tqdm

    from ..plugin.loader import Registry, discover
    from ..plugin.migrate import migrate

    directory = plugins_dir or load_config_for(home, config_file).plugins_dir
    plugins, _ = discover(directory)
    with tqdm(unit=" keys", desc="migrate", file=sys.stderr, disable=None) as bar:
        report = migrate(
            Registry(plugins),
            (source, meta_pairs(from_meta, "--from-meta")),
            (target, meta_pairs(to_meta, "--to-meta")),
            collections or None,
            progress=lambda coll, n: (bar.set_postfix_str(coll), bar.update(n)),
        )
    bad = [r for r in report if not r.ok]
    print_table([{**r.__dict__, "ok": r.ok} for r in report], ["name", "copied", "source_count", "target_count", "ok"], False)
    if bad:
        raise click.ClickException(f"count check failed for: {', '.join(r.name for r in bad)}")
    click.echo(f"migrated {sum(r.copied for r in report)} keys in {len(report)} collections from {source} to {target}")
