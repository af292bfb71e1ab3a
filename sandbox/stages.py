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


def open_init_binary() -> int:
    """(In the zygote, once.) An O_PATH fd of the C init, which the sandbox inits exec
    from it (fexecve): their roots do not show the host's files."""
    try:
        return os.open(INIT_BINARY, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SetupError(f"the sandbox init {INIT_BINARY} is not built: reinstall the package "
                         "(pip install -e . compiles it; it needs gcc and libc6-dev)") from None


def start_sandbox(template: Spec, bases: MountBases, report_fd: int, channel_fd: int, init_fd: int) -> int:
    """(In the zygote.) Start B - pid 1 of new mount, pid, network, IPC and UTS
    namespaces, its mount namespace a private copy of the template (or, for an image, of
    the host's tree, to build the image root from) - as a child of the zygote's parent,
    and return its pid."""
    sc.setns(bases.host_fd if template.layers is not None else bases.template_fd, sc.CLONE_NEWNS)
    pid = sc.clone_sibling(SANDBOX_NAMESPACES)
    if pid == 0:
        keep = {report_fd, channel_fd, init_fd, template.cpu_counter_fd, *template.cgroup_fds} - {-1}
        child.guard(report_fd, lambda: _stage_init(template, report_fd, channel_fd, init_fd, keep))
    return pid


def _stage_init(template: Spec, report_fd: int, channel_fd: int, init_fd: int, keep: set[int]) -> None:
    """B, right after the clone: on the host image's template it becomes the C init at
    once, which makes the job's own filesystems there; for an image it first builds the
    overlay root (with only its own fds open), which the C init pivots into."""
    root = "/"
    if template.layers is not None:
        child.close_fds_except(keep)
        root = rootfs.build_image_root(template.disk_bytes, template.layers, template.workdir)
    _exec_init(template, report_fd, channel_fd, init_fd, root)


def _exec_init(template: Spec, report_fd: int, channel_fd: int, init_fd: int, root: str) -> None:
    """Become the C init (``native/init.c``, which says why it is C), with its fds at
    the numbers it expects: the report pipe (3), the job channel (4), the CPU counter
    (5), the seccomp program in a memfd (6), the cgroup.procs files (7...)."""
    seccomp_program = os.memfd_create("seccomp", os.MFD_CLOEXEC)
    os.write(seccomp_program, template.seccomp_bpf)
    counter = template.cpu_counter_fd
    if counter < 0:
        counter = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # no cgroup: a placeholder
    # Out of the way of the numbers they move to, so that no dup2 overwrites a source
    # still to come, nor the binary before its exec.
    executable, *moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for fd in (
        init_fd, report_fd, channel_fd, counter, seccomp_program, *template.cgroup_fds)]
    for target, fd in enumerate(moved, start=INIT_FIRST_FD):
        os.dup2(fd, target)
    sc.close_range(INIT_FIRST_FD + len(moved), executable - 1)
    sc.close_range(executable + 1)
    execve, execveat = template.exec_numbers
    # fexecve (execveat on the fd): no /proc needed, and the root need not show the file.
    os.execve(executable, [
        "sandbox-init", str(template.cap_last), str(int(template.trace)), str(int(template.exec_once)),
        str(template.native_arch), str(execve), str(execveat), template.cpu_counter_kind or "none",
        str(len(template.cgroup_fds)), str(template.disk_bytes), rootfs.HOSTNAME, root,
    ], {})
