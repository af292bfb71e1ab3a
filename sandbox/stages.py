"""The stages of a sandbox, run in the zygote and in the processes it starts (``launch.py``
has the supervisor's side and the picture).

This module is imported by the zygote, whose size every sandbox pays for in page tables
copied and pages faulted (``zygote.py``): it and what it imports use the standard
library's light modules only - no dataclasses, no typing, no pyseccomp.
"""

from __future__ import annotations

import base64
import fcntl
import os

from sandbox import child, rootfs
from sandbox.errors import SetupError
from sandbox.linux import syscalls as sc

# Not typing.TYPE_CHECKING: the zygote does without the typing module (see stages.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
    from sandbox.template import MountBases

SANDBOX_NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS
# The sandbox init from the job's root on (``native/init.c``), built by the package's
# installation; it starts with its fds from INIT_FIRST_FD on.
INIT_BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "sandbox-init")
INIT_FIRST_FD = 3
# The program stage's channel to the init (``native/program.h``), on which it hands over
# the filter's listener and receives its job: the filter lets sendmsg and recvmsg
# through on this fd in every profile (``seccomp.py``).
HANDOVER_FD = 4
_HIGH_FD = 32


class SharedFds:
    """(In the zygote.) Fds every sandbox init gets a copy of, opened once: each seccomp
    program it was sent, in a memfd that every init of that profile reads (decoded and
    written once, not per sandbox; a handful of profiles, so a handful of memfds), and
    /dev/null, in the place of an fd an init does not use."""

    def __init__(self) -> None:
        self._filters: dict[str, int] = {}
        self.null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)

    def filter(self, encoded: str) -> int:
        if encoded not in self._filters:
            memfd = os.memfd_create("seccomp", os.MFD_CLOEXEC)
            os.write(memfd, base64.b64decode(encoded))
            self._filters[encoded] = memfd
        return self._filters[encoded]


class Spec:
    """A sandbox's Template as the zygote receives it (``launch.Template.to_wire``)."""

    __slots__ = ("seccomp_fd", "null_fd", "cgroup_fds", "cgroup_join", "cpu_counter_fd", "cpu_counter_kind", "disk_bytes", "cap_last",
                 "layers", "workdir", "exec_once", "trace", "native_arch", "exec_numbers")

    def __init__(self, wire: dict[str, Any], fds: list[int], shared: SharedFds) -> None:
        """``fds`` as ``launch.Template.fds`` lays them out."""
        image = wire["image"]
        self.seccomp_fd: int = shared.filter(wire["seccomp_bpf"])
        self.null_fd = shared.null
        self.cpu_counter_kind: str | None = wire["cpu_counter"]
        self.cpu_counter_fd: int = fds[0] if self.cpu_counter_kind else -1
        self.cgroup_fds = fds[1:] if self.cpu_counter_kind else fds
        self.cgroup_join: str = wire["cgroup_join"]
        self.disk_bytes: int = wire["disk_bytes"]
        self.cap_last: int = wire["cap_last"]
        self.layers: list[str] | None = None if image is None else image["layers"]
        self.workdir: str = "/" if image is None else image["workdir"]
        self.exec_once: bool = wire["exec_once"]
        self.trace: bool = wire["trace"]
        self.native_arch: int = wire["native_arch"]
        self.exec_numbers: list[int] = wire["exec_numbers"]


