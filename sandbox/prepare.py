"""Create sandboxes: from the zygote's clone to the exec of the program, split in two so
that everything but the job itself can happen before the job arrives.

``order`` and ``receive`` (may run long before any job; the warm pool does it ahead of
time)::

    supervisor (subreaper) ── request ──> spawner (a C process the zygote started
                                           once, in the template, ``zygote.py``,
                                           ``template.py``): clones B into new pid, net,
                                           ipc and uts namespaces and a copy of the
                                           template's mounts - or, for an image, of the
                                           image's base, which the zygote built once
                                 B = pid 1 of the job ("init", ``native/init.c``), the
                                     supervisor's child: adds an image's writable layer,
                                     mounts the job's /proc and scratch (pivots into an
                                     image's root), forks C, waits for a job
                                 C = the future program (``native/program.c``): joins
                                     the job cgroup (so no job pays the cgroup-attach
                                     stall), new cgroup ns, setsid, drops every
                                     capability, sets no_new_privs, installs the seccomp
                                     filter and hands its notification listener to B (so
                                     B can name a violated syscall, ``native/notify.c``),
                                     waits for its instructions from B

``job_message.start_job`` sends the job to B over a SOCK_SEQPACKET channel (NUL-terminated fields;
stdin, stdout, stderr and input files as fds with SCM_RIGHTS). B resizes the writable
area if asked, copies the input files in, hands cwd, rlimits, argv, env and stdio to C
and sends "started" back on the job channel (``supervise`` reads it when it needs it);
C sets stdio and rlimits and execs. B reaps, reports C's exit, and exits - and the
kernel kills whatever else ran in the job's pid namespace.

Why this shape: B is the supervisor's direct child (it can kill and reap it, and pid
reuse cannot trick it), and the supervisor is a subreaper, so anything orphaned by a
dying sandbox comes back to it. B stays outside the job cgroup and is not the
program, so the program's memory and CPU are measured without the sandbox's own
Python, and killing B (SIGKILL from outside) kills every process of the job -
double-forked, setsid'd or stopped ones included. Messages travel back as JSON lines on
one pipe (each write < PIPE_BUF, so atomic).

The sandboxes of one supervisor share its template user namespace; every other
namespace is their own. Where the host grants a range of ids (``ids.py``), each
sandbox's program stage is made in a user namespace of its own as well, in which it is
uid 1000 and outside which it is an id of that range no other sandbox runs as now; its
init writes the maps. Without a range every program is uid 1000 of the template - the
supervisor's user - and what the kernel counts per user (RLIMIT_NPROC,
RLIMIT_SIGPENDING, pipe buffers) is shared by all of them.
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sandbox import stages
from sandbox.errors import SetupError
from sandbox.job_message import SEALED
from sandbox.linux import syscalls as sc
from sandbox.outcome import MessageReader
from sandbox.seccomp_policy import EXEC_NUMBERS, NATIVE_ARCH

if TYPE_CHECKING:
    from sandbox.zygote import Zygote


@dataclass
class ImageRoot:
    """What a sandbox needs of an image: its layer directories, bottom first, and the
    working directory to create if the image lacks it."""

    layers: list[str]
    workdir: str = "/"


@dataclass
class Blueprint:
    """What a sandbox is built with before any job is known."""

    seccomp_bpf: bytes
    cgroup_fds: list[int]  # what the program stage joins the job cgroup with (JobCgroup.JOIN)
    disk_bytes: int
    cap_last: int
    cpu_counter: tuple[int, str] | None = None  # the job cgroup's CPU counter: fd, cpucounter kind
    image: ImageRoot | None = None  # None: the built-in host image
    exec_once: bool = False  # the profile forbids exec after the program started
    trace: bool = False  # seccomp_bpf notifies every call: record them, allow them
    cgroup_join: str = "files"  # JobCgroup.JOIN of the cgroup_fds
    job_id: int = 0  # the id the program runs as, inside the template (``ids.JobIds``); 0: the template's 1000

    def init_arguments(self) -> list[str]:
        """The sandbox's request to the spawner (``stages.init_arguments``)."""
        return stages.init_arguments(
            "spawned", cap_last=self.cap_last, trace=self.trace, exec_once=self.exec_once, native_arch=NATIVE_ARCH,
            exec_numbers=EXEC_NUMBERS, cpu_counter_kind=None if self.cpu_counter is None else self.cpu_counter[1],
            cgroup_fds=len(self.cgroup_fds), cgroup_join=self.cgroup_join, disk_bytes=self.disk_bytes,
            image_base=self.image is not None, workdir="/" if self.image is None else self.image.workdir,
            job_id=self.job_id,
        )

    def init_fds(self, report_fd: int, channel_fd: int, seccomp_fd: int, image_base_fd: int) -> list[int]:
        """The fds of the sandbox's request to the spawner (``stages.init_fds``):
        ``image_base_fd`` is its image's base (``Zygote.image_base``), -1 the host's."""
        counter = -1 if self.cpu_counter is None else self.cpu_counter[0]
        return stages.init_fds(report_fd, channel_fd, seccomp_fd, counter, self.cgroup_fds, image_base_fd)


