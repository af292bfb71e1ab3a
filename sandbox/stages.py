"""The stages of a sandbox, run in the zygote and in the processes it starts (``prepare.py``
has the supervisor's side and the picture).

This module is imported by the zygote, whose size every sandbox pays for in page tables
copied and pages faulted (``zygote.py``): it and what it imports use the standard
library's light modules only - no dataclasses, no typing, no pyseccomp.
"""

from __future__ import annotations

import fcntl
import os
import socket

from sandbox import child, rootfs
from sandbox.errors import SetupError
from sandbox.init_abi import INIT_BINARY, INIT_FIRST_FD
from sandbox.linux import syscalls as sc

# Not typing.TYPE_CHECKING: the zygote does without the typing module (see stages.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sandbox.template import MountBases

SANDBOX_NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS
_HIGH_FD = 32


class ImageRequest:
    """An image sandbox's Blueprint as the zygote receives it (``prepare.Blueprint``:
    ``to_wire`` and ``fds``)."""

    __slots__ = (
        "cap_last",
        "cgroup_fds",
        "cgroup_join",
        "cpu_counter_fd",
        "cpu_counter_kind",
        "disk_bytes",
        "exec_numbers",
        "exec_once",
        "job_id",
        "layers",
        "native_arch",
        "seccomp_fd",
        "trace",
        "workdir",
    )

    def __init__(self, wire: dict[str, Any], fds: list[int]) -> None:
        """``fds`` as ``prepare.Blueprint.fds`` lays them out."""
        image = wire["image"]
        self.seccomp_fd = fds[0]
        self.cpu_counter_kind: str | None = wire["cpu_counter"]
        self.cpu_counter_fd: int = fds[1] if self.cpu_counter_kind else -1
        self.cgroup_fds = fds[2:] if self.cpu_counter_kind else fds[1:]
        self.cgroup_join: str = wire["cgroup_join"]
        self.disk_bytes: int = wire["disk_bytes"]
        self.cap_last: int = wire["cap_last"]
        self.layers: list[str] = image["layers"]
        self.workdir: str = image["workdir"]
        self.exec_once: bool = wire["exec_once"]
        self.trace: bool = wire["trace"]
        self.native_arch: int = wire["native_arch"]
        self.exec_numbers: list[int] = wire["exec_numbers"]
        self.job_id: int = wire["job_id"]


