"""docs/plugin-format.md says what the code does: its generated parts are current, it names every
manifest key and event kind, and each row of its JSON-RPC error table holds through the
daemon's own dispatcher against a real pool."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vsm.plugin import docgen
from vsm.plugin.artifact import build
from vsm.plugin.conformance import RpcKit
from vsm.plugin.loader import Plugin, Registry
from vsm.plugin.manifest import _SOURCE_KEYS
from vsm.sdk.sectors import EVENT_KINDS

pytestmark = pytest.mark.timeout(120)

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugin-format.md"


def test_generated_parts_are_current():
    _, changed = docgen.update(DOC.read_text())
    assert not changed, f"docs/plugin-format.md differs from the code in {changed}: run python -m vsm.plugin.docgen docs/plugin-format.md"


def test_every_manifest_key_is_documented():
    block = DOC.read_text().split("```toml", 1)[1].split("```", 1)[0]
    keys = set(re.findall(r"(?m)^(\w+) =", block))
    assert set(_SOURCE_KEYS) <= keys, f"manifest keys missing from the doc's example: {sorted(set(_SOURCE_KEYS) - keys)}"


def test_every_event_kind_has_its_hook_row():
    table = DOC.read_text().split("| event `kind` | hook |", 1)[1].split("\n\n", 1)[0]
    documented = {k.strip() for row in table.splitlines()[2:] for k in row.split("|")[1].split(",")}
    assert documented == set(EVENT_KINDS), documented ^ set(EVENT_KINDS)


RAISER = '''\
import os

from vsm.sdk import InvalidRequestError, KeyNotFoundError, PluginError


class Handler:
    def ok(self, a: int) -> int:
        return a

    def invalid_request(self):
        raise InvalidRequestError("not for you")

    def value_error(self):
        raise ValueError("bad value")

    def type_error(self):
        raise TypeError("bad type")

    def key_error(self):
        raise KeyError("no such thing")

    def plugin_error(self):
        raise PluginError("the plugin says no")

    def key_not_found(self):
        raise KeyNotFoundError("missing key")

    def runtime_error(self):
        raise RuntimeError("unexpected")

    def crash(self):
        os._exit(3)


def handler():
    return "DOC", Handler()
'''

# How to provoke each row of the doc's error table, by a phrase of the row.
PROVOKE = {
    "`<namespace>.<method>` unknown": [("no_such_method", []), ("_private", [])],
    "params that do not fit": [("ok", [1, 2]), ("ok", {"b": 1}), ("ok", [])],
    "raises `vsm.sdk.InvalidRequestError`": [("invalid_request", [])],
    "raises anything else": [("value_error", []), ("type_error", []), ("key_error", []), ("plugin_error", []), ("key_not_found", []),
                             ("runtime_error", [])],
    "worker crashed": [("crash", [])],
}


def _error_table() -> list[tuple[str, int]]:
    section = DOC.read_text().split("## RegisterJsonRpc", 1)[1].split("## Errors", 1)[0]
    rows = re.findall(r"(?m)^  \| (.+?) \| (-32\d{3}) [a-z ]+\|$", section)
    assert rows, "no error table in the RegisterJsonRpc section"
    return [(text, int(code)) for text, code in rows]


def test_the_jsonrpc_error_table_holds(tmp_path):
    src = tmp_path / "src" / "doc_rpc"
    src.mkdir(parents=True)
    (src / "manifest.toml").write_text('name = "doc_rpc"\nkind = "RegisterJsonRpc"\nexport = [{extPoint = "Handler", impl = "handler"}]\n')
    (src / "doc_rpc.py").write_text(RAISER)
    artifact, manifest, _ = build(src, tmp_path / "out")
    plugin = Plugin(manifest, artifact)
    registry = Registry([plugin], plugins_dir=str(tmp_path))
    try:
        kit = RpcKit(registry.start(plugin, workers=1))
        for text, code in _error_table():
            cases = next((c for phrase, c in PROVOKE.items() if phrase in text), None)
            assert cases is not None, f"the doc's row {text!r} has no case in this test: add one"
            for method, params in cases:
                reply = kit.call(method, params)
                got = reply.get("error", {}).get("code")
                assert got == code, (
                    f"docs/plugin-format.md says {code} for {text!r}, the daemon's dispatcher answers DOC.{method}({params}) "
                    f"with {reply}: update the doc's RegisterJsonRpc error table (and PROVOKE here) to what the code does"
                )
    finally:
        registry.close()
