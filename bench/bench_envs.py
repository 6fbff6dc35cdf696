"""Plugin environment benchmarks (issue 15), side by side in one run.

    python -m bench.bench_envs [--quick]

First start: a plugin requiring packaging==21.3 (2 packages), its environment made from
  nothing and its 1-worker pool started, with uv (warm cache; and a cold cache: downloads),
  beside the same job done by pip (resolve with --dry-run --report, then install --no-deps
  --target: what envs.py would do without uv) and by the classic venv + pip install.
Warm start: the same plugin's pool started when its environment exists, beside the same
  plugin without requirements (the manager's packages), and beside what a venv with its own
  interpreter would pay once per environment for its own fork server (a fresh python importing
  the worker runtime).
Calls: the plugin's `echo` through its pool, one at a time and 10k in flight, in its own
  environment beside the manager's.

Seconds: lower is better, a ratio < 1 is faster than the peer; calls/s: higher is better.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.env_plugins import version_plugin  # noqa: E402
from executors import prestart  # noqa: E402
from vsm.plugin.artifact import build  # noqa: E402
from vsm.plugin.loader import WORKER_PRELOAD, Registry, discover  # noqa: E402

REQUIREMENT = "packaging==21.3"


def _row(workload: str, variant: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    return {"workload": workload, "variant": variant, "value": value, "unit": unit, "ratio_vs": {}, **extra}


def _ratio(row: dict[str, Any], label: str, peer: dict[str, Any]) -> None:
    if peer["value"]:
        row["ratio_vs"][label] = row["value"] / peer["value"]


def _best_seconds(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args], check=True, capture_output=True, env=env)


class _Plugins:
    """Two builds of the bench plugin (with and without the requirement) and fresh homes."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.with_env = scratch / "with-env"
        self.without = scratch / "without"
        build(version_plugin(scratch / "src-env", "benchenv", [REQUIREMENT]), self.with_env)
        build(version_plugin(scratch / "src-plain", "benchenv", []), self.without)
        self.n = 0

    def fresh_envs(self) -> Path:
        self.n += 1
        return self.scratch / f"envs{self.n}"

    def start(self, plugins_dir: Path, envs_dir: Path) -> tuple[Registry, Any]:
        plugins, _ = discover(plugins_dir, entry_points=False)
        registry = Registry(plugins, envs_dir=envs_dir)
        return registry, registry.start(plugins[0], workers=1)


def first_start(p: _Plugins, quick: bool) -> list[dict[str, Any]]:
    wl = f"env first start ({REQUIREMENT})"
    rows = []
    rep = 2 if quick else 3

    def uv_start() -> None:
        registry, pool = p.start(p.with_env, p.fresh_envs())
        pool.call("invoke", "echo", [1])
        registry.close()

    uv_start()  # the uv cache warm, as on a machine that made any environment before
    uv = _row(wl, "uv: env + 1-worker pool, warm cache", _best_seconds(uv_start, rep), "s")
    rows.append(uv)
    cold_cache = p.scratch / "uv-cache"
    os.environ["UV_CACHE_DIR"] = str(cold_cache)
    try:
        rows.append(_row(wl, "uv: env + pool, empty cache (downloads)", _best_seconds(uv_start, 1), "s"))
    finally:
        del os.environ["UV_CACHE_DIR"]
        shutil.rmtree(cold_cache, ignore_errors=True)

    def pip_target() -> None:
        target = p.fresh_envs()
        _pip("install", "--dry-run", "--ignore-installed", "--report", str(target) + ".json", REQUIREMENT)
        _pip("install", "--no-deps", "--no-compile", "--target", str(target), REQUIREMENT, "pyparsing")

    def venv_pip() -> None:
        venv = p.fresh_envs()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check", "install", REQUIREMENT], check=True, capture_output=True)

    pip_target()
    for variant, fn, n in (("pip: resolve + install --target (no pool)", pip_target, rep), ("venv + pip install (no pool)", venv_pip, 1)):
        row = _row(wl, variant, _best_seconds(fn, n), "s")
        _ratio(uv, variant.split(" (")[0], row)
        rows.append(row)
    return rows


def warm_start(p: _Plugins, quick: bool) -> list[dict[str, Any]]:
    wl = "env warm start, 1-worker pool"
    rep = 5 if quick else 10
    envs_dir = p.fresh_envs()
    p.start(p.with_env, envs_dir)[0].close()  # the environment exists from here on

    def own() -> None:
        p.start(p.with_env, envs_dir)[0].close()

    def plain() -> None:
        p.start(p.without, envs_dir)[0].close()

    mine = _row(wl, "in its own environment (exists)", _best_seconds(own, rep), "s")
    manager = _row(wl, "on the manager's packages", _best_seconds(plain, rep), "s")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    imports = "import executors._worker, " + ", ".join(WORKER_PRELOAD)
    fresh = _row(
        wl, "fresh python importing the worker runtime", _best_seconds(lambda: subprocess.run([sys.executable, "-c", imports], check=True, env=env), 3), "s"
    )
    _ratio(mine, "manager's packages", manager)
    _ratio(fresh, "own env pool start", mine)
    return [mine, manager, fresh]


def calls(p: _Plugins, quick: bool) -> list[dict[str, Any]]:
    """Both pools up at once, measured in alternating rounds (best of each): a busy machine
    then slows both alike instead of whichever ran second."""
    wl = "env calls: plugin echo"
    n_seq = 3000 if quick else 20000
    n_fut = 10000
    rep = 3 if quick else 5
    envs_dir = p.fresh_envs()
    started = {where: p.start(plugins_dir, envs_dir) for where, plugins_dir in (("own environment", p.with_env), ("manager's packages", p.without))}
    best: dict[tuple[str, str], float] = {}
    try:
        for _ in range(rep):
            for where, (_registry, pool) in started.items():
                assert pool.call("invoke", "echo", [7]) == 7

                def seq(pool: Any = pool) -> None:
                    for i in range(n_seq):
                        pool.call("invoke", "echo", [i])

                def inflight(pool: Any = pool) -> None:
                    futures = [pool.submit("invoke", "echo", [i]) for i in range(n_fut)]
                    for f in futures:
                        f.result()

                for variant, fn, n in (("one at a time", seq, n_seq), (f"{n_fut} in flight", inflight, n_fut)):
                    rate = n / _best_seconds(fn, 1)
                    best[(variant, where)] = max(best.get((variant, where), 0.0), rate)
    finally:
        for registry, _pool in started.values():
            registry.close()
    rows = [_row(wl, f"{variant}, {where}", rate, "calls/s") for (variant, where), rate in best.items()]
    for own, peer in ((0, 2), (1, 3)):
        _ratio(rows[own], "manager's packages", rows[peer])
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    prestart(WORKER_PRELOAD)  # the fork server's own start is not what these rows measure
    with tempfile.TemporaryDirectory(prefix="vsm-bench-envs-") as scratch:
        p = _Plugins(Path(scratch))
        return first_start(p, quick) + warm_start(p, quick) + calls(p, quick)


def main(argv: list[str]) -> int:
    from bench.run import format_table

    print(format_table({"rows": run("--quick" in argv), "errors": {}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
