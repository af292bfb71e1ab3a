"""A read-write volume's size cap, rootless: the job writes to a layer of its own, not
to the volume, and the layer is merged into the volume when the job is over.

The layer is an overlay whose lower layer is the volume's directory and whose upper
layer is a tmpfs the size of what the cap leaves (the cap less what the volume holds):
a write past it is ENOSPC inside the job, and the volume's directory on the host never
holds more than the cap (as tmpfs counts a file's bytes; see ``make``). The tmpfs's
pages are charged to the memory cgroup of the job that writes them. The zygote builds
it, in its copy of the host's tree and with every capability of the template user
namespace: a copy-up gives the copy its lower file's owner (the job's id), which the
sandbox init, once its root is set up, may no longer do. Every layer goes in as a
number relative to /proc/self/fd, so the job's mount table names no host path.

The merge (``merge``) is the zygote's too, once every process of the job is gone:
the upper layer is the job's - hostile input. It is read beneath its directory's fd
and written beneath the volume's, no name resolved through a symlink (each step is one
component opened with O_NOFOLLOW), a file copied through its fd and renamed into
place, so the volume holds each file whole, old or new. What overlayfs leaves in an
upper layer, and what each becomes: a whiteout (a 0:0 character device) removes the
name; a directory marked opaque (``user.overlay.opaque``: it replaced one) replaces the
volume's; other directories are merged into the volume's; files, symlinks and FIFOs
replace the name. A rename is one of these: overlayfs without ``redirect_dir`` (which
an unprivileged overlay cannot have) renames nothing of a lower layer in place - a
moved file is a copy and a whiteout, a moved directory EXDEV, which ``mv`` turns into
a copy and a removal. Hard links in the layer become copies, and extended attributes
the job set are not carried (overlayfs keeps its own marks among them).

Kernel: Linux 6.6 for a tmpfs upper layer (user xattrs, which an unprivileged overlay
keeps its marks in), 6.8 for ``lowerdir+``, and one that takes an upper layer from a
detached mount (6.15): older ones refuse the mount, and the job is refused with why.
"""

from __future__ import annotations

import errno
import os
import stat

from sandbox.linux import syscalls as sc
from sandbox.overlay import detached_overlay

PAGE = 4096
OPAQUE = "user.overlay.opaque"
_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_A_DEVICE = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV


class Layer:
    """A job's layer over a volume: the overlay to mount (``overlay``, an fd of a
    detached mount) and what the merge reads and writes (the upper directory and the
    volume's). The fds are this object's until ``close``."""

    __slots__ = ("overlay", "upper", "volume")

    def __init__(self, overlay: int, upper: int, volume: int) -> None:
        self.overlay, self.upper, self.volume = overlay, upper, volume

    def close(self) -> None:
        for fd in (self.overlay, self.upper, self.volume):
            if fd >= 0:
                os.close(fd)
        self.overlay = self.upper = self.volume = -1


def usage(directory: int) -> int:
    """Bytes the tree at ``directory`` takes (allocated blocks), never following a symlink."""
    total = os.fstat(directory).st_blocks * 512
    for _, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=directory, follow_symlinks=False):
        for name in (*dirnames, *filenames):
            total += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_blocks * 512
    return total


def make(volume: int, cap_bytes: int) -> Layer:
    """The layer of a job over the volume at ``volume`` (a directory fd, which the Layer
    takes), for a cap of ``cap_bytes``: its upper tmpfs holds what the cap leaves, at
    least a page (a volume at or over its cap can still lose files; tmpfs reads a size
    of 0 as no limit). Raises OSError."""
    room = max(cap_bytes - usage(volume), PAGE)
    layer = Layer(-1, -1, volume)
    tmpfs = context = -1
    try:
        context = sc.fsopen("tmpfs")
        sc.fsconfig_string(context, "size", str(room))
        sc.fsconfig_create(context)
        tmpfs = sc.fsmount(context, _NOT_A_DEVICE)
        os.close(context)
        context = -1
        # The overlay's root is its upper directory: the volume root's owner and mode.
        root = os.fstat(volume)
        os.mkdir("upper", dir_fd=tmpfs)
        os.mkdir("work", dir_fd=tmpfs)
        layer.upper = os.open("upper", _OPEN_DIRECTORY, dir_fd=tmpfs)
        os.fchown(layer.upper, root.st_uid, root.st_gid)
        os.fchmod(layer.upper, stat.S_IMODE(root.st_mode))
        work = os.open("work", _OPEN_DIRECTORY, dir_fd=tmpfs)
        try:
            layer.overlay = detached_overlay([volume], (layer.upper, work))
        finally:
            os.close(work)
    except BaseException:
        layer.close()
        raise
    finally:
        for fd in (tmpfs, context):
            if fd >= 0:
                os.close(fd)
    return layer


