"""fsstore: an ObjStore on a local folder (damocles' `filestore`, loaded as a plugin).

Object paths are relative to cfg.path and must stay inside it, symlinks included. A put
writes a temp file next to its target and renames it into place only when the reader is
exhausted, so readers never see a partial object. With `Strict = true` ([[Common.PersistStores]]),
as damocles' filestore, get reads only regular files: anything else (a FIFO, a device, a folder)
is ObjectNotFoundError, checked before it is opened (opening a FIFO would block). Meta:
    Fsync      "true" (default) | "false": fsync each object before the rename
    OpenFiles  "true" (default) | "false": offer open_for_read/open_for_write (vsm.sdk.objstore
               FileStore), so the daemon moves a piece with sendfile between its socket and the
               file; "false": every byte goes through the pool's shared-memory ring

A write through open_for_write (the daemon's PUT):

    1. open: O_TMPFILE in the target's folder (an inode without a name), or where the
       filesystem has no O_TMPFILE or this process cannot name one (linkat with AT_EMPTY_PATH
       needs CAP_DAC_READ_SEARCH; the /proc/self/fd way fails across some mounts: probed once
       per store) a `.<name>.<random>.tmp` file; its fd goes to the daemon
    2. the daemon writes the body into it
    3. commit: fsync (Fsync), then link the inode in under the target's name (linkat); if
       the name exists, link under a temp name and rename it over the target

Named temp files (put, the fallback of 1, the link aside in 3) live in `<Path>/.vsm-tmp/`,
named `<host>-<pid>-<random>.tmp` by the worker writing them; that folder is not an object
path (refused like a path outside the store). Opening the store (every worker start, so also
the replacement of a worker killed mid-put, and every daemon start) deletes the temp files of
this host whose writer is gone: its pid is not running, or runs a process started after the
file was last written (a reused pid; sandboxed, where other processes' /proc is refused, a
reused pid keeps its file until that process exits). One folder listing, not a walk of the store, and never a
temp file a live worker is writing (issue 13: `.obj.bin.<random>.tmp` stayed for good). Why
not O_TMPFILE alone: not every filesystem has it (NFS, some FUSE), naming one needs a
capability or /proc, and a link cannot replace an existing object, so a named step remains;
where O_TMPFILE works the daemon's PUT uses it and leaves nothing to clean. Limits: a temp
file is made next to its target when the target's folder is another filesystem (a mount
inside the store), and those are not cleaned; nor are dot-temp files next to objects left by
fsstore versions before this one.

Crash argument (kill -9 of the daemon or of the worker):
- before 3: O_TMPFILE: nothing is visible and the inode is freed with its last fd (the
  worker's and the daemon's both die with them or close); a named temp file stays in
  .vsm-tmp until the store is opened next (at once: the pool replaces the worker). The upload
  failed; the old object, if any, is untouched.
- in 3, before the link: as before 3. After a direct link: the new object is whole (and
  durable with Fsync). Between a temp link and the rename: the old object is whole and a
  temp file in .vsm-tmp holds the new one (deleted at the next open).
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import os
import secrets
import shutil
import socket
import stat as stat_mode
from typing import BinaryIO

from vsm.sdk import (
    Config,
    InstanceInfo,
    InvalidObjectPathError,
    ObjectNotFoundError,
    ReadOnlyStoreError,
    Stat,
    iter_chunks,
)
from vsm.sdk.diskspace import disk_full_as_error

__all__ = ["open"]

VERSION = "0.1.0"
TMP_DIR = ".vsm-tmp"  # named temp files of puts in flight: <host>-<pid>-<random>.tmp
_HOST = socket.gethostname().replace("-", "_") or "host"
_START_SLACK = 5.0


NAME_MAX = 255  # bytes in one file or folder name (Linux file systems)
PATH_MAX = 4096  # bytes in a whole path, its NUL included (Linux)


def _short(path: str) -> str:
    """A path for an error line: a hostile one may be thousands of bytes long."""
    return repr(path) if len(path) <= 80 else f"{path[:60]!r}... ({len(path)} characters)"


def open(cfg: Config) -> FsStore:  # noqa: A001 - the exported Constructor's name
    """Constructor: a store over the existing folder cfg.path."""
    root = os.path.realpath(cfg.path)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"fsstore: store path {cfg.path!r} is not an existing folder; create it first")
    flags = {}
    for key in ("Fsync", "OpenFiles"):
        value = cfg.meta.get(key, "true").lower()
        if value not in ("true", "false"):
            raise ValueError(f"fsstore: Meta {key!r} = {cfg.meta[key]!r}; use \"true\" or \"false\"")
        flags[key] = value == "true"
    # As Go's filestore.Open: the path made absolute, and the name defaulting to it.
    cls = FsFileStore if flags["OpenFiles"] else FsStore
    return cls(dataclasses.replace(cfg, path=root, name=cfg.name or root), flags["Fsync"])


class FsStore:
    """A folder of objects (the ObjStore protocol)."""

    def __init__(self, cfg: Config, fsync: bool) -> None:
        self._cfg = cfg
        self._root = cfg.path
        self._fsync = fsync
        self._tmp_dir = os.path.join(self._root, TMP_DIR)
        if not cfg.read_only:
            os.makedirs(self._tmp_dir, exist_ok=True)
            _clean_stale(self._tmp_dir)
        self._dev = os.stat(self._root).st_dev

    def type(self) -> str:
        return "plugin-fs"

    def version(self) -> str:
        return VERSION

    def instance(self) -> str:
        return self._cfg.name

    def instance_config(self) -> Config:
        return self._cfg

    def instance_info(self) -> InstanceInfo:
        usage = shutil.disk_usage(self._root)
        return InstanceInfo(
            config=self._cfg,
            type=self.type(),  # Go reports the filesystem type; the stdlib does not expose it
            total=usage.total,
            free=usage.free,
            used=usage.used,
            used_percent=100.0 * usage.used / usage.total if usage.total else 0.0,
        )

    def get(self, path: str) -> BinaryIO:
        full = self._resolve(path)
        if self._cfg.strict:
            try:
                regular = stat_mode.S_ISREG(os.stat(full).st_mode)
            except (FileNotFoundError, NotADirectoryError):
                regular = True  # open() below says "not found"
            if not regular:  # Go: ErrNotRegularFile, reported as ErrObjectNotFound
                raise ObjectNotFoundError(f"obj {path}: object not found (not a regular file, and store {self.instance()!r} is Strict)")
        try:
            return builtins.open(full, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"object not found: {path!r} in store {self.instance()!r}") from None

    def put(self, path: str, reader: BinaryIO) -> int:
        self._check_writable()
        full = self._resolve(path)
        folder = os.path.dirname(full)
        self._make_folder(path, full, folder)
        fd, tmp = self._temp(folder)
        try:
            written = 0
            # a full disk: DiskFullError naming the store's folder and its free space (issue 25)
            with disk_full_as_error(self._root, what=f"store {self.instance()!r}"), builtins.open(fd, "wb", buffering=0, closefd=True) as out:
                for chunk in iter_chunks(reader):
                    view = memoryview(chunk)
                    while view.nbytes:  # raw writes may be short
                        n = out.write(view)
                        written += n
                        view = view[n:]
                if self._fsync:
                    os.fsync(out.fileno())
            os.replace(tmp, full)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return written

    def delete(self, path: str) -> None:
        self._check_writable()
        full = self._resolve(path)
        try:
            os.remove(full)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"object not found: {path!r} in store {self.instance()!r}") from None

    def stat(self, path: str) -> Stat:
        full = self._resolve(path)
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(f"object not found: {path!r} in store {self.instance()!r}") from None
        if not stat_mode.S_ISREG(st.st_mode):
            raise ObjectNotFoundError(f"not an object (a folder?): {path!r} in store {self.instance()!r}")
        return Stat.of_file(st)  # with the file's ETag and mtime: the same the daemon's sendfile path gives

    def full_path(self, path: str) -> str:
        return self._resolve(path, follow_links=False)

    def _temp(self, folder: str) -> tuple[int, str]:
        """A new named temp file for an object going into `folder`: in .vsm-tmp, or beside the
        object when `folder` is on another filesystem (a rename cannot cross it)."""
        where = self._tmp_dir if os.stat(folder).st_dev == self._dev else folder
        path = os.path.join(where, f"{_HOST}-{os.getpid()}-{secrets.token_hex(6)}.tmp")
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), path

    def _make_folder(self, path: str, full: str, folder: str) -> None:
        """The new object's folder; InvalidObjectPathError where a folder is the object or an
        object is a folder on the way (a client's mistake, not a store failure)."""
        if os.path.isdir(full):
            raise InvalidObjectPathError(f"invalid object path {_short(path)}: a folder of that name exists in store {self.instance()!r}")
        missing = []  # os.makedirs recurses once per level: a hostile path of ~2000 levels
        while not os.path.isdir(folder) and folder != self._root:  # raised RecursionError (issue 25)
            missing.append(folder)
            folder = os.path.dirname(folder)
        try:
            for part in reversed(missing):
                try:
                    os.mkdir(part)
                except FileExistsError:
                    if not os.path.isdir(part):  # an object, or a concurrent put's folder
                        raise
        except (FileExistsError, NotADirectoryError):
            raise InvalidObjectPathError(f"invalid object path {_short(path)}: a part of it is an object, not a folder") from None

    def _resolve(self, path: str, follow_links: bool = True) -> str:
        """The absolute file path of an object; InvalidObjectPathError if it leaves the root."""
        if not path or os.path.isabs(path):
            raise InvalidObjectPathError(f"invalid object path {_short(path)}: must be relative to the store")
        if "\0" in path:
            raise InvalidObjectPathError(f"invalid object path {_short(path)}: holds a NUL character")
        if path.endswith("/"):
            raise InvalidObjectPathError(f"invalid object path {_short(path)}: ends in '/', which names a folder, not an object")
        longest = max(len(part.encode("utf-8", "surrogateescape")) for part in path.split("/"))
        if longest > NAME_MAX:
            raise InvalidObjectPathError(f"invalid object path {_short(path)}: a name of {longest} bytes; at most {NAME_MAX} per folder or file name")
        full = os.path.normpath(os.path.join(self._root, path))
        if len(os.fsencode(full)) >= PATH_MAX:  # the kernel would refuse it (ENAMETOOLONG)
            raise InvalidObjectPathError(f"invalid object path {_short(path)}: {len(path.encode('utf-8', 'surrogateescape'))} bytes; the store's folder and the path together must stay under {PATH_MAX} bytes")
        if os.path.relpath(full, self._root).split(os.sep)[0] == TMP_DIR:
            raise InvalidObjectPathError(f"invalid object path {_short(path)}: {TMP_DIR} holds the store's temp files")
        # realpath follows symlinks in every existing component, so a link can't lead out either.
        checked = os.path.realpath(full) if follow_links else full
        if os.path.commonpath([self._root, checked]) != self._root or checked == self._root:
            raise InvalidObjectPathError(f"invalid object path {_short(path)}: outside of store {self._root!r}")
        return full

    def _check_writable(self) -> None:
        if self._cfg.read_only:
            raise ReadOnlyStoreError(f"read only store: {self.instance()!r}")


class FsFileStore(FsStore):
    """FsStore with the FileStore methods: the daemon sends and receives pieces by sendfile."""

    def __init__(self, cfg: Config, fsync: bool) -> None:
        super().__init__(cfg, fsync)
        self._tmpfile = cfg.read_only is False and _can_name_tmpfile(self._root)

    def open_for_read(self, path: str) -> BinaryIO:
        f = self.get(path)
        if not stat_mode.S_ISREG(os.fstat(f.fileno()).st_mode):
            f.close()
            raise ObjectNotFoundError(f"not an object (a folder?): {path!r} in store {self.instance()!r}")
        return f

    def open_for_write(self, path: str) -> "_FileWriter":
        self._check_writable()
        full = self._resolve(path)
        folder = os.path.dirname(full)
        self._make_folder(path, full, folder)
        if self._tmpfile:
            try:
                fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
                return _FileWriter(fd, None, full, self._fsync, self._tmp_dir)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
        fd, tmp = self._temp(folder)
        return _FileWriter(fd, tmp, full, self._fsync, self._tmp_dir)


class _FileWriter:
    """One object being written through a file (see the module docstring for the steps)."""

    def __init__(self, fd: int, tmp: str | None, target: str, fsync: bool, tmp_dir: str) -> None:
        self._fd, self._tmp, self._target, self._fsync, self._tmp_dir = fd, tmp, target, fsync, tmp_dir

    def fileno(self) -> int:
        return self._fd

    def commit(self) -> int:
        fd = self._fd
        if fd < 0:
            raise ValueError(f"{self._target}: already committed or aborted")
        size = os.fstat(fd).st_size
        if self._fsync:
            os.fsync(fd)
        if self._tmp is None:  # O_TMPFILE: give the inode a name
            try:
                _link_fd(fd, self._target)
            except FileExistsError:  # a link cannot replace: link aside, then rename over
                tmp = os.path.join(self._tmp_dir, f"{_HOST}-{os.getpid()}-{secrets.token_hex(6)}.tmp")
                _link_fd(fd, tmp)
                self._replace(tmp)
        else:
            self._replace(self._tmp)
            self._tmp = None
        self._fd = -1
        os.close(fd)
        return size

    def _replace(self, tmp: str) -> None:
        try:
            os.replace(tmp, self._target)
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp is not None:
            _unlink_quietly(self._tmp)
            self._tmp = None


_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000


def _link_fd(fd: int, target: str) -> None:
    """Give the open file fd the name target (linkat): by the fd itself (AT_EMPTY_PATH, needs
    CAP_DAC_READ_SEARCH), else through /proc/self/fd. Raises OSError as link does."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(target), _AT_EMPTY_PATH) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), target)
    os.link(f"/proc/self/fd/{fd}", target, follow_symlinks=True)


def _can_name_tmpfile(folder: str) -> bool:
    """Whether an O_TMPFILE made in folder can be given a name by this process."""
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    probe = os.path.join(folder, f".fsstore-probe-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        _link_fd(fd, probe)
    except OSError:
        return False
    finally:
        os.close(fd)
    _unlink_quietly(probe)
    return True


def _clean_stale(tmp_dir: str) -> None:
    """Delete this host's temp files whose writer is gone (see the module docstring)."""
    for name in os.listdir(tmp_dir):
        host, _, rest = name.partition("-")
        pid_s = rest.partition("-")[0]
        if host != _HOST or not pid_s.isdigit():
            continue
        path = os.path.join(tmp_dir, name)
        try:
            written = os.stat(path).st_mtime
        except FileNotFoundError:
            continue
        started = _process_start(int(pid_s))
        # a reused pid: its process started after the file's last write (boot time in /proc
        # is whole seconds: a margin, so a live writer's file is never taken for stale)
        if started is None or started > written + _START_SLACK:
            _unlink_quietly(path)


def _process_start(pid: int) -> float | None:
    """When process pid started (seconds since the epoch), or None if it is not running. A
    zombie is not running: a writer killed -9 with its parent (the daemon's whole tree) stays
    one until init reaps it, which can be after the next daemon opened the store."""
    try:
        with builtins.open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # "pid (comm) S ...": comm may hold ')'
        if fields[0] in ("Z", "X"):
            return None
        ticks = int(fields[19])
        with builtins.open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except PermissionError:
        # sandboxed: other processes' /proc is refused (it would show their environment). Only
        # whether pid runs can be told (kill 0): a reused pid then keeps its file until it exits
        return 0.0 if _running(pid) else None
    except (FileNotFoundError, ProcessLookupError, StopIteration, ValueError, IndexError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, outside this process's reach (the sandbox's signal scope)
        return True
    return True


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
