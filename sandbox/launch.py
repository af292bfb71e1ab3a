"""Create one sandbox: the fork chain from the supervisor to the exec of the program.

    supervisor (subreaper) ── fork ──> A: unshare(user, mnt, pid, net, ipc, uts),
                                          write id maps, fork, report B's pid, exit
                                 B = pid 1 of the job ("init"): reparented to the
                                     supervisor; waits for "go", builds the rootfs,
                                     pivots, forks C, reaps, reports C's exit
                                 C = the program: joins the job cgroup, new cgroup ns,
                                     setsid, rlimits, stdio, drops every capability,
                                     no_new_privs, closes fds, seccomp, exec

Why this shape: unshare(CLONE_NEWPID) only affects children, so pid 1 must be forked
after it; the supervisor is a subreaper so B becomes its direct child (it can kill and
reap it, and pid reuse cannot trick it). B stays outside the job cgroup and is not the
program, so the program's memory and CPU are measured without the sandbox's own
Python, and killing B (SIGKILL from outside) makes the kernel kill every process of the
job's pid namespace - double-forked, setsid'd or stopped ones included.

Everything the children need is prepared before the first fork (seccomp bytes, fds,
rlimits), and messages travel back as JSON lines on one pipe (each < PIPE_BUF, so a
write is atomic).
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sandbox import network, rootfs
from sandbox.fspath import create_file_beneath
from sandbox.linux import syscalls as sc
from sandbox.overlay import ImageRoot

NAMESPACES = (
    sc.CLONE_NEWUSER | sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS
)
_GO = b"g"
_HIGH_FD = 10
_MAX_MESSAGE = 3000


@dataclass
class LaunchSpec:
    """Everything the sandbox side needs, resolved by the supervisor before forking."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    disk_bytes: int
    seccomp_bpf: bytes
    cgroup_fds: list[int]
    stdin_fd: int
    stdout_fd: int
    stderr_fd: int
    input_files: list[tuple[str, int, int]] = field(default_factory=list)  # dest, source fd, mode
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)  # resource, soft, hard
    cap_last: int = 40
    image: ImageRoot | None = None  # None: the built-in host image


@dataclass
class Launched:
    """Handles the supervisor keeps: the init pid (its child) and the two pipes."""

    init_pid: int
    report_fd: int
    go_fd: int


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


def launch(spec: LaunchSpec) -> tuple[Launched, MessageReader, list[dict[str, Any]]]:
    """Fork the chain; returns once B exists (not yet started) plus early messages.

    The caller must be a child subreaper (``become_subreaper``). Raises OSError if the
    first fork fails; sandbox-side failures arrive as ``setup_error`` messages.
    """
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    pid_a = os.fork()
    if pid_a == 0:
        _child_guard(report_w, lambda: _stage_unshare(spec, report_w, go_r))
    os.close(report_w)
    os.close(go_r)
    os.waitpid(pid_a, 0)
    reader = MessageReader(report_r)
    messages: list[dict[str, Any]] = []
    while not any(m["kind"] in ("init", "setup_error") for m in messages):
        batch = reader.read_blocking()
        if not batch:
            break
        messages.extend(batch)
    init_pid = next((m["pid"] for m in messages if m["kind"] == "init"), 0)
    return Launched(init_pid, report_r, go_w), reader, messages


def start(launched: Launched) -> None:
    """Let the sandbox init proceed (it waits so it can arm its parent-death signal)."""
    os.write(launched.go_fd, _GO)


def become_subreaper() -> None:
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)


def send(fd: int, kind: str, **fields: Any) -> None:
    line = json.dumps({"kind": kind, **fields})
    if len(line) > _MAX_MESSAGE:
        line = json.dumps({"kind": kind, **{k: str(v)[:1000] for k, v in fields.items()}})
    os.write(fd, line.encode() + b"\n")


def _child_guard(report_fd: int, body: Any) -> NoReturn:
    """Run a forked stage; any exception becomes a setup_error message, never a return
    into the supervisor's code."""
    try:
        body()
    except BaseException as exc:  # noqa: BLE001 - the child must never unwind
        try:
            send(report_fd, "setup_error", message=f"{type(exc).__name__}: {exc}")
        except BaseException:  # noqa: BLE001
            pass
    os._exit(125)


