"""The parts of docs/plugin-format.md that are generated from the code, so they cannot drift.

    python -m vsm.plugin.docgen docs/plugin-format.md           rewrite the generated parts
    python -m vsm.plugin.docgen --check docs/plugin-format.md   exit 1 if one differs

A generated part sits between `<!-- generated: NAME -->` and `<!-- end: NAME -->`; what is
outside is written by hand. tests/conformance/test_plugin_format_doc.py fails when a part
differs from what the code says (an SDK method, a kit's rule, the event schema, an error).

    extension-points      vsm.sdk._kinds.EXT_POINTS
    methods:<Kind>        the SDK protocols (vsm.sdk.kvstore, objstore, sectorsync): signature
                          and first docstring line of every method, fields of the dataclasses
    errors                vsm.sdk.errors: every error, its bases and meaning
    event-schema          vsm.sdk.sectors.SECTOR_EVENT_SCHEMA, nested columns as a tree
    rules:<Kind>          the kits' rule tables (vsm.plugin.conformance): the words
                          `vsm-pool plugin test` prints
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

__all__ = ["PARTS", "render", "update"]

_PART = re.compile(r"(<!-- generated: (?P<name>[\w:-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


def _first_line(doc: str | None) -> str:
    return " ".join((inspect.cleandoc(doc or "").split("\n\n")[0]).split())


_ALIASES = {"Key": "bytes", "Val": "bytes", "Prefix": "bytes"}  # vsm.sdk.kvstore's names for bytes


def _type(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return re.sub(r"\b(Key|Val|Prefix)\b", lambda m: _ALIASES[m.group(1)], text)


def _signature(fn: Callable[..., Any]) -> str:
    """`(a: bytes, b: int = 1) -> str`, without self, annotations as written."""
    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        text = p.name if p.annotation is p.empty else f"{p.name}: {_type(p.annotation)}"
        params.append(text if p.default is p.empty else f"{text} = {p.default!r}")
    ret = "" if sig.return_annotation is sig.empty else f" -> {_type(sig.return_annotation)}"
    return f"({', '.join(params)}){ret}"


def _methods(cls: type, title: str) -> list[str]:
    lines = [f"`{title}`", ""]
    for name, fn in cls.__dict__.items():
        if not callable(fn) or (name.startswith("_") and name not in ("__iter__", "__next__")):
            continue
        lines.append(f"- `{name}{_signature(fn)}`: {_first_line(fn.__doc__) or '(no description)'}")
    attrs = getattr(cls, "__annotations__", {})
    for name, ann in attrs.items():
        comment = _field_comments(cls).get(name, "")
        lines.append(f"- `{name}: {_type(ann)}` (attribute): {comment}")
    return lines + [""]


def _field_comments(cls: type) -> dict[str, str]:
    """`name: type = ...  # comment` lines of a class body."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^#]+#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _dataclass(cls: type) -> list[str]:
    comments = _field_comments(cls)
    lines = [f"`{cls.__name__}` (frozen dataclass): {_first_line(cls.__doc__)}", ""]
    for f in dataclasses.fields(cls):
        lines.append(f"- `{f.name}: {f.type}`" + (f": {comments[f.name]}" if f.name in comments else ""))
    return lines + [""]


def _methods_kvstore() -> list[str]:
    from vsm.sdk import kvstore

    return [*_methods(kvstore.DB, "DB"), *_methods(kvstore.KVStore, "KVStore (a collection)"), *_methods(kvstore.Txn, "Txn"), *_methods(kvstore.Iter, "Iter")]


def _methods_objstore() -> list[str]:
    from vsm.sdk import objstore

    chunks = objstore.iter_chunks
    return [
        *_dataclass(objstore.Config),
        *_dataclass(objstore.Stat),
        *_dataclass(objstore.InstanceInfo),
        *_methods(objstore.Store, "Store"),
        *_methods(objstore.FileStore, "FileStore (optional, for a store whose objects are files)"),
        *_methods(objstore.ObjectWriter, "ObjectWriter"),
        *_methods(objstore.RangeStore, "RangeStore (optional: ranged reads without reading up to the range)"),
        f"`vsm.sdk.iter_chunks{_signature(chunks)}`: {_first_line(chunks.__doc__)}",
        "",
    ]


def _methods_sectorsync() -> list[str]:
    from vsm.sdk import sectorsync

    return _methods(sectorsync.Sink, "Sink (what a Constructor returns)")


