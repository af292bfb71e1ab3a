"""Seccomp policies as profiles state them (``profile.py`` builds them), and what a
run needs of seccomp besides compiling: the native architecture, the exec calls the
init watches, a violation's name. No pyseccomp here: it is imported only to compile a
policy (``seccomp.py``), which a run with a cached program skips (``seccomp_cache.py``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import termios
from dataclasses import dataclass, field
from typing import Any

from sandbox.errors import ProfileError
from sandbox.linux import libseccomp, syscalls

EXEC_CALLS = ("execve", "execveat")
# The native architecture's audit token and exec calls, for the init's watcher.
NATIVE_ARCH: int = libseccomp.native_arch()
EXEC_NUMBERS: list[int] = [libseccomp.resolve(name) for name in EXEC_CALLS]
# Audit architecture tokens (as in struct seccomp_data) -> the names users know.
ARCH_NAMES = {0xC000003E: "x86_64", 0x40000003: "x86", 0xC00000B7: "aarch64", 0x40000028: "arm"}

NAMED_CONSTANTS: dict[str, int] = {
    **{name: getattr(socket, name) for name in dir(socket) if name.startswith("AF_")},
    "AF_VSOCK": 40,
    "AF_ALG": 38,
    "TIOCSTI": termios.TIOCSTI,
    "TIOCLINUX": 0x541C,
    **{name: getattr(fcntl, name) for name in ("F_SETLK", "F_SETLKW", "F_OFD_SETLK", "F_OFD_SETLKW")},
    "POSIX_FADV_DONTNEED": os.POSIX_FADV_DONTNEED,
    "ADDR_NO_RANDOMIZE": 0x0040000,
    "PERSONALITY_QUERY": 0xFFFFFFFF,
    **{name: getattr(syscalls, name) for name in dir(syscalls) if name.startswith("CLONE_NEW")},
}
ACTIONS = "allow, kill, noop, errno:NAME"


@dataclass
class ArgRule:
    """One argument-conditioned rule (``seccomp.py`` says how each kind compiles)."""

    kind: str
    syscall: str
    arg: int
    values: list[int] = field(default_factory=list)
    mask: int = 0
    action: str = "errno:EPERM"


@dataclass
class SeccompPolicy:
    """What each syscall gets. ``kill`` means: report the violation and end the job.
    ``exec_mode`` "once": only the sandbox's own exec of the program may run."""

    default: str = "errno:ENOSYS"
    exec_mode: str = "any"
    actions: dict[str, str] = field(default_factory=dict)  # syscall -> allow | kill | noop | errno:NAME
    arg_rules: dict[str, list[ArgRule]] = field(default_factory=dict)
    # Whether a sandbox init holds the filter's listener, which names a violation. A
    # filter chain holds one listener at most, so an interpreter-mode snippet's filter,
    # installed over its template's, has none: a violation there kills the process.
    listener: bool = True

    def copy(self) -> SeccompPolicy:
        return SeccompPolicy(self.default, self.exec_mode, dict(self.actions),
                             {k: list(v) for k, v in self.arg_rules.items()}, self.listener)


def check_action(text: Any) -> str:
    """Validate an action as written in a profile; returns it unchanged. (``notify`` is
    the compiler's own, for kill-listed calls and the exec watch.)"""
    if text in ("allow", "noop", "kill"):
        return str(text)
    if isinstance(text, str) and text.startswith("errno:"):
        name = text.split(":", 1)[1]
        if not isinstance(getattr(errno, name, None), int):
            raise ProfileError(f"unknown errno {name!r}")
        return text
    raise ProfileError(f"unknown action {text!r} ({ACTIONS})")


def describe(number: int, arch: int) -> dict[str, Any]:
    """The violation as a job result shows it: {"syscall", "number", "arch"}."""
    return {"syscall": libseccomp.name_of(number, arch), "number": number, "arch": ARCH_NAMES.get(arch, hex(arch))}
