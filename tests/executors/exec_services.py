"""Service objects run inside pool workers by the executor tests (importable by reference)."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any, BinaryIO


class KV:
    """A tiny dict-backed store: the small-call workload."""

    def __init__(self) -> None:
        self.d: dict[Any, Any] = {}
        self.setup: list[Any] = []
        self.shutdowns = 0

    def get(self, k: Any) -> Any:
        return self.d.get(k)

    def put(self, k: Any, v: Any) -> None:
        self.d[k] = v

    def pid(self) -> int:
        return os.getpid()

    def echo(self, *args: Any) -> Any:
        return args

    def apply(self, fn: Any, *args: Any) -> Any:
        return fn(self, *args)

    def remember(self, x: Any) -> None:
        self.setup.append(x)

    def remembered(self) -> list[Any]:
        return self.setup

    def open_file(self, path: str, value: Any, n: int = 1) -> Any:
        """`value` with n fds of path open for reading (WithFds: they become the caller's);
        value "unpicklable" stands for one that will not pickle."""
        from executors import WithFds

        if value == "unpicklable":
            value = lambda_holder()
        return WithFds(value, tuple(os.open(path, os.O_RDONLY) for _ in range(n)))

    def fd_count(self) -> int:
        return len(os.listdir("/proc/self/fd"))

    def sleep(self, s: float) -> float:
        time.sleep(s)
        return s

    def fail(self, msg: str) -> None:
        raise ValueError(msg)

    def fail_custom(self) -> None:
        raise Unpicklable("boom", 1)

    def unpicklable_result(self) -> Any:
        return lambda_holder()

    def die(self, how: str, delay: float = 0.0) -> None:
        time.sleep(delay)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "exit":
            os._exit(3)
        elif how == "segfault":
            ctypes.string_at(0)
        time.sleep(30)

    def shutdown(self) -> None:
        with open(os.environ["EXEC_TEST_SHUTDOWN_FILE"], "a") as f:
            f.write(f"{os.getpid()}\n")

    def shutdown_fails(self) -> None:
        raise RuntimeError("shutdown went wrong")

    # -- streams -------------------------------------------------------------------------
    def consume(self, path: str, reader: BinaryIO) -> int:
        """Sums the bytes (drops them)."""
        total = 0
        checksum = 0
        views = getattr(reader, "iter_views", None)
        if views is not None and path.endswith(":views"):
            for v in views():
                total += len(v)
                checksum = (checksum + sum(v[:: max(1, len(v) // 64)])) & 0xFFFFFFFF
            return total
        buf = bytearray(1 << 20)
        while True:
            n = reader.readinto(buf)
            if not n:
                return total
            total += n

    def consume_bytes(self, path: str, reader: BinaryIO) -> bytes:
        return reader.read()

    def consume_some(self, path: str, reader: BinaryIO) -> int:
        return len(reader.read(10))

    def consume_and_die(self, path: str, reader: BinaryIO) -> int:
        reader.read(100)
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    def produce(self, size: int, chunk: int = 1 << 20) -> BinaryIO:
        return GenReader(size, chunk)

    def produce_bytes(self, data: bytes) -> BinaryIO:
        import io

        return io.BytesIO(data)

    def produce_slowly(self, data: bytes, delay: float) -> BinaryIO:
        """A reader that sleeps before each read: the caller runs dry and has to be woken."""
        return SlowReader(data, delay)

    def consume_slowly(self, delay: float, reader: BinaryIO) -> bytes:
        """Reads in small pieces, sleeping between them: the caller fills the ring and waits."""
        parts = []
        while piece := reader.read(7000):
            parts.append(piece)
            time.sleep(delay)
        return b"".join(parts)

    def produce_and_die(self, size: int) -> BinaryIO:
        return DyingReader(size)

    def rss(self) -> int:
        import psutil

        return psutil.Process().memory_info().rss


class Unpicklable(Exception):
    def __init__(self, a: str, b: int) -> None:
        super().__init__(f"{a}-{b}")


class lambda_holder:
    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()


class GenReader:
    """Produces `size` bytes without holding them (a pattern written into the caller's buffer)."""

    def __init__(self, size: int, chunk: int = 1 << 20) -> None:
        self.left = size
        self.closed_called = False
        self.pattern = memoryview(bytes(range(256)) * (chunk // 256 + 1))

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        n = min(len(mv), self.left)
        p = self.pattern
        off = 0
        while off < n:
            k = min(n - off, len(p) - 256)
            mv[off : off + k] = p[:k]
            off += k
        self.left -= n
        return n

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        buf = bytearray(n)
        self.readinto(buf)
        return bytes(buf)

    def close(self) -> None:
        self.closed_called = True


class SlowReader:
    def __init__(self, data: bytes, delay: float) -> None:
        import io

        self.src = io.BytesIO(data)
        self.delay = delay

    def readinto(self, b: Any) -> int:
        time.sleep(self.delay)
        return self.src.readinto(memoryview(b)[:50_000])


class DyingReader(GenReader):
    def readinto(self, b: Any) -> int:
        os.kill(os.getpid(), signal.SIGKILL)
        return 0


class FailingSource(GenReader):
    """A caller-side source that raises after `after` bytes."""

    def __init__(self, size: int, after: int) -> None:
        super().__init__(size)
        self.after = after
        self.sent = 0

    def readinto(self, b: Any) -> int:
        if self.sent >= self.after:
            raise OSError("disk read error")
        n = super().readinto(b)
        self.sent += n
        return n


def make_kv() -> KV:
    return KV()


def make_failing() -> KV:
    raise RuntimeError("cannot open the store: bad meta")


def make_kv_crashing_after_start() -> KV:
    """init succeeds on the first worker start only (marker file), then kills itself."""
    marker = os.environ["EXEC_TEST_MARKER"]
    if os.path.exists(marker):
        os.kill(os.getpid(), signal.SIGKILL)
    with open(marker, "w") as f:
        f.write("x")
    return KV()


def make_kv_hanging_after_start() -> KV:
    """init succeeds on the first worker start only (marker file), then hangs."""
    marker = os.environ["EXEC_TEST_MARKER"]
    if os.path.exists(marker):
        time.sleep(600)
    with open(marker, "w") as f:
        f.write("x")
    return KV()


class Probe:
    """Reports the limits the worker runs under, and allocates until it cannot."""

    def limits(self) -> dict[str, Any]:
        import resource

        return {
            "data": resource.getrlimit(resource.RLIMIT_DATA),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
            "cpus": sorted(os.sched_getaffinity(0)),
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "oom": open("/proc/self/oom_score_adj").read().strip(),
            "confined": os.environ.get("EXEC_TEST_CONFINED", ""),
        }

    def hog(self, step: int = 1 << 20) -> int:
        chunks = []
        while True:
            chunks.append(bytearray(step))

    def small(self) -> int:
        return 42

    def allocate(self, size: int) -> int:
        return len(bytearray(size))


def make_probe() -> Probe:
    return Probe()


def mark_confined(tag: str) -> None:
    """A PoolSpec.confine stand-in: it runs in the worker before init."""
    os.environ["EXEC_TEST_CONFINED"] = tag


def refuse_confinement() -> None:
    raise PermissionError("this kernel will not confine us")


class Translating(Probe):
    """A service object whose map_error translates MemoryError at the boundary."""

    def map_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, MemoryError):
            return RuntimeError("out of memory under the test limit")
        return exc


def make_translating() -> Translating:
    return Translating()


class Files:
    """File and network access, for confinement tests."""

    def read(self, path: str) -> str:
        with open(path) as f:
            return f.read()

    def write(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def connect(self, port: int) -> bool:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True

    def signal(self, pid: int) -> bool:
        os.kill(pid, 0)
        return True


def make_files() -> Files:
    return Files()
