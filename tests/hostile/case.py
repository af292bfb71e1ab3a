"""One row of the hostile table: what the attack is, and the outcome it must get.

A row is data, so that 100+ attacks stay readable and one harness (harness.py) runs them
all the same way. Sources may contain placeholders the harness fills in per run:
``@PORT@`` (a TCP listener on the host's 127.0.0.1), ``@ABSTRACT@`` (an abstract unix
socket the host listens on), ``@CANARY@`` (the host canary directory), ``@WORKER_PID@``
(the worker's host pid) - things an attacker could learn or guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.models import Status

# Classes of attack, as the issue names them.
RESOURCE, ESCAPE, LEAK, SUPERVISOR, IO = "resource", "escape", "leak", "supervisor", "io"

LANG_SUFFIX = {"c": ".c", "asm": ".S", "python": ".py", "sh": ".sh", "gcc": ".c", "g++": ".cc"}

# Prepended to every C case: the includes every attack needs, and one way of reporting
# a call's outcome ("NAME: ok" / "NAME: errno=N"), so expectations are exact strings.
C_PRELUDE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static void say(const char *what, long r) {
    if (r < 0) printf("%s: errno=%d\n", what, errno); else printf("%s: ok\n", what);
    fflush(stdout);
}
#define TRY(what, expr) say(what, (long)(expr))
"""


@dataclass(frozen=True)
class Case:
    """An attack and its required outcome.

    ``stdout`` is a regular expression the whole of stdout must match (None: anything);
    ``violation`` is the syscall a ``syscall_violation`` must name once the product names
    it (checked only when the result carries a violation); ``signal`` the signal name of a
    ``signaled`` result. ``via`` is "worker" (most) or "cli" (``sandbox run --json``).
    ``in_sandbox_compile``: the source is compiled by gcc/g++ *inside* the sandbox (for
    compile-time attacks); the cmd is then the compiler run itself.
    """

    name: str
    cls: str
    lang: str
    source: str
    status: Status
    stdout: str | None = None
    stderr: str | None = None
    violation: str | None = None
    signal: str | None = None
    limits: dict[str, object] = field(default_factory=dict)
    via: str = "worker"
    stdin: bytes | None = None
    note: str = ""

    @property
    def expected(self) -> str:
        text = self.status.value
        if self.signal:
            text += f" {self.signal}"
        if self.violation:
            text += f" ({self.violation})"
        return text


def c(name: str, cls: str, body: str, status: Status = Status.OK, **kw: object) -> Case:
    """A C attack; ``body`` is the rest of the file after the prelude (usually main)."""
    return Case(name, cls, "c", body, status, **kw)  # type: ignore[arg-type]


def py(name: str, cls: str, source: str, status: Status = Status.OK, **kw: object) -> Case:
    return Case(name, cls, "python", source, status, **kw)  # type: ignore[arg-type]


def sh(name: str, cls: str, source: str, status: Status = Status.OK, **kw: object) -> Case:
    return Case(name, cls, "sh", source, status, **kw)  # type: ignore[arg-type]


def asm(name: str, cls: str, source: str, status: Status = Status.OK, **kw: object) -> Case:
    """Assembly with its own ``_start`` (linked -nostdlib -static)."""
    return Case(name, cls, "asm", source, status, **kw)  # type: ignore[arg-type]


def cc(name: str, cls: str, source: str, status: Status, lang: str = "gcc", **kw: object) -> Case:
    """A compile-time attack: the compiler runs inside the sandbox on ``source``."""
    return Case(name, cls, lang, source, status, **kw)  # type: ignore[arg-type]
