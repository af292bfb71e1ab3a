"""Typed wrappers of the kernel calls Python 3.11's stdlib lacks.

Layer 1 of the design: no policy, just the calls, each raising ``OSError`` with the
real errno. Everything goes through libc's ``syscall()`` so one mechanism covers old
calls (pivot_root, unshare) and new ones (the fd-based mount API, openat2), and the
numbers live in one table per architecture.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# Numbers below 424 differ per architecture; 424 and above are shared by all.
_ARCH_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {
        "capget": 125,
        "capset": 126,
        "prctl": 157,
        "pivot_root": 155,
        "umount2": 166,
        "clone": 56,
        "unshare": 272,
        "setns": 308,
        "seccomp": 317,
    },
    "aarch64": {
        "capget": 90,
        "capset": 91,
        "prctl": 167,
        "pivot_root": 41,
        "umount2": 39,
        "clone": 220,
        "unshare": 97,
        "setns": 268,
        "seccomp": 277,
    },
}
_SHARED_NUMBERS = {
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "close_range": 436,
    "openat2": 437,
    "mount_setattr": 442,
}
MACHINE = os.uname().machine
if MACHINE not in _ARCH_NUMBERS:
    raise ImportError(f"unsupported architecture {MACHINE!r} (supported: x86_64, aarch64)")
NR = {**_ARCH_NUMBERS[MACHINE], **_SHARED_NUMBERS}

# unshare(2) / clone(2) namespace flags.
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000

# mount(2) propagation, umount2(2) and path flags.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

# The fd-based mount API (Linux 5.2+, mount_setattr 5.12+).
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

# openat2(2) resolve flags.
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

# prctl(2) options.
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_FOWNER = 3
CAP_FSETID = 4
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
CAP_SYS_CHROOT = 18
CAP_SYS_ADMIN = 21



def _call(name: str, *args: object) -> int:
    """Invoke syscall ``name``; raise OSError with errno on failure."""
    result = _libc.syscall(ctypes.c_long(NR[name]), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return int(result)


def _path(value: str | None) -> ctypes.c_char_p:
    return ctypes.c_char_p(None if value is None else os.fsencode(value))


def _long(value: int) -> ctypes.c_long:
    return ctypes.c_long(value)


def unshare(flags: int) -> None:
    _call("unshare", _long(flags))


CLONE_PARENT = 0x00008000
_SIGCHLD = 17


def clone_sibling(namespaces: int) -> int:
    """clone(2) into new ``namespaces``, the child becoming a child of our parent
    (CLONE_PARENT), which a fork plus unshare cannot do in one process: returns the
    child's pid, 0 in the child.

    The child continues in this interpreter without CPython's after-fork hooks (no
    os.fork here: it takes no flags). That is sound only in a single-threaded process
    holding no locks - the zygote - and the child must not rely on glibc's cached
    thread id (raise(), pthread_kill on itself); getpid() and os.fork() are fine.
    """
    return _call("clone", _long(namespaces | CLONE_PARENT | _SIGCHLD), ctypes.c_void_p(0),
                 ctypes.c_void_p(0), ctypes.c_void_p(0), _long(0))


_libc_holding_gil = ctypes.PyDLL(None, use_errno=True)
_libc_holding_gil.syscall.restype = ctypes.c_long


def fork_into_namespaces(namespaces: int) -> int:
    """``os.fork`` into new ``namespaces`` (clone(2) with their flags): the child's pid,
    0 in the child. CPython's fork hooks run around it as for ``os.fork`` (its locks,
    threads' state, ``os.register_at_fork`` callbacks), and the call holds the GIL, so no
    other thread of the interpreter runs while the process is copied."""
    pythonapi = ctypes.pythonapi
    pythonapi.PyOS_BeforeFork()
    pid = _libc_holding_gil.syscall(_long(NR["clone"]), _long(namespaces | _SIGCHLD), ctypes.c_void_p(0),
                                    ctypes.c_void_p(0), ctypes.c_void_p(0), _long(0))
    err = ctypes.get_errno()
    if pid == 0:
        pythonapi.PyOS_AfterFork_Child()
        return 0
    pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return int(pid)


SECCOMP_SET_MODE_FILTER = 1


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_filter(program: bytes) -> None:
    """Install a classic BPF seccomp ``program`` on the calling thread (no_new_privs must
    be set), without a notification listener: a filter chain holds one at most."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _call("seccomp", _long(SECCOMP_SET_MODE_FILTER), _long(0), ctypes.byref(fprog))


PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def drop_capabilities(cap_last: int) -> None:
    """No capability left in any set (ambient, bounding, effective, permitted,
    inheritable), as the sandbox's program stage leaves a job."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(cap_last + 1):
        prctl(PR_CAPBSET_DROP, cap)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    _call("capset", ctypes.byref(header), ctypes.byref(data))


def setns(fd: int, nstype: int) -> None:
    _call("setns", ctypes.c_int(fd), ctypes.c_int(nstype))


def pivot_root(new_root: str, put_old: str) -> None:
    _call("pivot_root", _path(new_root), _path(put_old))


def umount2(target: str, flags: int) -> None:
    _call("umount2", _path(target), _long(flags))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _call("prctl", _long(option), _long(arg2), _long(arg3), _long(arg4), _long(arg5))


def mount_propagation(target: str, flags: int) -> None:
    """mount(NULL, target, NULL, flags, NULL): only used to change propagation."""
    result = _libc.mount(None, os.fsencode(target), None, ctypes.c_ulong(flags), None)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount propagation of {target}: {os.strerror(err)}")


def mount(source: str, target: str, fs_type: str, flags: int, data: str) -> None:
    """Legacy mount(2): only for overlay on kernels without fsconfig("lowerdir+")."""
    result = _libc.mount(
        os.fsencode(source), os.fsencode(target), os.fsencode(fs_type), ctypes.c_ulong(flags), os.fsencode(data)
    )
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fs_type} on {target}: {os.strerror(err)}")


def fsopen(fs_type: str) -> int:
    return _call("fsopen", _path(fs_type), _long(FSOPEN_CLOEXEC))


def fsconfig_string(fs_fd: int, key: str, value: str) -> None:
    _call("fsconfig", _long(fs_fd), _long(FSCONFIG_SET_STRING), _path(key), _path(value), _long(0))


def fsconfig_flag(fs_fd: int, key: str) -> None:
    _call("fsconfig", _long(fs_fd), _long(FSCONFIG_SET_FLAG), _path(key), None, _long(0))


def fsconfig_create(fs_fd: int) -> None:
    _call("fsconfig", _long(fs_fd), _long(FSCONFIG_CMD_CREATE), None, None, _long(0))


def fsmount(fs_fd: int, attr_flags: int) -> int:
    return _call("fsmount", _long(fs_fd), _long(FSMOUNT_CLOEXEC), _long(attr_flags))


def open_tree(dirfd: int, path: str, flags: int) -> int:
    return _call("open_tree", _long(dirfd), _path(path), _long(flags))


def move_mount(from_fd: int, from_path: str, to_fd: int, to_path: str, flags: int) -> None:
    _call("move_mount", _long(from_fd), _path(from_path), _long(to_fd), _path(to_path), _long(flags))


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int, attr_clr: int = 0) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    _call(
        "mount_setattr",
        _long(dirfd),
        _path(path),
        _long(flags),
        ctypes.byref(attr),
        _long(ctypes.sizeof(attr)),
    )


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = _OpenHow(flags, mode, resolve)
    return _call("openat2", _long(dirfd), _path(path), ctypes.byref(how), _long(ctypes.sizeof(how)))


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    _call("close_range", ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def set_process_name(name: str) -> None:
    """What ps and top show for this process (at most 15 bytes)."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _call("prctl", _long(PR_SET_NAME), buffer, _long(0), _long(0), _long(0))


def keep_across_exec(*caps: int) -> None:
    """Put ``caps`` (each one of the first 32) in this thread's inheritable and ambient
    sets, so that a program it execs keeps them although it runs as a user other than
    root."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _call("capget", ctypes.byref(header), ctypes.byref(data))
    for cap in caps:
        data[0].inheritable |= 1 << cap
    _call("capset", ctypes.byref(header), ctypes.byref(data))
    for cap in caps:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)
