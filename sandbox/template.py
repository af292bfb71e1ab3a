"""The template every sandbox of a zygote starts from: a user namespace (uid 1000 inside,
the invoking user outside, and where the host grants one the range of ids the jobs run
as: ``ids.py``) and a mount namespace whose root is the built-in host image. The zygote
lives in that user namespace; each sandbox it starts gets new namespaces of every other
kind and a private copy of the template's mounts.

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
# Where the jobs' ids start inside the template (1000 is the supervisor's; ``ids.py``).
JOB_IDS_INSIDE = 100_000
_MAP_REQUEST = b"map"


class IdMaps:
    """The template user namespace's id maps beyond 1000 -> the supervisor: the jobs'
    range (``ids.IdPlan``, as its ``zygote_argument`` spells it). A plain class: see
    ``stages.py`` on what the zygote imports."""

    __slots__ = ("count", "gid", "mapper", "owner_gid", "owner_uid", "uid")

    def __init__(self, argument: str) -> None:
        mapper, *numbers = argument.split(":")
        self.mapper = mapper
        self.owner_uid, self.owner_gid, self.uid, self.gid, self.count = (int(number) for number in numbers)

    @staticmethod
    def parse(argument: str) -> IdMaps | None:
        """None for "single": 1000 alone, mapped by the helper itself."""
        return None if argument == "single" else IdMaps(argument)

    def lines(self, kind: str) -> list[tuple[int, int, int]]:
        """(inside, outside, count) of the uid ("uid") or gid ("gid") map."""
        owner, first = (self.owner_uid, self.uid) if kind == "uid" else (self.owner_gid, self.gid)
        return [(rootfs.SANDBOX_UID, owner, 1), (JOB_IDS_INSIDE, first, self.count)]

    def apply(self, pid: int) -> None:
        """Write the maps of the helper ``pid`` from outside its namespace (``write_maps``).
        Raises SetupError."""
        write_maps(pid, self.mapper, {kind: self.lines(kind) for kind in ("uid", "gid")})


def write_maps(pid: int, mapper: str, lines: dict[str, list[tuple[int, int, int]]]) -> None:
    """Write the uid and gid maps (``lines``: "uid"/"gid" -> (inside, outside, count)) of
    ``pid`` from outside its user namespace: root writes them (``mapper`` "write"), a
    user has newuidmap and newgidmap (setuid root) check its subordinate ids and write
    them, both at once (each is an exec of a setuid binary; the maps are independent).
    Raises SetupError."""
    spawned = []
    for kind in ("uid", "gid"):
        if mapper == "write":
            text = "".join(f"{inside} {outside} {count}\n" for inside, outside, count in lines[kind])
            with open(f"/proc/{pid}/{kind}_map", "w") as handle:
                handle.write(text)
            continue
        tool = f"/usr/bin/new{kind}map"
        argv = [tool, str(pid), *(str(number) for line in lines[kind] for number in line)]
        spawned.append((kind, argv, os.posix_spawn(tool, argv, {})))
    statuses = [(kind, argv, os.waitpid(tool_pid, 0)[1]) for kind, argv, tool_pid in spawned]  # reap both
    failed = [(kind, argv, status) for kind, argv, status in statuses if status != 0]
    if failed:
        kind, argv, status = failed[0]
        raise SetupError(f"{' '.join(argv)} failed (wait status {status}): see /etc/sub{kind}")


class MountBases:
    """The mount namespaces a zygote starts sandboxes from: the template, and a private
    copy of the host's tree (for image roots, whose layers are host directories that
    overlayfs accepts only from the mounting process's own namespace). Both belong to
    the template user namespace, so the zygote may enter either before each clone.
    (A plain class: see ``stages.py`` on what the zygote imports.)"""

    __slots__ = ("host_fd", "template_fd")

    def __init__(self, template_fd: int, host_fd: int) -> None:
        self.template_fd = template_fd
        self.host_fd = host_fd


def enter_template(id_maps: IdMaps | None) -> MountBases:
    """Build the template in a helper process and move this process into its user
    namespace. Raises SetupError with the helper's reason. The caller must be
    single-threaded."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        child.guard(theirs.fileno(), lambda: _stage_template(theirs, id_maps is not None))
    theirs.close()
    try:
        raw, fds, _, _ = socket.recv_fds(ours, child.MAX_MESSAGE + 1, 2)
        if raw == _MAP_REQUEST and id_maps is not None:
            try:
                id_maps.apply(pid)
            except OSError as exc:
                raise SetupError(f"cannot map the template's ids: {exc}") from exc
            ours.send(_MAP_REQUEST)
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


def _stage_template(channel: socket.socket, mapped_outside: bool) -> None:
    """The template's builder is pid 1 of a pid namespace of its own, which dies with it:
    the kernel lets a user namespace mount a procfs only where one is already fully
    visible, so the template keeps a /proc - of that empty namespace, covered in every
    sandbox by the sandbox's own. ``mapped_outside``: the maps name a job range, which
    only the parent, outside, can write (``IdMaps.apply``)."""
    child.close_fds_except({channel.fileno()})
    child.stdio_to_null()
    uid, gid = os.getuid(), os.getgid()
    sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS | sc.CLONE_NEWPID)
    if mapped_outside:
        channel.send(_MAP_REQUEST)
        if channel.recv(len(_MAP_REQUEST)) != _MAP_REQUEST:
            os._exit(125)  # the parent gave up, and says why
    else:
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
