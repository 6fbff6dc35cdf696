"""Fixtures for the backend plugins (redis, s3store, sqlsink) against real servers.

Servers used:
- the machine's Redis (127.0.0.1:6379), PostgreSQL (127.0.0.1:5432, database `test`) and
  MariaDB/MySQL (127.0.0.1:3306, database `test`): shared, so every test works under a key
  prefix or table prefix of its own and removes it afterwards;
- throwaway `redis-server` and `moto_server` processes started here on free loopback ports
  (tests that kill a server never touch the shared one), stopped by their pid afterwards.

A test whose server is unreachable is skipped with the reason, unless VSM_REQUIRE_SERVERS=1
(CI), where it fails instead: see `need_server`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import types
import uuid
from typing import Any, Callable, Iterator

import psutil
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
if str(REPO) not in sys.path:  # `pytest tests/backends` before the package is installed
    sys.path.insert(0, str(REPO))

REDIS_ADDR = os.environ.get("VSM_TEST_REDIS", "127.0.0.1:6379")
PG_DSN = os.environ.get("VSM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_DSN = os.environ.get("VSM_TEST_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")


# -- the one switch: skip, or fail when servers are required ---------------------------------


def need_server(what: str, why: str) -> None:
    """Skip the test because `what` is unavailable; fail instead if VSM_REQUIRE_SERVERS=1."""
    msg = f"{what} unavailable: {why}"
    if os.environ.get("VSM_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{msg} (VSM_REQUIRE_SERVERS=1)", pytrace=False)
    pytest.skip(msg)


# -- loading plugins from their source folders -----------------------------------------------


def load_plugin(name: str) -> types.ModuleType:
    """Import plugins/<name>/<module>.py under a private module name (no artifact build)."""
    with open(PLUGINS / name / "manifest.toml", "rb") as f:
        manifest = tomllib.load(f)
    mod_name = f"_vsm_backend_plugin_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    path = PLUGINS / name / f"{manifest.get('module', name)}.py"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None, f"cannot import {path}"
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    return mod


def constructor(name: str) -> Callable[..., Any]:
    with open(PLUGINS / name / "manifest.toml", "rb") as f:
        exports = {e["extPoint"]: e["impl"] for e in tomllib.load(f)["export"]}
    return getattr(load_plugin(name), exports["Constructor"])  # type: ignore[no-any-return]


# -- throwaway server processes --------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, log: pathlib.Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout}s: {log.read_text()[-2000:]}")


class ServerProcess:
    """A server subprocess on a fixed loopback port: start, kill, start again."""

    def __init__(self, argv: Callable[[int], list[str]], log_dir: pathlib.Path, name: str,
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self._argv = argv
        self._env = env
        self.name = name
        self.port = port or free_port()
        self.log = log_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self._argv(self.port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(self._env or {})}, start_new_session=True,
            )
        try:
            _wait_port(self.port, self.proc, timeout, self.log)
        except Exception:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the server (and anything it forked), wait for it; safe twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture
def make_redis_server(tmp_path: pathlib.Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory of throwaway redis-servers with extra arguments (e.g. --requirepass)."""
    binary = shutil.which("redis-server")
    if binary is None:
        need_server("redis-server binary", "not on PATH (apt-get install redis-server)")
    started: list[ServerProcess] = []

    def make(*extra: str) -> ServerProcess:
        def argv(port: int) -> list[str]:
            return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra]

        server = ServerProcess(argv, tmp_path, "redis")
        server.start()
        started.append(server)
        return server

    yield make
    for s in started:
        s.kill()


@pytest.fixture
def redis_server(make_redis_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A throwaway redis-server (no persistence) that a test may kill and restart."""
    return make_redis_server()


def _moto(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str] | None = None) -> ServerProcess:
    binary = shutil.which("moto_server")
    if binary is None:
        need_server("moto_server", "not on PATH (pip install 'moto[server]')")
    server = ServerProcess(
        lambda port: [binary, "-H", "127.0.0.1", "-p", str(port)],
        tmp_path_factory.mktemp("moto"), "moto", env=env,
    )
    try:
        server.start(timeout=60)
    except RuntimeError as e:
        need_server("moto_server", str(e))
    return server


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One moto S3 server per test module (buckets keep tests apart)."""
    server = _moto(tmp_path_factory)
    yield server
    server.kill()


# -- shared servers --------------------------------------------------------------------------


@pytest.fixture
def redis_meta() -> Iterator[dict[str, str]]:
    """Meta for the machine's Redis under a fresh KeyPrefix; its keys are deleted afterwards."""
    try:
        import redis
    except ImportError as e:
        need_server("redis-py", str(e))
    host, _, port = REDIS_ADDR.rpartition(":")
    client = redis.Redis(host=host, port=int(port), socket_connect_timeout=2, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as e:
        need_server(f"Redis at {REDIS_ADDR}", str(e))
    prefix = f"vsmtest-{uuid.uuid4().hex[:10]}"
    yield {"Addr": REDIS_ADDR, "KeyPrefix": prefix}
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    client.close()


def _pg_ok() -> str | None:
    try:
        import psycopg

        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except Exception as e:  # ImportError or any connection error
        return str(e).splitlines()[0]
    return None


def _mysql_ok() -> str | None:
    try:
        import pymysql

        sql_connect(MYSQL_DSN).close()
    except Exception as e:
        return str(e).splitlines()[0]
    return None


def sql_connect(dsn: str) -> Any:
    """A plain DB-API connection to dsn (for checking what the sink wrote)."""
    import urllib.parse

    if dsn.startswith("postgres"):
        import psycopg

        return psycopg.connect(dsn, connect_timeout=3, autocommit=True)
    import pymysql

    p = urllib.parse.urlsplit(dsn)
    return pymysql.connect(host=p.hostname, port=p.port or 3306, user=p.username or "root",
                           password=p.password or "", database=p.path.lstrip("/"),
                           autocommit=True, connect_timeout=3)


@pytest.fixture(params=["postgresql", "mysql"])
def sql_dsn(request: pytest.FixtureRequest) -> str:
    """The DSN of each SQL server (PostgreSQL, MariaDB/MySQL); skipped when unreachable."""
    if request.param == "postgresql":
        err, dsn = _pg_ok(), PG_DSN
    else:
        err, dsn = _mysql_ok(), MYSQL_DSN
    if err is not None:
        need_server(f"{request.param} at {dsn}", err)
    return dsn


@pytest.fixture
def table_prefix(sql_dsn: str) -> Iterator[str]:
    """A fresh TablePrefix; the sink's tables are dropped afterwards."""
    prefix = f"vsmtest_{uuid.uuid4().hex[:10]}_"
    yield prefix
    conn = sql_connect(sql_dsn)
    try:
        with contextlib.closing(conn.cursor()) as cur:
            for table in ("sector_events", "sectors"):
                cur.execute(f"DROP TABLE IF EXISTS {prefix}{table}")
    finally:
        conn.close()
