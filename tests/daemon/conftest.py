"""Daemon fixtures: a module shares one daemon (`daemon`) unless a test needs a fresh one
(`start_daemon`). Every daemon is stopped with SIGTERM and checked: exit 0, no worker left, no
new /dev/shm segment, no daemon.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from .harness import Daemon, finish, kill_tree, start, stop_checked


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module, on its own home and a free port; stopped with SIGTERM."""
    d = start(tmp_path_factory.mktemp("daemon") / "home")
    try:
        yield d
    finally:
        if d.proc.poll() is None and not d.stopped:
            stop_checked(d)
        elif d.proc.poll() is None:
            kill_tree(d.proc)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Any]:
    """Start fresh daemons in this test: `start_daemon(home=None, port=None, env=None)`; each is stopped
    with SIGTERM and checked at the end unless the test stopped it."""
    started: list[Daemon] = []

    def _start(home: Path | None = None, port: int | None = None, env: dict[str, str] | None = None) -> Daemon:
        d = start(home or tmp_path / f"home{len(started)}", port, env=env)
        started.append(d)
        return d

    yield _start
    errors = []
    for d in started:
        try:
            finish(d)
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)
