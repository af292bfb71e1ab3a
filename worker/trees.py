"""Unpack a tar a client put as a tree (``put_file`` with ``tree``) into a directory of the
file cache, treating the tar as hostile: the tree is mounted into jobs, so what it holds
must be nothing but a tree - regular files, directories and symlinks that stay in it.

The rules are sandbox/images/unpack.py's, made stricter for a tree no overlay needs to
interpret: every entry is created relative to a directory fd opened with
openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), so a symlink an earlier entry made is data,
never a path to follow; refused (the whole tree, naming the entry) are absolute names,
``..`` components, an entry in place of the root, a symlink whose target is absolute or
climbs out of the tree, hardlinks, device nodes, FIFOs and any other type, and more
entries or bytes than allowed. Modes are made the same for every job: readable by all,
executable where the tar says so, writable by the owner only, never setuid or setgid (a
job runs as an id of its own, and reads the tree as "others" do).
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass

from sandbox.errors import SetupError
from sandbox.fspath import make_dirs_beneath, member_parts, write_member

MAX_ENTRIES = 100_000


class TreeError(Exception):
    """The tar is not a tree the worker keeps; says which entry and why."""

    def __init__(self, message: str, entry: str | None = None) -> None:
        super().__init__(f"{entry}: {message}" if entry is not None else message)


@dataclass
class TreeStats:
    entries: int = 0
    bytes: int = 0  # of the regular files: what the tree counts in the cache


def unpack_tree(tar_path: str, dest: str, max_bytes: int, max_entries: int = MAX_ENTRIES) -> TreeStats:
    """Unpack the tar at ``tar_path`` into the new directory ``dest`` (which must not exist);
    raises TreeError, leaving ``dest`` for the caller to remove. Blocking: the server runs
    it in a thread."""
    os.mkdir(dest, 0o755)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    stats = TreeStats()
    try:
        with tarfile.open(tar_path, mode="r|") as archive:
            for member in archive:
                stats.entries += 1
                if stats.entries > max_entries:
                    raise TreeError(f"more than {max_entries} entries", member.name)
                _unpack_entry(archive, member, root_fd, stats, max_bytes)
        # Every directory 0755, whatever the tar or this process's umask said (fwalk
        # follows no symlink).
        for _, _, _, directory_fd in os.fwalk(dir_fd=root_fd):
            os.fchmod(directory_fd, 0o755)
    except (tarfile.TarError, EOFError) as exc:
        raise TreeError(f"not a readable tar ({exc})") from None
    except OSError as exc:
        raise TreeError(f"cannot unpack it ({exc.strerror or exc})") from None
    except ValueError as exc:  # a name the kernel takes no path for (a NUL in it)
        raise TreeError(f"cannot unpack it ({exc})") from None
    finally:
        os.close(root_fd)
    return stats


def _parts(name: str) -> list[str]:
    try:
        return member_parts(name)
    except ValueError as exc:
        raise TreeError(str(exc), name) from None


def _unpack_entry(archive: tarfile.TarFile, member: tarfile.TarInfo, root_fd: int, stats: TreeStats,
                  max_bytes: int) -> None:
    parts = _parts(member.name)
    if not parts:
        if member.isdir():
            return  # the root itself ("./"): it is dest
        raise TreeError("an entry in place of the tree's root", member.name)
    if not (member.isreg() or member.isdir() or member.issym()):
        raise TreeError("not a regular file, directory or symlink", member.name)
    if member.issym():
        _check_link(parts, member)
    try:
        parent_fd = make_dirs_beneath(root_fd, "/".join(parts[:-1]) or ".")
    except (SetupError, NotADirectoryError, FileExistsError):
        raise TreeError("its parent is a symlink or not a directory", member.name) from None
    try:
        base = parts[-1]
        if member.isdir():
            try:
                os.mkdir(base, 0o755, dir_fd=parent_fd)
            except FileExistsError:  # made as an earlier entry's parent, or not a directory at all
                if not stat.S_ISDIR(os.stat(base, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                    raise
            return
        if member.issym():
            os.symlink(member.linkname, base, dir_fd=parent_fd)
            return
        stats.bytes += member.size
        if stats.bytes > max_bytes:
            raise TreeError(f"the tree holds more than {max_bytes} bytes", member.name)
        mode = 0o755 if member.mode & 0o111 else 0o644
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent_fd)
        try:
            write_member(archive, member, fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    except FileExistsError:
        raise TreeError("given twice", member.name) from None
    finally:
        os.close(parent_fd)


def _check_link(parts: list[str], member: tarfile.TarInfo) -> None:
    """A symlink is kept only if its target, read where it lies and component by
    component, stays in the tree. (What it reaches is the job's own sandbox in any case:
    the worker never follows a link of a tree, and a job may make any link itself.)"""
    target = member.linkname
    if not target or target.startswith("/"):
        raise TreeError(f"a symlink to {target!r}, not to a path in the tree", member.name)
    depth = len(parts) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise TreeError(f"a symlink to {target!r}, out of the tree", member.name)
        elif part not in ("", "."):
            depth += 1
