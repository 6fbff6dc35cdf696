"""docs/architecture.md stays true: every `file.py:Name.attr` it cites names a function, class or
method that exists in that file, and every folder or file it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
CITATION = re.compile(r"`((?:vsm|executors|plugins|bench|tests)/[\w/]*?\.py):([\w.]+)`")
PATH = re.compile(r"`((?:vsm|executors|plugins|bench|tests|docs)/[\w/.]*)`")


def _defined(tree: ast.AST, dotted: str) -> bool:
    scope: list[ast.stmt] = list(getattr(tree, "body", []))
    for part in dotted.split("."):
        found = None
        for node in scope:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == part:
                found = node
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == part for t in node.targets):
                found = node
        if found is None:
            return False
        scope = list(getattr(found, "body", []))
    return True


def test_every_cited_name_exists():
    text = DOC.read_text()
    cited = CITATION.findall(text)
    assert len(cited) >= 30, "the flows should cite the functions they pass through"
    missing = []
    for file, dotted in cited:
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
            continue
        if not _defined(ast.parse(path.read_text()), dotted):
            missing.append(f"{file}:{dotted}")
    assert not missing, "docs/architecture.md cites names that do not exist: " + ", ".join(missing)


def test_every_named_path_exists():
    missing = [p for p in PATH.findall(DOC.read_text()) if not (ROOT / p).exists()]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_the_checker_can_fail(tmp_path):
    """The AST lookup tells a missing method from a present one."""
    tree = ast.parse("class A:\n    def b(self):\n        pass\nX = 1\n")
    assert _defined(tree, "A.b") and _defined(tree, "X")
    assert not _defined(tree, "A.c") and not _defined(tree, "B")
