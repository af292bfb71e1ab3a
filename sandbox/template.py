"""The template every sandbox of a zygote starts from: a user namespace (uid 1000 inside,
the invoking user outside) and a mount namespace whose root is the built-in host image.
The zygote lives in that user namespace; each sandbox it starts gets new namespaces of
every other kind and a private copy of the template's mounts.

Building a root costs some thirty mount operations and a user namespace with its id
maps; copying the template's mount namespace is one step in the kernel. The supervisor
restarts its zygote - and so rebuilds the template - when the host files the template
was built from change (``rootfs.host_image_fingerprint``), checked at most once per
``RECHECK_S``.
"""

from __future__ import annotations

import json
import os
import socket

from sandbox import child, rootfs
from sandbox.errors import SetupError
from sandbox.linux import syscalls as sc

RECHECK_S = 60.0


class MountBases:
    """The mount namespaces a zygote starts sandboxes from: the template, and a private
    copy of the host's tree (for image roots, whose layers are host directories that
    overlayfs accepts only from the mounting process's own namespace). Both belong to
    the template user namespace, so the zygote may enter either before each clone.
    (A plain class: see ``stages.py`` on what the zygote imports.)"""

    __slots__ = ("template_fd", "host_fd")

    def __init__(self, template_fd: int, host_fd: int) -> None:
        self.template_fd = template_fd
        self.host_fd = host_fd


def enter_template() -> MountBases:
    """Build the template in a helper process and move this process into its user
    namespace. Raises SetupError with the helper's reason. The caller must be
    single-threaded."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        child.guard(theirs.fileno(), lambda: _stage_template(theirs))
    theirs.close()
    try:
        raw, fds, _, _ = socket.recv_fds(ours, child.MAX_MESSAGE + 1, 2)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        reason = json.loads(raw)["message"] if raw else "the template helper died"
        raise SetupError(f"cannot build the sandbox template: {reason}")
    user_fd, template_fd = fds
    try:
        sc.setns(user_fd, sc.CLONE_NEWUSER)
    finally:
        os.close(user_fd)
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount_propagation("/", sc.MS_REC | sc.MS_PRIVATE)
    host_fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    return MountBases(template_fd, host_fd)


def _stage_template(channel: socket.socket) -> None:
    """The template's builder is pid 1 of a pid namespace of its own, which dies with it:
    the kernel lets a user namespace mount a procfs only where one is already fully
    visible, so the template keeps a /proc - of that empty namespace, covered in every
    sandbox by the sandbox's own."""
    child.close_fds_except({channel.fileno()})
    child.stdio_to_null()
    uid, gid = os.getuid(), os.getgid()
    sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS | sc.CLONE_NEWPID)
    child.write_id_maps(uid, gid)
    builder = os.fork()
    if builder == 0:
        child.guard(channel.fileno(), lambda: _build_template(channel))
    os.waitpid(builder, 0)
    os._exit(0)


def _build_template(channel: socket.socket) -> None:
    namespaces = [os.open(f"/proc/self/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in ("user", "mnt")]
    rootfs.build_template()
    socket.send_fds(channel, [b"{}"], namespaces)
    os._exit(0)
