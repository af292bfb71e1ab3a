"""The stages of a sandbox, run in the zygote and in the processes it starts (``prepare.py``
has the supervisor's side and the picture).

This module is imported by the zygote, whose size every sandbox pays for in page tables
copied and pages faulted (``zygote.py``): it and what it imports use the standard
library's light modules only - no dataclasses, no typing, no pyseccomp.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket

from sandbox import child, rootfs
from sandbox.errors import SetupError
from sandbox.init_abi import INIT_BINARY, INIT_FIRST_FD
from sandbox.linux import syscalls as sc

_HIGH_FD = 32


def open_init_binary() -> int:
    """(In the zygote, once.) An O_PATH fd of the C init, which the spawner is exec'd
    from (the template's root does not show the host's files); out of the way of the fd
    numbers the init starts with."""
    try:
        fd = os.open(INIT_BINARY, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SetupError(f"the sandbox init {INIT_BINARY} is not built: reinstall the package "
                         "(pip install -e . compiles it; it needs gcc and libc6-dev)") from None
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(fd)
    return high


def start_spawner(template_fd: int, init_fd: int) -> tuple[socket.socket, int]:
    """(In the zygote, once, in the template.) Start the spawner - the C init in MODE
    "serve" (``native/init.c``), which clones every sandbox's B into new namespaces on
    a copy of the template (``template_fd``) or of an image's base - as the
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


def build_image_base(layers: list[str], workdir: str, host_fd: int) -> int:
    """(In the zygote, once per image.) The mount namespace of the image's read-only base
    (``rootfs.build_image_base``): its fd, which a sandbox init of the image copies.
    Built by a builder forked into a copy of the host's tree (``host_fd``), as pid 1 of a
    pid namespace of its own that dies with it - the base keeps a /proc of that empty
    namespace, as the template does (``template.py``). Raises SetupError."""
    sc.setns(host_fd, sc.CLONE_NEWNS)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        child.guard(theirs.fileno(), lambda: _stage_image_base(theirs, layers, workdir))
    theirs.close()
    try:
        raw, fds, _, _ = socket.recv_fds(ours, child.MAX_MESSAGE + 1, 1)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    if not fds:
        reason = json.loads(raw)["message"] if raw else "the image's builder died"
        raise SetupError(f"cannot prepare the image's root: {reason}")
    return fds[0]


def _stage_image_base(channel: socket.socket, layers: list[str], workdir: str) -> None:
    child.close_fds_except({channel.fileno()})
    sc.unshare(sc.CLONE_NEWNS | sc.CLONE_NEWPID)
    builder = os.fork()
    if builder == 0:
        child.guard(channel.fileno(), lambda: _build_image_base(channel, layers, workdir))
    os.waitpid(builder, 0)
    os._exit(0)


def _build_image_base(channel: socket.socket, layers: list[str], workdir: str) -> None:
    namespace = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    rootfs.build_image_base(layers, workdir)
    socket.send_fds(channel, [b"{}"], [namespace])
    os._exit(0)


def init_fds(report_fd: int, channel_fd: int, seccomp_fd: int, cpu_counter_fd: int, cgroup_fds: list[int],
             image_base_fd: int) -> list[int]:
    """The fds the C init starts with, from fd 3 on (``native/init.c``): the report pipe,
    the job channel, the seccomp program, the CPU counter and the fds it joins the job
    cgroup with (none of these two without a cgroup: ``cpu_counter_fd`` -1), and an
    image's base (``image_base_fd``; -1: the host image). It closes every other fd
    itself."""
    counter = [cpu_counter_fd] if cpu_counter_fd >= 0 else []
    base = [image_base_fd] if image_base_fd >= 0 else []
    return [report_fd, channel_fd, seccomp_fd, *counter, *cgroup_fds, *base]


def init_arguments(
    mode: str, *, cap_last: int, trace: bool, exec_once: bool, native_arch: int, exec_numbers: list[int],
    cpu_counter_kind: str | None, cgroup_fds: int, cgroup_join: str, disk_bytes: int, image_base: bool,
    workdir: str, job_id: int,
) -> list[str]:
    """The C init's arguments after its name, in the order of its "Run as": the one
    place they are put in that order. ``image_base``: an image's base is the last of
    ``init_fds``, whose number the init is told."""
    execve, execveat = exec_numbers
    counter = 1 if cpu_counter_kind else 0
    base_fd = INIT_FIRST_FD + 3 + counter + cgroup_fds if image_base else -1
    return [
        mode, str(cap_last), str(int(trace)), str(int(exec_once)), str(native_arch), str(execve), str(execveat),
        cpu_counter_kind or "none", str(cgroup_fds), cgroup_join, str(disk_bytes), rootfs.HOSTNAME, str(base_fd),
        workdir, str(job_id),
    ]


def _out_of_the_way(fds: list[int]) -> list[int]:
    """Close-on-exec copies of ``fds`` above the numbers they move to (3, 4, ...), so that
    no dup2 into place overwrites a source still to come (the caller closes them)."""
    return [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for fd in fds]
