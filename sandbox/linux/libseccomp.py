"""The few libseccomp calls a run needs when its filter is already compiled: the
library's version, the native architecture and syscall names <-> numbers.

Why not pyseccomp for these: importing it looks the library up with
``ctypes.util.find_library``, which runs ``ldconfig -p`` in a subprocess - milliseconds
a one-shot ``sandbox run`` would pay only to read a cached program (``seccomp_cache.py``).
This opens the library by its soname, as the dynamic linker finds it for pyseccomp too.
"""

from __future__ import annotations

import ctypes
import functools

SONAME = "libseccomp.so.2"


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


@functools.cache
def _library() -> ctypes.CDLL:
    library = ctypes.CDLL(SONAME)
    library.seccomp_version.restype = ctypes.POINTER(_Version)
    library.seccomp_arch_native.restype = ctypes.c_uint32
    library.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
    library.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    library.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p  # malloc'd: freed by the caller
    library.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
    return library


@functools.cache
def _free() -> ctypes._NamedFuncPointer:
    free = ctypes.CDLL(None).free
    free.argtypes = [ctypes.c_void_p]
    free.restype = None
    return free


def version() -> str:
    """"2.5.4": the library that compiles (and so decides the bytes of) every filter."""
    found = _library().seccomp_version().contents
    return f"{found.major}.{found.minor}.{found.micro}"


def native_arch() -> int:
    """The audit architecture token of this machine (as in ``struct seccomp_data``)."""
    return int(_library().seccomp_arch_native())


def resolve(name: str) -> int:
    """The native number of syscall ``name``; negative when this architecture has none."""
    return int(_library().seccomp_syscall_resolve_name_arch(native_arch(), name.encode()))


def name_of(number: int, arch: int) -> str | None:
    """The name of syscall ``number`` on architecture ``arch``; None if it has none."""
    pointer = _library().seccomp_syscall_resolve_num_arch(arch, number)
    if not pointer:
        return None
    try:
        return ctypes.string_at(pointer).decode()
    finally:
        _free()(pointer)