def open_init_binary() -> int:
    """(In the zygote, once.) An O_PATH fd of the C init, which the spawner and an image
    sandbox's B are exec'd from (their roots do not show the host's files); out of the
    way of the fd numbers the init starts with."""
    try:
        fd = os.open(INIT_BINARY, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SetupError(f"the sandbox init {INIT_BINARY} is not built: reinstall the package "
                         "(pip install -e . compiles it; it needs gcc and libc6-dev)") from None
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(fd)
    return high


def start_spawner(template_fd: int, init_fd: int) -> tuple[socket.socket, int]:
    """(In the zygote, once, in the template.) Start the host image's spawner - the C
    init in MODE "serve" (``native/init.c``), which clones every host-image sandbox's B
    into new namespaces on a copy of the template (``template_fd``) - as the
    supervisor's child (CLONE_PARENT), so that its Bs are the supervisor's children too.
    Returns the supervisor's end of its request channel and its pid."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    pid = sc.clone_sibling(0)
    if pid == 0:
        try:
            for target, fd in enumerate(_out_of_the_way([theirs.fileno(), template_fd]), start=INIT_FIRST_FD):
                os.dup2(fd, target)
            os.execve(init_fd, ["sandbox-spawn", "serve"], {})
        finally:
            os._exit(127)  # the supervisor sees its channel close
    theirs.close()
    return ours, pid


def start_image_sandbox(
    template: ImageRequest, bases: MountBases, report_fd: int, channel_fd: int, init_fd: int,
) -> int:
    """(In the zygote.) Start B for an image - pid 1 of new mount, pid, network, IPC and
    UTS namespaces, its mount namespace a private copy of the host's tree to build the
    image root from - as a child of the zygote's parent (the supervisor), and return its
    pid. The root is built in Python, so B is a clone of the zygote that builds it and
    then execs the C init."""
    sc.setns(bases.host_fd, sc.CLONE_NEWNS)
    pid = sc.clone_sibling(SANDBOX_NAMESPACES)
    if pid == 0:
        keep = {report_fd, channel_fd, init_fd, template.seccomp_fd, template.cpu_counter_fd,
                *template.cgroup_fds} - {-1}
        child.guard(report_fd, lambda: _stage_init(template, report_fd, channel_fd, init_fd, keep))
    return pid


def init_fds(report_fd: int, channel_fd: int, seccomp_fd: int, cpu_counter_fd: int, cgroup_fds: list[int]) -> list[int]:
    """The fds the C init starts with, from fd 3 on (``native/init.c``): the report pipe,
    the job channel, the seccomp program, the CPU counter and the fds it joins the job
    cgroup with (none of these two without a cgroup: ``cpu_counter_fd`` -1). It closes
    every other fd itself."""
    counter = [cpu_counter_fd] if cpu_counter_fd >= 0 else []
    return [report_fd, channel_fd, seccomp_fd, *counter, *cgroup_fds]


def init_arguments(
    mode: str, *, cap_last: int, trace: bool, exec_once: bool, native_arch: int, exec_numbers: list[int],
    cpu_counter_kind: str | None, cgroup_fds: int, cgroup_join: str, disk_bytes: int, root: str, job_id: int,
) -> list[str]:
    """The C init's arguments after its name, in the order of its "Run as": the one
    place they are put in that order (the spawner's requests and an image sandbox's
    exec both come here)."""
    execve, execveat = exec_numbers
    return [
        mode, str(cap_last), str(int(trace)), str(int(exec_once)), str(native_arch), str(execve), str(execveat),
        cpu_counter_kind or "none", str(cgroup_fds), cgroup_join, str(disk_bytes), rootfs.HOSTNAME, root, str(job_id),
    ]


def _out_of_the_way(fds: list[int]) -> list[int]:
    """Close-on-exec copies of ``fds`` above the numbers they move to (3, 4, ...), so that
    no dup2 into place overwrites a source still to come (the caller closes them)."""
    return [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for fd in fds]


def _stage_init(template: ImageRequest, report_fd: int, channel_fd: int, init_fd: int, keep: set[int]) -> None:
    """B, right after the clone, for an image: build the overlay root (with only its own
    fds open), then become the C init, which pivots into it."""
    child.close_fds_except(keep)
    root = rootfs.build_image_root(template.disk_bytes, template.layers or [], template.workdir, template.job_id)
    _exec_init(template, report_fd, channel_fd, init_fd, root)


def _exec_init(template: ImageRequest, report_fd: int, channel_fd: int, init_fd: int, root: str) -> None:
    """Become the C init (``native/init.c``, which says why it is C), its fds moved to
    the numbers it expects."""
    fds = init_fds(report_fd, channel_fd, template.seccomp_fd, template.cpu_counter_fd, template.cgroup_fds)
    for target, fd in enumerate(_out_of_the_way(fds), start=INIT_FIRST_FD):
        os.dup2(fd, target)
    arguments = init_arguments(
        "exec", cap_last=template.cap_last, trace=template.trace, exec_once=template.exec_once,
        native_arch=template.native_arch, exec_numbers=template.exec_numbers,
        cpu_counter_kind=template.cpu_counter_kind, cgroup_fds=len(template.cgroup_fds),
        cgroup_join=template.cgroup_join, disk_bytes=template.disk_bytes, root=root, job_id=template.job_id,
    )
    # fexecve (execveat on the fd; init_fd is above every target): the root need not
    # show the file.
    os.execve(init_fd, ["sandbox-init", *arguments], {})
