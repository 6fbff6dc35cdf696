"""CallFuture: the lazily-locked Future must behave like concurrent.futures.Future."""

from __future__ import annotations

import concurrent.futures as cf
import threading

import pytest

from executors._future import CallFuture


def _f(i: int = 0) -> CallFuture:
    return CallFuture(i, "m", None, 0.0)


def test_result_exception_and_callbacks():
    f = _f()
    seen = []
    f.add_done_callback(lambda x: seen.append(x.result()))
    assert not f.done()
    f.resolve(5)
    assert f.done() and f.result() == 5 and seen == [5]
    f.resolve(6)  # a late answer never overwrites
    assert f.result() == 5
    g = _f()
    g.reject(KeyError("k"))
    with pytest.raises(KeyError):
        g.result()
    assert isinstance(g.exception(), KeyError)
    with pytest.raises(cf.InvalidStateError):
        g.set_result(1)
    h = _f()
    h.resolve(1)
    late = []
    h.add_done_callback(late.append)
    assert late == [h]


def test_wait_and_as_completed():
    fs = [_f(i) for i in range(20)]

    def resolve():
        for i, f in enumerate(fs):
            f.resolve(i)

    t = threading.Thread(target=resolve)
    t.start()
    done, not_done = cf.wait(fs, timeout=10)
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=10)) == list(range(20))
    t.join()


def test_result_timeout():
    with pytest.raises(cf.TimeoutError):
        _f().result(timeout=0.01)


def test_no_lost_wakeup_under_races():
    # a waiter that arrives just before, during or after resolve() must always wake up
    for _ in range(3000):
        f = _f()
        t = threading.Thread(target=f.resolve, args=(1,))
        t.start()
        assert f.result(timeout=5) == 1
        t.join()