def merge(upper: int, volume: int) -> None:
    """The upper layer's changes, applied to the volume (both directory fds; see the
    module's doc for the rules)."""
    for name in os.listdir(upper):
        info = os.stat(name, dir_fd=upper, follow_symlinks=False)
        if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            _remove(volume, name)
        elif stat.S_ISDIR(info.st_mode):
            _merge_directory(upper, volume, name, info)
        elif stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode) or stat.S_ISFIFO(info.st_mode):
            _replace(upper, volume, name, info)
        # (sockets die with the job; devices cannot be made in it)


def _merge_directory(upper: int, volume: int, name: str, info: os.stat_result) -> None:
    source = os.open(name, _OPEN_DIRECTORY, dir_fd=upper)
    try:
        try:
            opaque = os.getxattr(source, OPAQUE) == b"y"
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
            opaque = False
        try:
            there = os.stat(name, dir_fd=volume, follow_symlinks=False)
        except FileNotFoundError:
            there = None
        if there is not None and (opaque or not stat.S_ISDIR(there.st_mode)):
            _remove(volume, name)
            there = None
        if there is None:
            os.mkdir(name, 0o700, dir_fd=volume)
        target = os.open(name, _OPEN_DIRECTORY, dir_fd=volume)
        try:
            merge(source, target)
            _same_attributes(target, info)
        finally:
            os.close(target)
    finally:
        os.close(source)


def _replace(upper: int, volume: int, name: str, info: os.stat_result) -> None:
    """A file, symlink or FIFO of the layer, made under a temporary name in the volume
    and renamed over ``name`` (a directory there is removed first)."""
    temporary = f".sandbox-merge.{name}"[:255]
    _remove(volume, temporary)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(name, dir_fd=upper), temporary, dir_fd=volume)
        os.chown(temporary, info.st_uid, info.st_gid, dir_fd=volume, follow_symlinks=False)
    elif stat.S_ISFIFO(info.st_mode):
        os.mkfifo(temporary, 0o600, dir_fd=volume)
        os.chown(temporary, info.st_uid, info.st_gid, dir_fd=volume, follow_symlinks=False)
        os.chmod(temporary, stat.S_IMODE(info.st_mode), dir_fd=volume, follow_symlinks=False)
    else:
        source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=upper)
        try:
            target = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=volume)
            try:
                while os.sendfile(target, source, None, 1 << 30):
                    pass
                _same_attributes(target, info)
            finally:
                os.close(target)
        finally:
            os.close(source)
    try:
        there = os.stat(name, dir_fd=volume, follow_symlinks=False)
    except FileNotFoundError:
        there = None
    if there is not None and stat.S_ISDIR(there.st_mode):
        _remove(volume, name)
    os.rename(temporary, name, src_dir_fd=volume, dst_dir_fd=volume)


def _same_attributes(fd: int, info: os.stat_result) -> None:
    os.fchown(fd, info.st_uid, info.st_gid)
    os.fchmod(fd, stat.S_IMODE(info.st_mode))
    os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))


def _remove(directory: int, name: str) -> None:
    """Remove ``name`` beneath ``directory`` and, for a directory, everything in it;
    nothing if it is not there. Never through a symlink."""
    try:
        info = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        inner = os.open(name, _OPEN_DIRECTORY, dir_fd=directory)
        try:
            for entry in os.listdir(inner):
                _remove(inner, entry)
        finally:
            os.close(inner)
        os.rmdir(name, dir_fd=directory)
    else:
        os.unlink(name, dir_fd=directory)
