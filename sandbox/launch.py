"""Create sandboxes: from the zygote's clone to the exec of the program, split in two so
that everything but the job itself can happen before the job arrives.

``order`` and ``receive`` (may run long before any job; the warm pool does it ahead of
time)::

    supervisor (subreaper) ── request ──> zygote (in the template user namespace,
                                           ``zygote.py``, ``template.py``): setns to the
                                           template mount namespace, clone(CLONE_PARENT,
                                           new mnt, pid, net, ipc, uts)
                                 B = pid 1 of the job ("init"), the supervisor's child:
                                     arms its death signal, mounts the job's
                                     /proc and scratch on its private copy of the
                                     template (or builds an image root and pivots into
                                     it), forks C, waits for a job
                                 C = the future program: joins the job cgroup (so no job
                                     pays the cgroup-attach stall), new cgroup ns, setsid,
                                     waits for its instructions from B

``start_job`` sends the job to B over a SOCK_SEQPACKET channel (argv, env, limits as
JSON; stdin, stdout, stderr and input files as fds with SCM_RIGHTS). B resizes the
writable area if asked, copies the input files in, hands argv and stdio to C and reports
"started"; C sets rlimits and stdio, drops every capability, sets no_new_privs, closes
every other fd, installs the seccomp filter, hands its notification listener to B (so
B can name a violated syscall, see ``notify.py``) and execs. B reaps, reports C's exit,
and exits - and the kernel kills whatever else ran in the job's pid namespace.

Why this shape: B is the supervisor's direct child (it can kill and reap it, and pid
reuse cannot trick it), and the supervisor is a subreaper, so anything orphaned by a
dying sandbox comes back to it. B stays outside the job cgroup and is not the
program, so the program's memory and CPU are measured without the sandbox's own
Python, and killing B (SIGKILL from outside) kills every process of the job -
double-forked, setsid'd or stopped ones included. Messages travel back as JSON lines on
one pipe (each write < PIPE_BUF, so atomic).

The sandboxes of one supervisor share its template user namespace (uid 1000 without
capabilities inside every one of them); every other namespace is their own. What the
kernel counts per user of a user namespace (RLIMIT_NPROC, RLIMIT_SIGPENDING) is
therefore shared by the sandboxes of one supervisor - in the worker, one running job
and the idle warm sandboxes of its slot.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from sandbox import child, network, notify, rootfs
from sandbox.errors import SetupError
from sandbox.fspath import create_file_beneath
from sandbox.linux import syscalls as sc
from sandbox.overlay import ImageRoot
from sandbox.seccomp import HANDOVER_FD
from sandbox.template import MountBases

if TYPE_CHECKING:
    from sandbox.zygote import Zygote

SANDBOX_NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS
_HIGH_FD = 10
_MAX_FDS = 1024 + 3


@dataclass
class Template:
    """What a sandbox is built with before any job is known."""

    seccomp_bpf: bytes
    cgroup_fds: list[int]
    disk_bytes: int
    cap_last: int
    image: ImageRoot | None = None  # None: the built-in host image
    exec_once: bool = False  # the profile forbids exec after the program started
    trace: bool = False  # seccomp_bpf notifies every call: record them, allow them

    def to_wire(self) -> dict[str, Any]:
        """Everything but the cgroup fds (they travel with SCM_RIGHTS), as JSON values."""
        return {
            "seccomp_bpf": base64.b64encode(self.seccomp_bpf).decode(),
            "disk_bytes": self.disk_bytes,
            "cap_last": self.cap_last,
            "image": None if self.image is None else {"layers": self.image.layers, "workdir": self.image.workdir},
            "exec_once": self.exec_once,
            "trace": self.trace,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any], cgroup_fds: list[int]) -> Template:
        image = data["image"]
        return cls(
            seccomp_bpf=base64.b64decode(data["seccomp_bpf"]),
            cgroup_fds=cgroup_fds,
            disk_bytes=data["disk_bytes"],
            cap_last=data["cap_last"],
            image=None if image is None else ImageRoot(image["layers"], image["workdir"]),
            exec_once=data["exec_once"],
            trace=data["trace"],
        )


@dataclass
class JobSpec:
    """What only the job says. The fds are the supervisor's; start_job sends copies."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    disk_bytes: int
    stdin_fd: int
    stdout_fd: int
    stderr_fd: int
    input_files: list[tuple[str, int, int]] = field(default_factory=list)  # dest, fd, mode
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)  # resource, soft, hard


class MessageReader:
    """Split the report pipe into JSON messages."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line]

    def read_blocking(self) -> list[dict[str, Any]]:
        data = os.read(self.fd, 65536)
        return self.feed(data) if data else []


@dataclass
class Prepared:
    """A sandbox waiting for its job; the supervisor's handles on it."""

    init_pid: int
    report_fd: int
    job_channel: socket.socket
    reader: MessageReader
    early: list[dict[str, Any]]
    reaped: bool = False  # once reaped, init_pid may belong to someone else: never signal it

    def close(self) -> None:
        self.job_channel.close()
        os.close(self.report_fd)


@dataclass
class Starting:
    """A sandbox the zygote was asked for; ``receive`` turns it into a Prepared."""

    zygote: Zygote
    report_fd: int
    job_channel: socket.socket
    error: str | None = None  # the request could not even be sent

    @property
    def zygote_fd(self) -> int:
        return self.zygote.channel.fileno()


