"""The zygote: a small, single-purpose process that starts every sandbox of one
supervisor (a CLI run, or one worker slot's launcher).

Why a separate process: it lives in the template user namespace and holds the
template's mount namespace (``template.py``), so a sandbox's namespaces are one setns(2)
and one clone(2) away. For the host image it spawns the C init (``native/init.c``),
which makes them itself; an image sandbox is a clone of the zygote, which builds the
image root in Python first. A fork copies the parent's page tables and afterwards every
page either side writes is copied again (copy-on-write): forking sandboxes from the
supervisor - a Python with the runner, cgroups, protocol and image code loaded, busy
between forks - made page faults the largest single cost of a job. The zygote is a
fresh interpreter (``python -S``, only the modules a sandbox runs) that does nothing but
wait for requests and start sandboxes, so there is little to copy.

Protocol on a SOCK_SEQPACKET pair: at start-up the zygote answers ``{}`` once the
template is built, or ``{"error": ...}``. Then the supervisor sends one request per
sandbox - the Template as JSON, with the report pipe's write end, the sandbox's end of
its job channel and the cgroup attach fds as SCM_RIGHTS - and the zygote answers
``{"pid": N}`` or ``{"error": ...}``. EOF on the channel ends it.

Run as: python -S -m sandbox.zygote FD
"""

from __future__ import annotations

import gc
import json
import os
import socket
import sys

from sandbox import stages
from sandbox.errors import SandboxError, SetupError
from sandbox.linux import syscalls as sc
from sandbox.template import MountBases, enter_template

# Not typing.TYPE_CHECKING: the zygote does without the typing module (see stages.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_MAX_REQUEST = 1 << 20
_MAX_FDS = 16  # report pipe, job channel, CPU counter, one cgroup attach fd per hierarchy


class Zygote:
    """The supervisor's handle on its zygote process (started here, a child of ours)."""

    def __init__(self) -> None:
        import subprocess  # here, not at the top: the zygote process imports this module too

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-S", "-m", "sandbox.zygote", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(_import_path())},
            )
        self.channel = ours
        try:
            self._answer()
        except SetupError:
            self.close()
            raise

    def request(self, request: dict[str, Any], fds: list[int]) -> None:
        """Ask for a sandbox init (our child) with these fds; ``answer`` gives its pid.
        Raises SetupError if the zygote is gone."""
        try:
            socket.send_fds(self.channel, [json.dumps(request).encode()], fds)
        except OSError as exc:
            raise SetupError(f"the zygote is gone: {exc}") from exc

    def answer(self) -> int:
        """The pid of the sandbox init of the oldest unanswered request (waits for it).
        Raises SetupError if it could not be started."""
        return int(self._answer()["pid"])

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """EOF tells the zygote to exit; it has no children left by then."""
        self.channel.close()
        self.process.wait()

    def _answer(self) -> dict[str, Any]:
        try:
            raw = self.channel.recv(_MAX_REQUEST)
        except OSError as exc:
            raise SetupError(f"the zygote is gone: {exc}") from exc
        if not raw:
            raise SetupError(f"the zygote exited (status {self.process.wait()})")
        answer: dict[str, Any] = json.loads(raw)
        if "error" in answer:
            raise SetupError(answer["error"])
        return answer


def _import_path() -> list[str]:
    """Where this process finds its modules: the project (an editable install is found
    through a hook in site, which ``-S`` skips) and then its own search path."""
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [project, *(entry for entry in sys.path if entry and os.path.isdir(entry))]


def serve(channel: socket.socket) -> None:
    sc.set_process_name("sandbox-zygote")
    # SCHED_BATCH (inherited by every sandbox init and program stage until its job
    # arrives, stages.py): the same share of the CPU, but a zygote or a sandbox being
    # prepared never preempts a running task when it wakes. Otherwise the zygote, woken
    # by an order, took the CPU from the launcher that sent it - and a job arriving then
    # waited behind a clone and a sandbox's set-up.
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    try:
        init_fd = stages.open_init_binary()
        bases = enter_template()
        # What the C init needs (entering the template, its mounts, host name and
        # loopback) and its program stage before it drops everything (the cgroup
        # namespace, the bounding set): kept across the exec of the C init.
        sc.keep_across_exec(sc.CAP_SYS_ADMIN, sc.CAP_SYS_CHROOT, sc.CAP_NET_ADMIN, sc.CAP_SETPCAP)
    except (SandboxError, OSError) as exc:
        channel.send(json.dumps({"error": str(exc)}).encode())
        return
    channel.send(b"{}")
    # Everything loaded so far is permanent: keep the collector from touching (and so
    # copying) those pages in every sandbox.
    gc.freeze()
    shared = stages.SharedFds()
    while True:
        raw, fds, _, _ = socket.recv_fds(channel, _MAX_REQUEST, _MAX_FDS)
        if not raw:
            return
        try:
            channel.send(json.dumps(_start_one(json.loads(raw), fds, bases, init_fd, shared)).encode())
        finally:
            for fd in fds:
                os.close(fd)


def _start_one(
    request: dict[str, Any], fds: list[int], bases: MountBases, init_fd: int, shared: stages.SharedFds
) -> dict[str, Any]:
    if len(fds) < 2:
        return {"error": "a sandbox request needs the report pipe and the job channel"}
    report_fd, channel_fd, *template_fds = fds
    spec = stages.Spec(request, template_fds, shared)
    try:
        return {"pid": stages.start_sandbox(spec, bases, report_fd, channel_fd, init_fd)}
    except OSError as exc:
        return {"error": f"cannot start a sandbox: {exc}"}


def main(argv: list[str]) -> int:
    with socket.socket(fileno=int(argv[1])) as channel:
        serve(channel)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
