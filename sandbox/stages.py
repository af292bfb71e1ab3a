"""The stages of a sandbox, run in the zygote and in the processes it starts (``launch.py``
has the supervisor's side and the picture).

This module is imported by the zygote, whose size every sandbox pays for in page tables
copied and pages faulted (``zygote.py``): it and what it imports use the standard
library's light modules only - no dataclasses, no typing, no pyseccomp.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import resource  # noqa: F401 - os.wait4 imports it for its rusage; an image root has no stdlib
import select
import signal
import socket
import time

from sandbox import child, network, notify, rootfs
from sandbox.cpucounter import read_cpu_ns
from sandbox.errors import SetupError
from sandbox.fspath import create_file_beneath
from sandbox.linux import syscalls as sc

# Not typing.TYPE_CHECKING: the zygote does without the typing module (see stages.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
    from sandbox.template import MountBases

SANDBOX_NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS
# The program stage (``native/program_stage.c``), built by the package's installation.
PROGRAM_STAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "program-stage")
# The fds it starts with: the report pipe, then its channel to the init, on which it
# hands over the filter's listener and receives its job (the filter lets sendmsg and
# recvmsg through on this fd in every profile: ``seccomp.py``), then the cgroup.procs
# files of the job cgroup.
PROGRAM_STAGE_FIRST_FD = 3
HANDOVER_FD = PROGRAM_STAGE_FIRST_FD + 1
_HIGH_FD = 32
_MAX_FDS = 1024 + 3


class Spec:
    """A sandbox's Template as the zygote receives it (``launch.Template.to_wire``)."""

    __slots__ = ("seccomp_bpf", "cgroup_fds", "cpu_counter_fd", "cpu_counter_kind", "disk_bytes", "cap_last",
                 "layers", "workdir", "exec_once", "trace", "native_arch", "exec_numbers")

    def __init__(self, wire: dict[str, Any], fds: list[int]) -> None:
        """``fds`` as ``launch.Template.fds`` lays them out."""
        image = wire["image"]
        self.seccomp_bpf: bytes = base64.b64decode(wire["seccomp_bpf"])
        self.cpu_counter_kind: str | None = wire["cpu_counter"]
        self.cpu_counter_fd: int = fds[0] if self.cpu_counter_kind else -1
        self.cgroup_fds = fds[1:] if self.cpu_counter_kind else fds
        self.disk_bytes: int = wire["disk_bytes"]
        self.cap_last: int = wire["cap_last"]
        self.layers: list[str] | None = None if image is None else image["layers"]
        self.workdir: str = "/" if image is None else image["workdir"]
        self.exec_once: bool = wire["exec_once"]
        self.trace: bool = wire["trace"]
        self.native_arch: int = wire["native_arch"]
        self.exec_numbers: list[int] = wire["exec_numbers"]