def _errors() -> list[str]:
    from vsm.sdk import errors

    lines = ["| error | is also a | meaning |", "|---|---|---|"]
    for name in sorted(errors.__all__, key=lambda n: (n != "PluginError", n)):
        cls = getattr(errors, name)
        bases = ", ".join(b.__name__ for b in cls.__bases__ if b.__name__ != "PluginError") or "-"
        lines.append(f"| `{name}` | {bases} | {_first_line(cls.__doc__)} |")
    return lines


def _extension_points() -> list[str]:
    from vsm.sdk._kinds import EXT_POINTS

    lines = ["| kind | extPoint | required | the impl is called as |", "|---|---|---|---|"]
    for kind, points in EXT_POINTS.items():
        for point, (required, params) in points.items():
            lines.append(f"| {kind.value} | {point} | {'yes' if required else 'no'} | `impl({', '.join(params)})` |")
    return lines


def _schema_tree(fields: Any, depth: int = 0) -> list[str]:
    lines = []
    for f in fields:
        t = f.type
        null = "" if f.nullable else " not null"
        if pa.types.is_struct(t):
            lines.append(f"{'  ' * depth}{f.name}: struct{null}")
            lines += _schema_tree(list(t), depth + 1)
        elif pa.types.is_list(t) and pa.types.is_struct(t.value_type):
            lines.append(f"{'  ' * depth}{f.name}: list<struct>{null}")
            lines += _schema_tree(list(t.value_type), depth + 1)
        else:
            lines.append(f"{'  ' * depth}{f.name}: {t}{null}")
    return lines


def _event_schema() -> list[str]:
    from vsm.sdk.sectors import EVENT_KINDS, SECTOR_EVENT_SCHEMA

    return [
        f"`kind` is one of: {', '.join(EVENT_KINDS)}.",
        "",
        "```",
        *_schema_tree(SECTOR_EVENT_SCHEMA),
        "```",
    ]


def _rules(kind: str) -> Callable[[], list[str]]:
    def render_rules() -> list[str]:
        from vsm.plugin import conformance as c

        checks = {
            "KVStore": c.KVSTORE_CHECKS,
            "ObjStore": c.OBJSTORE_CHECKS,
            "SyncSectorState": c.SECTORSYNC_CHECKS,
            "RegisterJsonRpc": c.JSONRPC_CHECKS,
        }[kind]
        return [f"- `{check.__name__}`: {c.rule_text(check)}" for check in checks]

    return render_rules


PARTS: dict[str, Callable[[], list[str]]] = {
    "extension-points": _extension_points,
    "methods:KVStore": _methods_kvstore,
    "methods:ObjStore": _methods_objstore,
    "methods:SyncSectorState": _methods_sectorsync,
    "errors": _errors,
    "event-schema": _event_schema,
    **{f"rules:{k}": _rules(k) for k in ("KVStore", "ObjStore", "SyncSectorState", "RegisterJsonRpc")},
}


def render(name: str) -> str:
    return "\n".join(PARTS[name]()).rstrip("\n") + "\n"


def update(text: str) -> tuple[str, list[str]]:
    """(text with every generated part rendered anew, names of the parts that changed);
    raises ValueError for a part the generator does not know or one it knows but misses."""
    changed: list[str] = []
    seen: set[str] = set()

    def fill(m: re.Match[str]) -> str:
        name = m["name"]
        if name not in PARTS:
            raise ValueError(f"unknown generated part {name!r}; known: {', '.join(PARTS)}")
        seen.add(name)
        body = render(name)
        if body != m["body"]:
            changed.append(name)
        return f"{m.group(1)}{body}{m.group(4)}"

    out = _PART.sub(fill, text)
    missing = sorted(set(PARTS) - seen)
    if missing:
        raise ValueError(f"the document lacks the generated parts {', '.join(missing)}")
    return out, changed


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    if len(paths) != 1:
        print("usage: python -m vsm.plugin.docgen [--check] docs/plugin-format.md", file=sys.stderr)
        return 2
    path = Path(paths[0])
    new, changed = update(path.read_text(encoding="utf-8"))
    if check:
        if changed:
            print(f"{path}: generated parts out of date: {', '.join(changed)}; run python -m vsm.plugin.docgen {path}", file=sys.stderr)
            return 1
        return 0
    path.write_text(new, encoding="utf-8")
    print(f"{path}: {', '.join(changed) or 'nothing'} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
