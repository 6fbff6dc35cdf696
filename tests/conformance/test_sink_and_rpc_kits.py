"""The SyncSectorState and RegisterJsonRpc kits fail broken plugins, each on the rule it breaks,
with the plugin's own file:line; built artifacts in real pools, as `vsm-pool plugin test` runs
them (the bundled ones pass: tests/core/test_runtime.py, tests/backends/test_pooled.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vsm.plugin.artifact import build
from vsm.plugin.conformance import JSONRPC_CHECKS, SECTORSYNC_CHECKS
from vsm.plugin.conformance.runner import run_conformance

pytestmark = pytest.mark.timeout(120)

SINK = 'name = "{name}"\nkind = "SyncSectorState"\nexport = [ {extPoint = "Constructor", impl = "make_sink"} ]\n'
GO_SINK = 'name = "{name}"\nkind = "SyncSectorState"\nexport = [ {exports} ]\n'
RPC = 'name = "{name}"\nkind = "RegisterJsonRpc"\nexport = [ {extPoint = "Handler", impl = "handler"} ]\n'

# A correct sink (dedupes by seq, reads back what it holds), the base of the mutants below.
GOOD_SINK = """\
import pyarrow as pa
import pyarrow.compute as pc


class Sink:
    accepts_tables = True

    def __init__(self):
        self.seqs = []
        self.max_seq = 0

    def on_batch(self, batch):
        batch = batch.filter(pc.greater(batch.column("seq"), self.max_seq))
        self.take(batch)

    def take(self, batch):
        if batch.num_rows:
            self.seqs += batch.column("seq").to_pylist()
            self.max_seq = max(self.seqs)

    def stored_seqs(self):
        return self.seqs


def make_sink(meta):
    return Sink()
"""


def _run(tmp_path: Path, manifest: str, module: str, name: str) -> dict:
    src = tmp_path / "src" / name
    src.mkdir(parents=True)
    (src / "manifest.toml").write_text(manifest.replace("{name}", name))
    (src / f"{name}.py").write_text(textwrap.dedent(module))
    artifact, _, _ = build(src, tmp_path / "out")
    run = run_conformance(artifact, {})
    return {r.name: r for r in run.results}


def _line(module: str, text: str) -> int:
    return next(n for n, line in enumerate(textwrap.dedent(module).splitlines(), 1) if text in line)


def test_a_correct_sink_passes(tmp_path):
    results = _run(tmp_path, SINK, GOOD_SINK, "good")
    assert list(results) == [c.__name__ for c in SECTORSYNC_CHECKS]
    assert all(r.passed for r in results.values()), results
    assert [n for n, r in results.items() if r.skipped] == ["go_hooks_get_typed_arguments"]


def test_a_sink_that_does_not_dedupe_fails_the_redelivery_rules(tmp_path):
    module = GOOD_SINK.replace("        batch = batch.filter(pc.greater(batch.column(\"seq\"), self.max_seq))\n", "")
    results = _run(tmp_path, SINK, module, "nodedupe")
    failed = {n for n, r in results.items() if not r.passed}
    assert failed == {"failed_delivery_is_retried", "redelivery_is_absorbed", "reopened_sink_takes_over", "worker_kill_loses_nothing", "rebuilt_sink_gets_one_row_per_sector"}, results
    assert "more than once: a redelivery was stored again" in results["redelivery_is_absorbed"].error


def test_a_sink_raising_on_one_kind_names_its_line(tmp_path):
    module = GOOD_SINK.replace(
        "    def take(self, batch):\n",
        "    def take(self, batch):\n        if 'revert' in batch.column('kind').to_pylist():\n            raise ValueError('cannot store a revert')\n",
    )
    results = _run(tmp_path, SINK, module, "norevert")
    error = results["every_event_arrives"].error
    assert error.startswith("the stream was not delivered: delivery stopped at seq ")
    assert error.endswith(f"ValueError: cannot store a revert (at norevert.py:{_line(module, 'cannot store a revert')} in take)"), error


def test_a_table_unaware_sink_and_a_sink_with_both_hook_styles_fail(tmp_path):
    module = GOOD_SINK.replace(
        "    def on_batch(self, batch):\n",
        "    def on_batch(self, batch):\n        assert isinstance(batch, pa.RecordBatch), type(batch).__name__\n",
    ).replace("    def stored_seqs(self):", "    def on_update(self, sector_id, worker_state, fields):\n        pass\n\n    def stored_seqs(self):")
    results = _run(tmp_path, SINK, module, "both")
    assert "AssertionError: Table (at both.py:" in results["every_event_arrives"].error
    assert results["on_batch_or_go_hooks"].error == "the sink has on_batch and OnUpdate: only on_batch is called; remove one"


GO_HOOKS = """\
from vsm.sdk.sectors import AllocatedSector, SectorID, SectorState

