"""The stages of a sandbox, run in the zygote and in the processes it starts (``launch.py``
has the supervisor's side and the picture).

This module is imported by the zygote, whose size every sandbox pays for in page tables
copied and pages faulted (``zygote.py``): it and what it imports use the standard
library's light modules only - no dataclasses, no typing, no pyseccomp.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import resource
import select
import signal
import socket
import time

from sandbox import child, network, notify, rootfs
from sandbox.cpucounter import read_cpu_ns
from sandbox.fspath import create_file_beneath
from sandbox.linux import syscalls as sc

# Not typing.TYPE_CHECKING: the zygote does without the typing module (see stages.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
    from sandbox.template import MountBases

SANDBOX_NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS
# The program stage's end of its channel to the init, on which it hands over the filter's
# listener and then receives its job: the filter lets sendmsg and recvmsg through on
# this fd in every profile (``seccomp.py``).
HANDOVER_FD = 4
_HIGH_FD = 10
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


def start_sandbox(template: Spec, bases: MountBases, report_fd: int, channel_fd: int) -> int:
    """(In the zygote.) Start B - pid 1 of new mount, pid, network, IPC and UTS
    namespaces, its mount namespace a private copy of the template (or, for an image, of
    the host's tree, to build the image root from) - as a child of the zygote's parent,
    and return its pid."""
    sc.setns(bases.host_fd if template.layers is not None else bases.template_fd, sc.CLONE_NEWNS)
    pid = sc.clone_sibling(SANDBOX_NAMESPACES)
    if pid == 0:
        keep = {report_fd, channel_fd, template.cpu_counter_fd, *template.cgroup_fds} - {-1}
        child.guard(report_fd, lambda: _stage_init(template, report_fd, channel_fd, keep))
    return pid


def _stage_init(template: Spec, report_fd: int, channel_fd: int, keep: set[int]) -> None:
    # We start with the zygote's fds and stdio; the sandbox keeps only its own. Its
    # stdio becomes /dev/null: nothing the sandbox side prints (or a job provokes it to
    # print) may land in the supervisor's output or the worker's log; what matters
    # travels as messages on report_fd.
    child.close_fds_except(keep)
    child.stdio_to_null()
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
    pid_c = os.fork()
    if pid_c == 0:
        to_program.close()
        channel.close()
        child.guard(report_fd, lambda: _stage_program(template, report_fd, program_end))
    program_end.close()
    for fd in template.cgroup_fds:
        os.close(fd)

    raw, fds, _, _ = socket.recv_fds(channel, 1 << 20, _MAX_FDS)
    if not raw:
        os._exit(0)  # discarded unused: the kernel takes C down with us
    job = json.loads(raw)
    stdio, file_fds = fds[:3], fds[3:]
    if job["disk_bytes"] != template.disk_bytes:
        rootfs.resize_scratch(job["disk_bytes"])
    new_root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for (dest, mode), source_fd in zip(job["files"], file_fds, strict=True):
        _copy_in(new_root, dest, source_fd, mode)
        os.close(source_fd)
    os.close(new_root)
    instructions = {key: job[key] for key in ("argv", "env", "cwd", "rlimits")}
    # C is ready once its filter is installed (it sends the listener) or, in a trace run,
    # once it says so. The job's clock and its CPU account start only now, so that none
    # of C's set-up (the filter alone is most of a millisecond) is charged to the job.
    ready, ready_fds, _, _ = socket.recv_fds(to_program, 16, 1)
    if not ready:
        os._exit(0)  # C failed and reported why
    listener = ready_fds[0] if ready_fds else -1
    cpu_ns = None if template.cpu_counter_kind is None else read_cpu_ns(template.cpu_counter_fd,
                                                                         template.cpu_counter_kind)
    started_ns = time.monotonic_ns()
    socket.send_fds(to_program, [json.dumps(instructions).encode()], stdio)
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


def _stage_program(template: Spec, report_fd: int, channel: socket.socket) -> None:
    """C, before its job: everything that does not depend on the job, so that what is
    left after it arrives is a few calls and the exec. That includes the seccomp
    filter, whose installation costs the kernel most of a millisecond (it translates and
    compiles the program); only a trace run installs it last, so that the trace holds
    the program's calls and none of ours."""
    for fd in template.cgroup_fds:
        os.write(fd, b"0")  # join the job cgroup now, long before the job's clock starts
        os.close(fd)
    sc.unshare(sc.CLONE_NEWCGROUP)
    os.setsid()
    # Nothing from here to the exec needs a capability.
    _reset_signals()
    _drop_privileges(template.cap_last)
    # Report pipe on 3, the channel to the init on HANDOVER_FD; stdio is /dev/null until
    # the job's arrives. Nothing else stays open.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for fd in (report_fd, channel.detach())]
    os.dup2(moved[0], 3, inheritable=False)
    os.dup2(moved[1], HANDOVER_FD, inheritable=False)
    sc.close_range(HANDOVER_FD + 1)
    # The report pipe is fd 3 from here on; the guard around this stage still has the
    # number it had before the move.
    child.guard(3, lambda: _await_job(template))


def _await_job(template: Spec) -> None:
    """Install the filter (unless tracing), wait for the job, exec it. Failures to run
    the program (no such file, not executable, no such directory) are the program's,
    reported as exec_error. Between the filter and the exec, this stage makes only the
    calls ``seccomp.py`` lets through for it in every profile."""
    report_fd = 3
    to_init = socket.socket(fileno=HANDOVER_FD)  # made before the filter: it asks the kernel the socket type
    if template.trace:
        to_init.send(b"ready")
    else:
        _install_filter(template, to_init)
    raw, stdio, _, _ = socket.recv_fds(to_init, 1 << 20, 3, socket.MSG_CMSG_CLOEXEC)
    if not raw:
        os._exit(0)
    instructions = json.loads(raw)
    for target, fd in enumerate(stdio):  # received above 4: 0-4 are taken
        os.dup2(fd, target, inheritable=True)
        os.close(fd)
    cwd = instructions["cwd"]
    argv, env = instructions["argv"], instructions["env"]
    try:
        os.chdir(cwd)
    except OSError as exc:
        child.send(report_fd, "exec_error", errno=exc.errno, message=f"cannot enter {cwd}: {exc.strerror}")
        os._exit(126)
    path = _resolve(argv[0], env.get("PATH", ""))
    if template.trace:
        _install_filter(template, to_init)
    for limit, soft, hard in instructions["rlimits"]:
        resource.setrlimit(limit, (soft, hard))
    try:
        if path is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        os.execve(path, argv, env)
    except OSError as exc:
        child.send(report_fd, "exec_error", errno=exc.errno, message=f"{argv[0]}: {exc.strerror}")
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


def _install_filter(template: Spec, to_init: socket.socket) -> None:
    """Install the job's filter and hand its notification listener to the init, which
    answers the program's notified calls (its one exec, violations, a trace). The
    listener goes before the job's rlimits apply: with a small RLIMIT_NOFILE the kernel
    refuses to pass an fd (ETOOMANYREFS) while the user has more fds in flight, as a
    worker starting hundreds of sandboxes has."""
    listener = sc.seccomp_install(
        template.seccomp_bpf, sc.SECCOMP_FILTER_FLAG_NEW_LISTENER | sc.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    )
    socket.send_fds(to_init, [b"l"], [listener])
    os.close(listener)


def _resolve(command: str, search_path: str) -> str | None:
    """The file execvpe would run (first executable match on PATH); None if none."""
    if "/" in command:
        return command
    for directory in search_path.split(":"):
        candidate = os.path.join(directory or ".", command)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _reset_signals() -> None:
    """Default dispositions and an empty mask: Python ignores SIGPIPE and SIGXFSZ, and
    an ignored signal would stay ignored across exec."""
    for number in range(1, signal.NSIG):
        if number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(number, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # numbers without a signal behind them (32, 33 are glibc's own)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _drop_privileges(cap_last: int) -> None:
    """No capability survives, in any set, and exec can never grant one back."""
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(cap_last + 1):
        sc.prctl(sc.PR_CAPBSET_DROP, cap)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    sc.capset_empty()
