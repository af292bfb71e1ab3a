"""Path operations beneath a directory fd that never follow a symlink.

Every path that names something inside a sandbox (a mount point in an image, an input
file's destination, later an output file) goes through here, so a hostile symlink or
``..`` can never make the host side touch a file outside the directory it meant.
"""

from __future__ import annotations

import errno
import os

from sandbox.errors import SetupError
from sandbox.linux.syscalls import (
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    openat2,
)

# Not typing.TYPE_CHECKING: the zygote imports this module and does without typing (and
# tarfile) at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import tarfile

_CHUNK = 1 << 20  # an archive member is written this much at a time

_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS


def relative(path: str) -> str:
    """"/work/a" -> "work/a"; refuses ".." so callers cannot even ask to climb out."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise SetupError(f"path {path!r} contains '..'")
    return "/".join(parts) or "."


def open_beneath(root_fd: int, path: str, flags: int = os.O_PATH, mode: int = 0) -> int:
    """openat2 with RESOLVE_BENEATH|NO_SYMLINKS|NO_MAGICLINKS; the fd is close-on-exec."""
    try:
        return openat2(root_fd, relative(path), flags | os.O_CLOEXEC, _RESOLVE, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EXDEV):
            raise SetupError(f"{path!r} goes through a symlink or leaves its root") from exc
        raise


def make_dirs_beneath(root_fd: int, path: str, mode: int = 0o755) -> int:
    """mkdir -p beneath ``root_fd``; returns an O_PATH fd of the final directory."""
    current = os.dup(root_fd)
    try:
        for part in relative(path).split("/"):
            if part == ".":
                continue
            try:
                os.mkdir(part, mode, dir_fd=current)
            except FileExistsError:
                pass
            next_fd = open_beneath(current, part, os.O_PATH | os.O_DIRECTORY)
            os.close(current)
            current = next_fd
        return current
    except BaseException:
        os.close(current)
        raise


def create_file_beneath(root_fd: int, path: str, mode: int = 0o644) -> int:
    """Create (or truncate) a regular file beneath ``root_fd``, parents included;
    returns a writable fd. An existing symlink at the final component is refused."""
    parent, _, name = relative(path).rpartition("/")
    parent_fd = make_dirs_beneath(root_fd, parent or ".")
    try:
        return os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode,
            dir_fd=parent_fd,
        )
    finally:
        os.close(parent_fd)


def member_parts(name: str) -> list[str]:
    """An archive member's name as the path components it has beneath the directory it is
    unpacked into; ValueError, saying why, for a name that would leave it (absolute, or
    with ``..``: a hostile tar's first tools)."""
    if name.startswith("/"):
        raise ValueError("an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("a path with '..'")
    return parts


def write_member(archive: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
    """A regular member's bytes into ``fd`` (a file just made beneath the directory),
    a chunk at a time: a member may be larger than memory should hold."""
    source = archive.extractfile(member)
    while source is not None and (chunk := source.read(_CHUNK)):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