CALLS = []


def on_import(worker_state, state, override):
    assert isinstance(state, SectorState) and worker_state in ("online", "offline") and override in (True, False)


def on_init(sectors, worker_state):
    assert all(isinstance(s, AllocatedSector) for s in sectors)


def on_update(sector_id, worker_state, fields):
    assert isinstance(sector_id, SectorID) and all(name[0].isupper() for name in fields)


def on_finalize(sector_id):
    assert isinstance(sector_id, SectorID)


def on_restore(sector_id):
    RESTORE_FAILS and fail()


RESTORE_FAILS = False


def fail():
    raise RuntimeError("restore not supported")
"""
GO_EXPORTS = ", ".join(
    f'{{extPoint = "{p}", impl = "{f}"}}'
    for p, f in (("OnImport", "on_import"), ("OnInit", "on_init"), ("OnUpdate", "on_update"), ("OnFinalize", "on_finalize"), ("OnRestore", "on_restore"))
)


def test_go_hooks_get_their_typed_arguments_and_a_raising_hook_is_named(tmp_path):
    manifest = GO_SINK.replace("{exports}", GO_EXPORTS)
    results = _run(tmp_path, manifest, GO_HOOKS, "gohooks")
    assert results["go_hooks_get_typed_arguments"].status == "pass", results
    assert results["every_event_arrives"].passed and results["batches_have_the_event_schema"].skipped
    assert results["stored_once_per_seq"].skipped.endswith("it has no stored_seqs()")

    results = _run(tmp_path, manifest, GO_HOOKS.replace("RESTORE_FAILS = False", "RESTORE_FAILS = True"), "gohooksfail")
    assert results["every_event_arrives"].error.endswith(f"RuntimeError: restore not supported (at gohooksfail.py:{_line(GO_HOOKS, 'raise RuntimeError')} in fail)")


GOOD_RPC = """\
class Handler:
    def echo(self, text: str) -> str:
        return text

    def add(self, a: int, b: int = 2) -> int:
        return a + b

    def info(self) -> dict:
        return {"ok": True}


def handler():
    return "KIT_ECHO", Handler()
"""


def test_a_correct_rpc_plugin_passes(tmp_path):
    results = _run(tmp_path, RPC, GOOD_RPC, "echo")
    assert list(results) == [c.__name__ for c in JSONRPC_CHECKS]
    assert all(r.status == "pass" for r in results.values()), results


def test_a_method_raising_its_own_error_answers_and_a_bug_does_not(tmp_path):
    """Issue 26 item 8: echo.Fail raising the plugin's EchoFailed is an answer (-32001, as
    go-jsonrpc sends a returned error); a NameError in a method's code is a bug."""
    own = GOOD_RPC.replace("class Handler:", "class EchoFailed(Exception):\n    pass\n\n\nclass Handler:") + textwrap.dedent(
        """
        def _fail(self, text: str) -> str:
            raise EchoFailed(f"echo refused {text!r}")


        Handler.Fail = _fail
        """
    )
    results = _run(tmp_path, RPC, own, "echofail")
    assert results["every_method_answers"].status == "pass", results["every_method_answers"]
    bug = own.replace('raise EchoFailed(f"echo refused {text!r}")', "return undefined_name")
    error = _run(tmp_path, RPC, bug, "echobug")["every_method_answers"].error
    assert error.startswith("KIT_ECHO.Fail: error -32001: NameError: "), error


def test_rpc_mutants_fail_their_rule(tmp_path):
    shadow = GOOD_RPC.replace('"KIT_ECHO"', '"sectors"')
    assert "namespace 'sectors' is the daemon's own" in _run(tmp_path, RPC, shadow, "shadow")["handler_names_a_namespace"].error
    crash = "import os\n" + GOOD_RPC.replace("        return text\n", "        os._exit(3)\n")
    error = _run(tmp_path, RPC, crash, "crash")["every_method_answers"].error
    assert error.startswith("KIT_ECHO.echo: error -32002: WorkerCrashed: "), error
    raw = GOOD_RPC.replace("        return {\"ok\": True}\n", "        return b'raw bytes'\n")
    error = _run(tmp_path, RPC, raw, "raw")["every_method_answers"].error
    assert error.startswith("KIT_ECHO.info returned a value that is not JSON (the caller gets its str()): "), error