def open_program_stage() -> int:
    """(In the zygote, once.) An O_PATH fd of the program stage binary, which the inits
    exec through /proc/self/fd: their roots do not show the host's files."""
    try:
        return os.open(PROGRAM_STAGE, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SetupError(f"the program stage {PROGRAM_STAGE} is not built: reinstall the package "
                         "(pip install -e . compiles it; it needs gcc and libc6-dev)") from None


def start_sandbox(template: Spec, bases: MountBases, report_fd: int, channel_fd: int, program_stage_fd: int) -> int:
    """(In the zygote.) Start B - pid 1 of new mount, pid, network, IPC and UTS
    namespaces, its mount namespace a private copy of the template (or, for an image, of
    the host's tree, to build the image root from) - as a child of the zygote's parent,
    and return its pid."""
    sc.setns(bases.host_fd if template.layers is not None else bases.template_fd, sc.CLONE_NEWNS)
    pid = sc.clone_sibling(SANDBOX_NAMESPACES)
    if pid == 0:
        keep = {report_fd, channel_fd, program_stage_fd, template.cpu_counter_fd, *template.cgroup_fds} - {-1}
        child.guard(report_fd, lambda: _stage_init(template, report_fd, channel_fd, program_stage_fd, keep))
    return pid


def _stage_init(template: Spec, report_fd: int, channel_fd: int, program_stage_fd: int, keep: set[int]) -> None:
    # We start with the zygote's fds and stdio; the sandbox keeps only its own. Its
    # stdio becomes /dev/null: nothing the sandbox side prints (or a job provokes it to
    # print) may land in the supervisor's output or the worker's log; what matters
    # travels as messages on report_fd.
    child.close_fds_except(keep)
    child.stdio_to_null()
    sc.set_process_name("sandbox-init")
    channel = socket.socket(fileno=channel_fd)
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    # The supervisor is our parent (CLONE_PARENT); if it died before we armed the signal,
    # its end of the channel is closed and the death signal will never come. (Peek: a
    # job may already wait.)
    try:
        if channel.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
            os._exit(0)
    except BlockingIOError:
        pass
    sc.sethostname(rootfs.HOSTNAME)
    sc.setdomainname("(none)")
    network.bring_up_loopback()
    _build_root(template)
    to_program, program_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid_c = _start_program_stage(template, program_stage_fd, report_fd, program_end.fileno())
    program_end.close()
    os.close(program_stage_fd)
    for fd in template.cgroup_fds:
        os.close(fd)
    to_program.send(template.seccomp_bpf)
    # C is ready once its filter is installed (it sends the listener) or, in a trace run,
    # once it says so. Say so to the supervisor, whose warm pool hands ready sandboxes
    # out first: one still joining its cgroup (an attach can stall for an RCU grace
    # period, ~10 ms) would keep its job waiting.
    ready, ready_fds, _, _ = socket.recv_fds(to_program, 16, 1)
    if not ready:
        os._exit(0)  # C failed and reported why
    listener = ready_fds[0] if ready_fds else -1
    child.send(report_fd, "ready")

    raw, fds, _, _ = socket.recv_fds(channel, 1 << 20, _MAX_FDS)
    if not raw:
        os._exit(0)  # discarded unused: the kernel takes C down with us
    # Prepared at SCHED_BATCH (zygote.py); the job runs like any other task.
    for pid in (pid_c, 0):
        os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
    job = json.loads(raw)
    stdio, file_fds = fds[:3], fds[3:]
    if job["disk_bytes"] != template.disk_bytes:
        rootfs.resize_scratch(job["disk_bytes"])
    new_root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for (dest, mode), source_fd in zip(job["files"], file_fds, strict=True):
        _copy_in(new_root, dest, source_fd, mode)
        os.close(source_fd)
    os.close(new_root)
    # The job's clock and its CPU account start only now, so that none of C's set-up
    # (the filter alone is most of a millisecond) is charged to the job.
    cpu_ns = None if template.cpu_counter_kind is None else read_cpu_ns(template.cpu_counter_fd,
                                                                         template.cpu_counter_kind)
    started_ns = time.monotonic_ns()
    socket.send_fds(to_program, [_program_instructions(job)], stdio)
    for fd in stdio:
        os.close(fd)
    child.send(report_fd, "started", t=started_ns, cpu_ns=cpu_ns)
    watcher = notify.Watcher(
        lambda kind, **fields: child.send(report_fd, kind, **fields), exec_once=template.exec_once,
        trace=template.trace, native_arch=template.native_arch, exec_numbers=set(template.exec_numbers),
    )
    _watch_and_reap(pid_c, to_program, listener, watcher, report_fd)


def _watch_and_reap(
    pid_c: int, to_program: socket.socket, listener: int, watcher: notify.Watcher, report_fd: int
) -> None:
    """B's loop until the program exits: reap every child as it exits (orphans of the
    job come to us, pid 1, and a zombie would hold a pid of the job's limit) and answer
    the notifications of the program's filter - on ``listener``, or, in a trace run, on
    the listener the program sends just before its exec. One thread, woken by poll:
    SIGCHLD through Python's wakeup fd."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the signal wakes us
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    poller.register(listener if listener >= 0 else to_program, select.POLLIN)
    while True:
        while True:
            pid, status, rusage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid == pid_c:
                child.send(
                    report_fd,
                    "exited",
                    status=status,
                    t=time.monotonic_ns(),
                    maxrss_kb=rusage.ru_maxrss,
                    utime=rusage.ru_utime,
                    stime=rusage.ru_stime,
                )
                os._exit(0)  # the kernel now kills whatever else runs in the pid namespace
        for fd, _ in poller.poll():
            if fd == wake_r:
                os.read(wake_r, 1 << 16)  # a pipe holds no more: one read drains it
            elif fd == to_program.fileno():
                poller.unregister(fd)
                _, fds, _, _ = socket.recv_fds(to_program, 16, 1)
                if fds:  # none if the program failed before installing its filter
                    listener = fds[0]
                    poller.register(listener, select.POLLIN)
            elif fd == listener and not watcher.handle(listener):
                poller.unregister(listener)


def _build_root(template: Spec) -> None:
    """The job's filesystems on its private copy of the template root; or, for an image,
    an overlay root built from the host's layer directories and pivoted into."""
    if template.layers is None:
        root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            rootfs.mount_job_filesystems(root_fd, template.disk_bytes)
        finally:
            os.close(root_fd)
        return
    image_root_fd = rootfs.build_image_root(template.disk_bytes, template.layers, template.workdir)
    rootfs.pivot_into(image_root_fd, seal=False)
    os.close(image_root_fd)


def _copy_in(root_fd: int, dest: str, source_fd: int, mode: int) -> None:
    target = create_file_beneath(root_fd, dest, mode)
    try:
        os.lseek(source_fd, 0, os.SEEK_SET)
        while True:
            chunk = os.read(source_fd, 1 << 20)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(target, view):]
        os.fchmod(target, mode)
    except OSError as exc:
        raise OSError(exc.errno, f"copying {dest} into the sandbox: {exc.strerror} (is --disk big enough?)") from exc
    finally:
        os.close(target)


def _start_program_stage(template: Spec, program_stage_fd: int, report_fd: int, program_end: int) -> int:
    """Start C, the program stage (``native/program_stage.c``, which says why it is C),
    with posix_spawn: the init's memory is shared until the exec, not copied."""
    # Out of the way of the numbers the stage's fds move to (3, 4, 5...), so that no dup2
    # overwrites a source still to come, nor the binary before its exec.
    executable, *moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
                          for fd in (program_stage_fd, report_fd, program_end, *template.cgroup_fds)]
    try:
        return os.posix_spawn(
            f"/proc/self/fd/{executable}",
            ["program-stage", str(template.cap_last), "1" if template.trace else "0", str(len(template.cgroup_fds))],
            {},
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, PROGRAM_STAGE_FIRST_FD + index) for index, fd in enumerate(moved)],
        )
    finally:
        for fd in (executable, *moved):
            os.close(fd)


def _program_instructions(job: dict[str, Any]) -> bytes:
    """The job as the program stage reads it: NUL-terminated fields (strings hold no NUL:
    ``models.py`` refuses them)."""
    env = job["env"]
    fields = [
        job["cwd"],
        str(len(job["rlimits"])), *(str(value) for limit in job["rlimits"] for value in limit),
        str(len(job["argv"])), *job["argv"],
        str(len(env)), *(f"{name}={value}" for name, value in env.items()),
    ]
    return b"".join(os.fsencode(field) + b"\0" for field in fields)