def open_init_binary() -> int:
    """(In the zygote, once.) An O_PATH fd of the C init, which the zygote spawns and the
    sandbox inits exec from it (their roots do not show the host's files); out of the
    way of the fd numbers the init starts with."""
    try:
        fd = os.open(INIT_BINARY, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SetupError(f"the sandbox init {INIT_BINARY} is not built: reinstall the package "
                         "(pip install -e . compiles it; it needs gcc and libc6-dev)") from None
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(fd)
    return high


def start_sandbox(template: Spec, bases: MountBases, report_fd: int, channel_fd: int, init_fd: int) -> int:
    """(In the zygote.) Start B - pid 1 of new mount, pid, network, IPC and UTS
    namespaces, its mount namespace a private copy of the template (or, for an image, of
    the host's tree, to build the image root from) - as a child of the zygote's parent
    (the supervisor), and return its pid.

    On the host image no Python runs in B: the C init is spawned (posix_spawn: nothing
    of the zygote is copied), clones B itself and exits, and B, orphaned, becomes the
    supervisor's child (the supervisor is a subreaper). An image's root is built in
    Python, so B is a clone of the zygote that builds it and then execs the C init."""
    if template.layers is None:
        return _spawn_init(template, bases.template_fd, report_fd, channel_fd, init_fd)
    sc.setns(bases.host_fd, sc.CLONE_NEWNS)
    pid = sc.clone_sibling(SANDBOX_NAMESPACES)
    if pid == 0:
        keep = {report_fd, channel_fd, init_fd, template.seccomp_fd, template.null_fd, template.cpu_counter_fd,
                *template.cgroup_fds} - {-1}
        child.guard(report_fd, lambda: _stage_init(template, report_fd, channel_fd, init_fd, keep))
    return pid


def _spawn_init(template: Spec, template_fd: int, report_fd: int, channel_fd: int, init_fd: int) -> int:
    """B's pid, once the C init spawned for it has cloned it and exited."""
    pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
    moved = _out_of_the_way(_init_fds(template, report_fd, channel_fd, template_fd))
    try:
        spawner = os.posix_spawn(
            f"/proc/self/fd/{init_fd}", _init_argv(template, "spawn", "/"), {},
            file_actions=[(os.POSIX_SPAWN_DUP2, pid_w, 1),
                          *((os.POSIX_SPAWN_DUP2, fd, INIT_FIRST_FD + index) for index, fd in enumerate(moved))],
        )
    finally:
        os.close(pid_w)
        for fd in moved:
            os.close(fd)
    try:
        answer = b""
        while not answer.endswith(b"\n") and (piece := os.read(pid_r, 32)):
            answer += piece
    finally:
        os.close(pid_r)
        _, status = os.waitpid(spawner, 0)
    if status != 0 or not answer.endswith(b"\n"):
        raise OSError(f"the sandbox init's spawner failed (status {status})")
    return int(answer)


def _init_fds(template: Spec, report_fd: int, channel_fd: int, mount_namespace_fd: int) -> list[int]:
    """The fds the C init starts with, from fd 3 on (``native/init.c``): the report pipe,
    the job channel, the CPU counter, the seccomp program, the template's mount
    namespace, the fds it joins the job cgroup with - /dev/null in the place of one it
    does not use. It closes every other fd itself."""
    counter = template.cpu_counter_fd if template.cpu_counter_fd >= 0 else template.null_fd
    mount_namespace = mount_namespace_fd if mount_namespace_fd >= 0 else template.null_fd
    return [report_fd, channel_fd, counter, template.seccomp_fd, mount_namespace, *template.cgroup_fds]


def _out_of_the_way(fds: list[int]) -> list[int]:
    """Close-on-exec copies of ``fds`` above the numbers they move to (3, 4, ...), so that
    no dup2 into place overwrites a source still to come (the caller closes them)."""
    return [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for fd in fds]


def _init_argv(template: Spec, mode: str, root: str) -> list[str]:
    execve, execveat = template.exec_numbers
    return [
        "sandbox-init", mode, str(template.cap_last), str(int(template.trace)), str(int(template.exec_once)),
        str(template.native_arch), str(execve), str(execveat), template.cpu_counter_kind or "none",
        str(len(template.cgroup_fds)), template.cgroup_join, str(template.disk_bytes), rootfs.HOSTNAME, root,
    ]


def _stage_init(template: Spec, report_fd: int, channel_fd: int, init_fd: int, keep: set[int]) -> None:
    """B, right after the clone, for an image: build the overlay root (with only its own
    fds open), then become the C init, which pivots into it."""
    child.close_fds_except(keep)
    root = rootfs.build_image_root(template.disk_bytes, template.layers or [], template.workdir)
    _exec_init(template, report_fd, channel_fd, init_fd, root)


def _exec_init(template: Spec, report_fd: int, channel_fd: int, init_fd: int, root: str) -> None:
    """Become the C init (``native/init.c``, which says why it is C), its fds moved to
    the numbers it expects."""
    for target, fd in enumerate(_out_of_the_way(_init_fds(template, report_fd, channel_fd, -1)), start=INIT_FIRST_FD):
        os.dup2(fd, target)
    # fexecve (execveat on the fd; init_fd is above every target): the root need not
    # show the file.
    os.execve(init_fd, _init_argv(template, "exec", root), {})