def _stage_unshare(spec: LaunchSpec, report_fd: int, go_fd: int) -> None:
    uid, gid = os.getuid(), os.getgid()
    sc.unshare(NAMESPACES)
    _write_id_maps(uid, gid)
    pid_b = os.fork()
    if pid_b == 0:
        _child_guard(report_fd, lambda: _stage_init(spec, report_fd, go_fd))
    send(report_fd, "init", pid=pid_b)
    os._exit(0)


def _write_id_maps(uid: int, gid: int) -> None:
    with open("/proc/self/setgroups", "w") as handle:
        handle.write("deny")
    with open("/proc/self/uid_map", "w") as handle:
        handle.write(f"{rootfs.SANDBOX_UID} {uid} 1")
    with open("/proc/self/gid_map", "w") as handle:
        handle.write(f"{rootfs.SANDBOX_GID} {gid} 1")


def _stage_init(spec: LaunchSpec, report_fd: int, go_fd: int) -> None:
    if os.read(go_fd, 1) != _GO:
        os._exit(0)  # the supervisor gave up before starting us
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    # Reparenting to the supervisor happened before "go"; if the supervisor died since,
    # the write end of go_fd is closed (EOF) and the death signal will never come.
    os.set_blocking(go_fd, False)
    try:
        if os.read(go_fd, 1) == b"":
            os._exit(0)
    except BlockingIOError:
        pass
    sc.sethostname(rootfs.HOSTNAME)
    sc.setdomainname("(none)")
    network.bring_up_loopback()
    root_fd = rootfs.build_root(spec.disk_bytes, spec.image)
    for dest, source_fd, mode in spec.input_files:
        _copy_in(root_fd, dest, source_fd, mode)
        os.close(source_fd)
    rootfs.pivot_into(root_fd, seal=spec.image is None)
    os.close(root_fd)
    started_ns = time.monotonic_ns()
    pid_c = os.fork()
    if pid_c == 0:
        _child_guard(report_fd, lambda: _stage_program(spec, report_fd))
    for fd in (spec.stdin_fd, spec.stdout_fd, spec.stderr_fd, *spec.cgroup_fds):
        os.close(fd)
    send(report_fd, "started", t=started_ns)
    while True:
        pid, status, rusage = os.wait4(-1, 0)
        if pid == pid_c:
            send(
                report_fd,
                "exited",
                status=status,
                t=time.monotonic_ns(),
                maxrss_kb=rusage.ru_maxrss,
                utime=rusage.ru_utime,
                stime=rusage.ru_stime,
            )
            os._exit(0)  # the kernel now kills whatever else runs in the pid namespace


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
    finally:
        os.close(target)


def _stage_program(spec: LaunchSpec, report_fd: int) -> None:
    for fd in spec.cgroup_fds:
        os.write(fd, b"0")
        os.close(fd)
    sc.unshare(sc.CLONE_NEWCGROUP)
    os.setsid()
    _reset_signals()
    for limit, soft, hard in spec.rlimits:
        resource.setrlimit(limit, (soft, hard))
    # Move the fds we keep out of the way, then lay them on 0, 1, 2 and 3.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for fd in
             (spec.stdin_fd, spec.stdout_fd, spec.stderr_fd, report_fd)]
    for target, fd in enumerate(moved[:3]):
        os.dup2(fd, target, inheritable=True)
    os.dup2(moved[3], 3, inheritable=False)
    sc.close_range(4)
    report_fd = 3
    try:
        os.chdir(spec.cwd)
    except OSError as exc:
        send(report_fd, "exec_error", errno=exc.errno, message=f"cannot enter {spec.cwd}: {exc.strerror}")
        os._exit(126)
    _drop_privileges(spec.cap_last)
    sc.seccomp_install(spec.seccomp_bpf)
    try:
        os.execvpe(spec.argv[0], spec.argv, spec.env)
    except OSError as exc:
        send(report_fd, "exec_error", errno=exc.errno, message=f"{spec.argv[0]}: {exc.strerror}")
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


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
