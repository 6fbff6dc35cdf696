"""`vsm-pool bench`: run the suites, print one table of ratios, write the rows as JSON.

Each suite module has `run(quick: bool) -> list[dict]`, rows of
{"workload", "variant", "value", "unit", "ratio_vs": {peer: ratio}}; absolute values drift on
a noisy machine, the ratios are measured within one run and are what to compare.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

SUITES = {
    "executor": "bench.bench_executor",
    "isolation": "bench.bench_isolation",
    "sectors": "bench.bench_sectors",
    "operator": "bench.bench_operator",
    "envs": "bench.bench_envs",
    "ray": "bench.bench_ray",
    "soak": "bench.bench_soak",  # only on request: minutes of faults under load
}


def run_suites(names: list[str], quick: bool) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for name in names:
        module = importlib.import_module(SUITES[name])
        started = time.monotonic()
        try:
            suite_rows = module.run(quick)
        except Exception as e:  # one broken suite must not hide the others' numbers
            errors[name] = f"{type(e).__name__}: {e}"
            continue
        for row in suite_rows:
            row.setdefault("suite", name)
        rows.extend(suite_rows)
        print(f"[{name}] {len(suite_rows)} rows in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return {
        "machine": {"python": platform.python_version(), "cpus": _cpus(), "platform": platform.platform()},
        "quick": quick,
        "rows": rows,
        "errors": errors,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def format_table(result: dict[str, Any]) -> str:
    lines = []
    header = f"{'suite':<9} {'workload':<34} {'variant':<34} {'value':>14} {'unit':<10} ratios"
    lines += [header, "-" * len(header)]
    for r in result["rows"]:
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in (r.get("ratio_vs") or {}).items())
        value = r["value"]
        shown = f"{value:,.3f}" if isinstance(value, float) and value < 100 else f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)
        lines.append(f"{r.get('suite', ''):<9} {r['workload']:<34.34} {r['variant']:<34.34} {shown:>14} {r['unit']:<10} {ratios}")
    for name, err in result["errors"].items():
        lines.append(f"{name}: FAILED: {err}")
    return "\n".join(lines)


def main(names: list[str], quick: bool, out: Path | None) -> int:
    result = run_suites(names, quick)
    print(format_table(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {out}", file=sys.stderr)
    return 1 if result["errors"] else 0
