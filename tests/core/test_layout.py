"""The package layout holds: no import cycles between vsm's modules, executors/ imports nothing of
vsm/, and plugins reach vsm only through the SDK (checked in tests/conformance/test_manifests.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of ours that `path` imports when it is imported (module level, not inside a
    function: a lazy import inside a function is how a cycle is deliberately avoided)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks do not run
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports mod (and runs pkg's __init__, which a package is
            # allowed to share with its modules); `from mod import name` imports mod
            subs = [f"{base}.{a.name}" for a in node.names]
            targets = [t for t in subs if t in modules] or [base]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph(*packages: str) -> dict[str, set[str]]:
    files = [p for pkg in packages for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def test_vsm_has_no_import_cycles():
    graph = _graph("vsm", "executors")
    # a package importing its own submodules (its __init__ re-exporting them) is not a cycle
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_executors_import_nothing_of_vsm():
    graph = _graph("vsm", "executors")
    bad = {m: sorted(d for d in deps if d.split(".")[0] == "vsm") for m, deps in graph.items() if m.startswith("executors")}
    assert not {m: d for m, d in bad.items() if d}, bad


def test_wiring_stays_at_the_top():
    """The rooms of vsm/ are packages; what stays at the top is wiring."""
    top = sorted(p.stem for p in (ROOT / "vsm").glob("*.py") if not p.stem.startswith("__"))
    assert top == ["config", "errors", "home", "manager"], top
