"""Landlock: a process confines itself (and every thread and child it starts later) to the
files and TCP ports it names. Linux >= 5.13, no privilege needed. Used as a PoolSpec.confine.

    worker (forked, one thread) -- LandlockRules.__call__():
      landlock_create_ruleset(handled = every right this ABI knows)  -> ruleset fd
      landlock_add_rule(PATH_BENEATH, O_PATH fd of each path, its rights)
      landlock_add_rule(NET_PORT, each port, CONNECT_TCP)
      prctl(PR_SET_NO_NEW_PRIVS)                  (required to self-restrict without CAP_SYS_ADMIN)
      landlock_restrict_self(ruleset fd)          -> from here on, the rest is refused (EACCES)

Rights are checked when a file is opened (descriptors opened before stay usable: the
worker's socket, the ring's memfd, stdout). What each ABI adds, and so what an older kernel
cannot refuse: ABI_FEATURES. ctypes syscalls: the PyPI bindings seen (landlock 1.0.0.dev5,
alpha) handle files only, not the TCP rules of ABI 4.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import platform
import stat

__all__ = ["ABI_FEATURES", "LandlockRules", "abi_version", "missing_features"]

# syscall numbers: one table for every architecture since these were added (5.13)
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS = 38

# filesystem rights
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
# network rights, scopes
BIND_TCP, CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the rights a rule on a file may carry
READ = EXECUTE | READ_FILE | READ_DIR
WRITE = (1 << 16) - 1  # everything beneath: create, write, remove, rename within, truncate

# What a kernel of each ABI can refuse that the one before could not (a worker on an older
# kernel cannot be denied these).
ABI_FEATURES = {
    1: "file access",
    2: "renames and links across folders (ABI 1 refuses them all)",
    3: "truncation",
    4: "TCP connect and bind",
    5: "device ioctls",
    6: "signals to and abstract unix sockets of other processes",
}


def abi_version() -> int:
    """The kernel's Landlock ABI: 0 when it has none (too old, or disabled at boot)."""
    if platform.system() != "Linux":
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, int(version))


def missing_features(abi: int) -> list[str]:
    """What a kernel with Landlock ABI `abi` cannot refuse (see ABI_FEATURES)."""
    return [text for level, text in ABI_FEATURES.items() if abi < level]


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


@dataclasses.dataclass(frozen=True)
class LandlockRules:
    """What a confined process may still do; calling it confines the calling process.

    `read`: files and folders it may read (and list, and execute) beneath; `write`: folders
    (or files) where it may also create, change, remove and rename; `connect_tcp`: TCP ports
    it may connect to (binding is refused). `abi`: the Landlock ABI the rules were planned
    for (the manager's kernel): rights of later ABIs are not asked for, and a kernel older
    than `abi` fails the call. Paths that do not exist are skipped.
    """

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    connect_tcp: tuple[int, ...] = ()
    abi: int = 1

    def __call__(self) -> None:
        kernel = abi_version()
        if kernel < max(1, self.abi):
            have = f"ABI {kernel}" if kernel else "no Landlock"
            raise OSError(errno.ENOSYS, f"Landlock ABI {self.abi} was planned, this kernel has {have}")
        abi = self.abi
        fs = _FS_BY_ABI[max(a for a in _FS_BY_ABI if a <= abi)]
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        attr = _RulesetAttr(fs, (BIND_TCP | CONNECT_TCP) if abi >= 4 else 0, (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0)
        # an older kernel takes the longer struct as long as the fields it does not know are 0
        ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
        if ruleset < 0:
            _raise("landlock_create_ruleset")
        try:
            for paths, rights in ((self.read, READ), (self.write, WRITE)):
                for path in paths:
                    self._allow_path(libc, ruleset, path, rights & fs)
            for port in self.connect_tcp if abi >= 4 else ():
                rule = _NetPortAttr(CONNECT_TCP, port)
                if libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_NET_PORT), ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                    _raise(f"landlock_add_rule(TCP port {port})")
            if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                _raise("prctl(PR_SET_NO_NEW_PRIVS)")
            if libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
                _raise("landlock_restrict_self")
        finally:
            os.close(ruleset)

    @staticmethod
    def _allow_path(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                rights &= _FILE_ONLY
            rule = _PathBeneathAttr(rights, fd)
            if libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                _raise(f"landlock_add_rule({path})")
        finally:
            os.close(fd)


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")
