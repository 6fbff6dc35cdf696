"""Every conformance check against every bundled plugin, one test per check."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from vsm.plugin.conformance import KVSTORE_CHECKS, OBJSTORE_CHECKS, format_results, run_kvstore_kit, run_objstore_kit

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("check", KVSTORE_CHECKS, ids=lambda c: c.__name__)
def test_kvstore_check(kv_db: Any, check: Callable[[Any], None]) -> None:
    results = run_kvstore_kit(kv_db, (check,))
    assert results[0].passed, format_results(results)


@pytest.mark.parametrize("check", OBJSTORE_CHECKS, ids=lambda c: c.__name__)
def test_objstore_check_fsstore(make_fsstore: Callable[[bool], Any], check: Callable[[Any], None]) -> None:
    results = run_objstore_kit(make_fsstore, (check,))
    assert results[0].passed, format_results(results)


def test_whole_kvstore_kit_in_one_db(kv_db: Any) -> None:
    """All checks share one DB without interfering: each uses collections of its own."""
    results = run_kvstore_kit(kv_db)
    assert [r.name for r in results] == [c.__name__ for c in KVSTORE_CHECKS]
    assert all(r.passed for r in results), format_results(results)


def test_whole_objstore_kit_twice_on_one_store(make_fsstore: Callable[[bool], Any]) -> None:
    """The kit can run again on a store that already holds its earlier objects."""
    for _ in range(2):
        results = run_objstore_kit(make_fsstore)
        assert all(r.passed for r in results), format_results(results)