def order(zygote: Zygote, template: Template) -> Starting:
    """Ask the zygote to start a sandbox init (our child); returns at once.

    The caller must be the zygote's parent and a child subreaper (``become_subreaper``),
    and must ``receive`` its orders in the order it placed them.
    """
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    starting = Starting(zygote, report_r, ours)
    try:
        zygote.request(template.to_wire(), [report_w, theirs.fileno(), *template.cgroup_fds])
    except SetupError as exc:
        starting.error = str(exc)
    finally:
        os.close(report_w)
        theirs.close()
    return starting


def receive(starting: Starting) -> Prepared:
    """The zygote's answer to an order (waits for it). If the sandbox could not start,
    ``init_pid`` is 0 and ``early`` holds the setup_error."""
    init_pid, early = 0, []
    if starting.error is None:
        try:
            init_pid = starting.zygote.answer()
        except SetupError as exc:
            starting.error = str(exc)
    if starting.error is not None:
        early.append({"kind": "setup_error", "message": starting.error})
    return Prepared(init_pid, starting.report_fd, starting.job_channel, MessageReader(starting.report_fd), early)


def start_sandbox(template: Template, bases: MountBases, report_fd: int, channel_fd: int) -> int:
    """(In the zygote.) Start B - pid 1 of new mount, pid, network, IPC and UTS
    namespaces, its mount namespace a private copy of the template (or, for an image, of
    the host's tree, to build the image root from) - as a child of the zygote's parent,
    and return its pid."""
    sc.setns(bases.host_fd if template.image is not None else bases.template_fd, sc.CLONE_NEWNS)
    pid = sc.clone_sibling(SANDBOX_NAMESPACES)
    if pid == 0:
        keep = {report_fd, channel_fd, *template.cgroup_fds}
        child.guard(report_fd, lambda: _stage_init(template, report_fd, channel_fd, keep))
    return pid


def start_job(prepared: Prepared, job: JobSpec) -> None:
    """Hand the job to a prepared sandbox. Raises OSError if the sandbox is gone."""
    fds = [job.stdin_fd, job.stdout_fd, job.stderr_fd, *(fd for _, fd, _ in job.input_files)]
    message = {
        "argv": job.argv,
        "env": job.env,
        "cwd": job.cwd,
        "disk_bytes": job.disk_bytes,
        "rlimits": job.rlimits,
        "files": [(dest, mode) for dest, _, mode in job.input_files],
    }
    socket.send_fds(prepared.job_channel, [json.dumps(message).encode()], fds)


def become_subreaper() -> None:
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)


def _stage_init(template: Template, report_fd: int, channel_fd: int, keep: set[int]) -> None:
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
    started_ns = time.monotonic_ns()
    socket.send_fds(to_program, [json.dumps(instructions).encode()], stdio)
    for fd in stdio:
        os.close(fd)
    child.send(report_fd, "started", t=started_ns)
    _, listener, _, _ = socket.recv_fds(to_program, 16, 1)
    if listener:  # none if C failed before installing its filter
        notify.start_watcher(
            listener[0], lambda kind, **fields: child.send(report_fd, kind, **fields),
            exec_once=template.exec_once, trace=template.trace,
        )
    while True:
        pid, status, rusage = os.wait4(-1, 0)
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


def _build_root(template: Template) -> None:
    """The job's filesystems on its private copy of the template root; or, for an image,
    an overlay root built from the host's layer directories and pivoted into."""
    if template.image is None:
        root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            rootfs.mount_job_filesystems(root_fd, template.disk_bytes)
        finally:
            os.close(root_fd)
        return
    image_root_fd = rootfs.build_image_root(template.disk_bytes, template.image)
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


def _stage_program(template: Template, report_fd: int, channel: socket.socket) -> None:
    for fd in template.cgroup_fds:
        os.write(fd, b"0")  # join the job cgroup now, long before the job's clock starts
        os.close(fd)
    sc.unshare(sc.CLONE_NEWCGROUP)
    os.setsid()
    # What does not depend on the job is done before it arrives; nothing from here to
    # the exec needs a capability.
    _reset_signals()
    _drop_privileges(template.cap_last)
    raw, stdio, _, _ = socket.recv_fds(channel, 1 << 20, 3)
    if not raw:
        os._exit(0)
    instructions = json.loads(raw)
    for limit, soft, hard in instructions["rlimits"]:
        resource.setrlimit(limit, (soft, hard))
    # Move the fds we keep out of the way, then lay them on 0, 1, 2, 3 and 4.
    kept = (*stdio, report_fd, channel.detach())
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for fd in kept]
    for target, fd in enumerate(moved[:3]):
        os.dup2(fd, target, inheritable=True)
    os.dup2(moved[3], 3, inheritable=False)
    os.dup2(moved[4], HANDOVER_FD, inheritable=False)
    sc.close_range(HANDOVER_FD + 1)
    report_fd = 3
    to_init = socket.socket(fileno=HANDOVER_FD)  # made before the filter: it asks the kernel the socket type
    cwd = instructions["cwd"]
    argv, env = instructions["argv"], instructions["env"]
    try:
        os.chdir(cwd)
    except OSError as exc:
        child.send(report_fd, "exec_error", errno=exc.errno, message=f"cannot enter {cwd}: {exc.strerror}")
        os._exit(126)
    # Resolved before the filter: the program gets exactly one execve (the "once" mode).
    path = _resolve(argv[0], env.get("PATH", ""))
    listener = sc.seccomp_install(
        template.seccomp_bpf, sc.SECCOMP_FILTER_FLAG_NEW_LISTENER | sc.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    )
    socket.send_fds(to_init, [b"l"], [listener])
    os.close(listener)
    try:
        if path is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        os.execve(path, argv, env)
    except OSError as exc:
        child.send(report_fd, "exec_error", errno=exc.errno, message=f"{argv[0]}: {exc.strerror}")
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


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