@dataclass
class Prepared:
    """A sandbox waiting for its job; the supervisor's handles on it."""

    init_pid: int
    report_fd: int
    job_channel: socket.socket
    reader: MessageReader
    early: list[dict[str, Any]]
    reaped: bool = False  # once reaped, init_pid may belong to someone else: never signal it
    is_ready: bool = False
    gone: bool = False  # its report pipe closed before it was ready: it will never be

    def ready(self) -> bool:
        """Whether the program stage is ready for a job (filter installed), from the
        messages the sandbox sent so far; reads what is there without waiting (the
        messages are kept for ``supervise`` in ``early``)."""
        if not self.is_ready and not self.gone and self.init_pid > 0:
            try:
                data = os.read(self.report_fd, 1 << 16)
            except BlockingIOError:
                return False
            self.gone = not data
            self.early.extend(self.reader.feed(data))
            self.is_ready = any(message["kind"] == "ready" for message in self.early)
        return self.is_ready

    def close(self) -> None:
        self.job_channel.close()
        os.close(self.report_fd)


@dataclass
class Starting:
    """A sandbox the zygote's spawner was asked for; ``receive`` turns it into a
    Prepared."""

    zygote: Zygote
    report_fd: int
    job_channel: socket.socket
    error: str | None = None  # the request could not even be sent

    @property
    def answer_fd(self) -> int:
        """Readable once the answer is there; at once for an order that could not be
        sent (its report pipe, whose write end no sandbox got, reads EOF)."""
        if self.error is not None:
            return self.report_fd
        channel = self.zygote.spawner
        assert channel is not None
        return channel.fileno()


def order(zygote: Zygote, template: Blueprint) -> Starting:
    """Ask the spawner to start a sandbox init (our child); returns at once - but the
    first order of an image waits for the zygote to build the image's base.

    The caller must be the zygote's parent and a child subreaper (``become_subreaper``),
    and must ``receive`` its orders in the order it placed them.
    """
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    seccomp_fd = _filter_memfd(template.seccomp_bpf)
    starting = Starting(zygote, report_r, ours)
    try:
        image = template.image
        base = -1 if image is None else zygote.image_base(image.layers, image.workdir)
        zygote.spawn(template.init_arguments(), template.init_fds(report_w, theirs.fileno(), seccomp_fd, base))
    except SetupError as exc:
        starting.error = str(exc)
    finally:
        os.close(report_w)
        os.close(seccomp_fd)
        theirs.close()
    return starting


def _filter_memfd(seccomp_bpf: bytes) -> int:
    """A sealed memfd holding the compiled filter, for the sandbox to read (one per
    sandbox: a few microseconds, and nothing that outlives its order)."""
    memfd = os.memfd_create("seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(memfd, seccomp_bpf)
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, SEALED)
    except BaseException:
        os.close(memfd)
        raise
    return memfd


def receive(starting: Starting) -> Prepared:
    """The spawner's answer to an order (waits for it). If the sandbox could not start,
    ``init_pid`` is 0 and ``early`` holds the setup_error."""
    init_pid, early = 0, []
    if starting.error is None:
        try:
            init_pid = starting.zygote.spawned()
        except SetupError as exc:
            starting.error = str(exc)
    if starting.error is not None:
        early.append({"kind": "setup_error", "message": starting.error})
    os.set_blocking(starting.report_fd, False)  # our end only: the sandbox's writes still wait for room
    return Prepared(init_pid, starting.report_fd, starting.job_channel, MessageReader(starting.report_fd), early)


def step_aside() -> None:
    """Let the sandbox init just handed a job run first (the launcher, after
    ``start_job``). Woken, it is often queued on this CPU (the kernel places a wakee near
    its waker), where it would wait for the launcher to finish its own set-up. The
    worker's direct hand-over (worker/handover.py) does not yield: it wakes the launcher
    next and goes back to waiting, which frees its CPU as soon. (The figures behind both
    choices are in the CHANGELOG.)"""
    os.sched_yield()


def become_subreaper() -> None:
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
