"""Run a piece of the supervisor's own code as root of a user namespace that maps its
id range: 0 -> the supervisor's uid and gid, 1.. -> its subordinate ids (``ids.py``:
the range jobs run as, or root's own).

Two things need that. A build's RUN step (``build/run_step.py``) runs as root over a
whole id range, as package managers expect (apt chowns to ``_apt`` and switches to
it). And files made by other ids of the range - a RUN's or a job's, owned by
subordinate ids, modes as they left them (a 0700 directory, a 0600 file) - can be read
by the supervisor only from such a namespace, where it holds CAP_DAC_READ_SEARCH over
them: the layer writer reads an upper directory from there (``images.compose``), and
removes it from there too.

The code runs in a forked child (one thread, whatever the caller has: unshare of a user
namespace needs that), which reports JSON lines (``child.send``) on a pipe and never
returns into the caller's code; the caller writes the maps from outside
(``template.write_maps``: newuidmap/newgidmap, or root itself), as for the template.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from sandbox import child
from sandbox.errors import SandboxError
from sandbox.ids import IdPlan, plan_ids
from sandbox.linux import syscalls as sc
from sandbox.template import write_maps

_MAP_REQUEST = b"map"
PR_SET_PDEATHSIG = 1


class IdNamespaceError(SandboxError):
    """The code could not run as root of the range, or failed there; says why."""


def range_maps(plan: IdPlan) -> dict[str, list[tuple[int, int, int]]]:
    """The maps: 0 -> the supervisor, 1.. -> its whole range."""
    if plan.jobs is None:
        raise IdNamespaceError(f"no range of subordinate ids to be root of: {plan.problem}")
    return {"uid": [(0, plan.owner_uid, 1), (1, plan.jobs.uid, plan.jobs.count)],
            "gid": [(0, plan.owner_gid, 1), (1, plan.jobs.gid, plan.jobs.count)]}


def run_as_range_root(body: Callable[[int], None], before: Callable[[], None] | None = None,
                      timeout: float | None = None, namespaces: int = 0,
                      on_mapped: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Run ``body(report_fd)`` as root of a new user namespace mapping the range; the
    messages it sent (``child.send``), its failure as a ``setup_error`` one, and an
    ``expired`` one last when it ran past ``timeout`` seconds and was killed (SIGKILL:
    what it forked must die with it, ``die_with_parent``). Inherited fds (a directory
    to read, a file to write) stay usable there. ``before`` runs in the child first,
    as the supervisor's own user (joining a cgroup). ``namespaces``: more namespaces
    the child makes with its user namespace (so owned by it), which ``on_mapped(pid)``
    - run here once the maps are written, before the body starts - may set up from
    outside (a network namespace's egress). Raises IdNamespaceError without a range."""
    plan = plan_ids()
    maps = range_maps(plan)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    report_read, report_write = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child.guard(report_write, lambda: _enter(theirs, report_write, body, before, namespaces))
    theirs.close()
    os.close(report_write)
    try:
        with ours:
            if ours.recv(len(_MAP_REQUEST)) == _MAP_REQUEST:
                write_maps(pid, plan.mapper, maps)
                if on_mapped is not None:
                    on_mapped(pid)  # (raising, it closes the channel: the child ends unstarted)
                ours.send(_MAP_REQUEST)
        with os.fdopen(report_read, "rb") as report:
            text, expired = _read_all(report, pid, started, timeout)
        messages = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [*messages, {"kind": "expired"}] if expired else messages
    finally:
        os.waitpid(pid, 0)


def _read_all(report: BinaryIO, pid: int, started: float, timeout: float | None) -> tuple[bytes, bool]:
    """The report to its end, and whether the child was killed for its timeout first."""
    if timeout is None:
        return report.read(), False
    chunks: list[bytes] = []
    expired = False
    while True:
        left = None if expired else max(0.0, started + timeout - time.monotonic())
        if not select.select([report], [], [], left)[0]:
            os.kill(pid, signal.SIGKILL)
            expired = True
            continue
        chunk = os.read(report.fileno(), 65536)
        if not chunk:
            return b"".join(chunks), expired
        chunks.append(chunk)


def _enter(channel: socket.socket, report: int, body: Callable[[int], None],
           before: Callable[[], None] | None, namespaces: int) -> None:
    die_with_parent()
    if before is not None:
        before()
    sc.unshare(sc.CLONE_NEWUSER | namespaces)
    channel.send(_MAP_REQUEST)
    if channel.recv(len(_MAP_REQUEST)) != _MAP_REQUEST:
        os._exit(125)  # the parent could not map us, and says why
    channel.close()
    os.setgroups([])
    body(report)


def die_with_parent() -> None:
    """SIGKILL when the parent exits (a builder interrupted mid-step takes its step
    with it). The kernel clears it when the process's ids change: set it after."""
    sc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def setup_errors(messages: list[dict[str, Any]]) -> list[str]:
    return [str(message.get("message")) for message in messages if message.get("kind") == "setup_error"]
