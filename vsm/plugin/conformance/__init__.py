"""Conformance kits: the rules a plugin of each kind must keep, runnable against any
implementation object (imported in-process, or a pooled proxy; both satisfy the SDK protocols).

    results = run_kvstore_kit(db)            # db: a running kvstore.DB
    results = run_objstore_kit(make_store)   # make_store(read_only: bool) -> objstore.Store
    print(format_results(results))

Each check is a function whose docstring states its rule; `KVSTORE_CHECKS` and
`OBJSTORE_CHECKS` list them, so a test suite can run them one by one.
"""

from __future__ import annotations

from ._kvstore import KVSTORE_CHECKS, KitError, run_kvstore_kit
from ._objstore import OBJSTORE_CHECKS, MakeStore, run_objstore_kit
from ._jsonrpc import JSONRPC_CHECKS, RpcKit, run_jsonrpc_kit
from ._sectorsync import SECTORSYNC_CHECKS, SinkKit, run_sectorsync_kit
from ._result import CheckResult, SkipCheck, format_result, format_results, rule_text, summary_line

__all__ = [
    "JSONRPC_CHECKS",
    "RpcKit",
    "run_jsonrpc_kit",
    "KVSTORE_CHECKS",
    "OBJSTORE_CHECKS",
    "SECTORSYNC_CHECKS",
    "SinkKit",
    "CheckResult",
    "KitError",
    "MakeStore",
    "SkipCheck",
    "format_result",
    "format_results",
    "rule_text",
    "summary_line",
    "run_kvstore_kit",
    "run_objstore_kit",
    "run_sectorsync_kit",
]
