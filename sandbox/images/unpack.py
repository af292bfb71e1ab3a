"""Unpack one layer tar into an empty directory, treating the tar as hostile.

The tar is streamed (never ``extractall``), decompressed on the fly (gzip, zstd or
plain, recognised by magic bytes rather than by the media type a registry claims), and
hashed so the diff_id can be checked. Every entry is created relative to a directory fd
opened with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS): a symlink created by an
earlier entry is data, never a path to follow. Rules:

- absolute names, ``..`` components and entries replacing the layer root: rejected;
- a parent that is a symlink (symlink-then-file): rejected;
- hardlinks: only to a regular file already unpacked in this layer, found without
  following symlinks; anything else rejected;
- character/block devices: skipped (the sandbox gets its own /dev); FIFOs created;
- setuid/setgid bits: stripped; directory modes applied at the end (a 0o555 directory
  must still receive its children);
- xattrs: only ``user.*`` ones, never ``user.overlay.*`` (they steer overlayfs with
  ``userxattr``); ``trusted.*``/``security.*`` dropped;
- whiteouts: ``.wh.NAME`` -> a 0:0 character device NAME, ``.wh..wh..opq`` ->
  ``user.overlay.opaque=y`` on the directory (the rootless overlay format);
- caps on entries and on decompressed bytes (bombs, inode floods).

Errors are ``UnpackError`` naming the entry; the caller discards the directory.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from sandbox.errors import SetupError
from sandbox.fspath import make_dirs_beneath, member_parts, open_beneath, write_member
from sandbox.images.config import UnpackLimits
from sandbox.images.errors import UnpackError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "user.overlay.opaque"
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class UnpackStats:
    entries: int = 0
    bytes: int = 0
    diff_id: str = ""


class _Measured:
    """The decompressed stream: hashes it (diff_id) and stops a decompression bomb."""

    def __init__(self, source: BinaryIO, limit: int) -> None:
        self.source = source
        self.limit = limit
        self.total = 0
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size if size >= 0 else _CHUNK)
        self.total += len(data)
        if self.total > self.limit:
            raise UnpackError(f"layer expands beyond {self.limit} bytes (decompression bomb?)")
        self.hash.update(data)
        return data


def decompressed(blob: BinaryIO) -> BinaryIO:
    """gzip, zstd or plain tar, recognised by magic bytes."""
    head = blob.read(4)
    blob.seek(0)
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=blob, mode="rb")  # type: ignore[return-value]
    if head == _ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
    return blob


def unpack_layer(blob: BinaryIO, dest: Path, limits: UnpackLimits, diff_id: str | None = None) -> UnpackStats:
    """Unpack into the empty directory ``dest``; verify ``diff_id`` when given."""
    stream = _Measured(decompressed(blob), limits.max_bytes)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    os.fchmod(root_fd, 0o755)
    unpacker = _Unpacker(root_fd, limits)
    name = None
    try:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as archive:  # type: ignore[call-overload]
                for member in archive:
                    name = member.name
                    unpacker.entry(archive, member)
            while stream.read(_CHUNK):  # the tar's padding still counts for the diff_id
                pass
        except UnpackError as exc:
            if exc.entry is None and name is not None:
                raise UnpackError(str(exc), name) from exc
            raise
        except (tarfile.TarError, EOFError, zstandard.ZstdError, gzip.BadGzipFile) as exc:
            raise UnpackError(f"corrupt layer ({exc})", name) from exc
        except OSError as exc:
            what = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise UnpackError(f"cannot unpack ({what})", name) from exc
        unpacker.finish()
    finally:
        unpacker.close()
        os.close(root_fd)
    stats = unpacker.stats
    stats.bytes = stream.total
    stats.diff_id = "sha256:" + stream.hash.hexdigest()
    if diff_id is not None and stats.diff_id != diff_id:
        raise UnpackError(f"layer content hashes to {stats.diff_id}, the image config says {diff_id}")
    return stats


def _clean(name: str) -> list[str]:
    try:
        return member_parts(name)
    except ValueError as exc:
        raise UnpackError(f"{exc} in layer", name) from None


def _safe_mode(mode: int) -> int:
    return mode & 0o1777  # no setuid, no setgid


class _Unpacker:
    def __init__(self, root_fd: int, limits: UnpackLimits) -> None:
        self.root_fd = root_fd
        self.limits = limits
        self.stats = UnpackStats()
        self.dir_modes: dict[str, tuple[int, int]] = {}
        self._parent: tuple[str, int] | None = None

    def close(self) -> None:
        if self._parent:
            os.close(self._parent[1])
            self._parent = None

    def _parent_fd(self, parent: str, name: str) -> int:
        """The parent directory, created as needed, never through a symlink. The last
        one is cached: tars list a directory's entries together."""
        if self._parent and self._parent[0] == parent:
            return self._parent[1]
        self.close()
        try:
            fd = make_dirs_beneath(self.root_fd, parent)
        except (SetupError, NotADirectoryError, FileExistsError) as exc:
            raise UnpackError("entry's parent is a symlink or not a directory", name) from exc
        self._parent = (parent, fd)
        return fd

    def _clear(self, parent_fd: int, base: str, keep_dir: bool) -> bool:
        """Remove what an earlier entry left at ``base``; True if a directory is kept."""
        try:
            st = os.stat(base, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            # The cached parent is parent_fd itself (never below ``base``): keep it.
            shutil.rmtree(base, dir_fd=parent_fd)
        else:
            os.unlink(base, dir_fd=parent_fd)
        return False

    def entry(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.stats.entries += 1
        if self.stats.entries > self.limits.max_entries:
            raise UnpackError(f"layer has more than {self.limits.max_entries} entries", member.name)
        parts = _clean(member.name)
        if not parts:
            if member.isdir():
                return
            raise UnpackError("entry would replace the layer root", member.name)
        parent, base = "/".join(parts[:-1]) or ".", parts[-1]
        if member.ischr() or member.isblk():
            return  # device nodes are skipped: no use in a job, a risk on the host
        parent_fd = self._parent_fd(parent, member.name)
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent_fd, base, member.name)
            return
        if member.isdir():
            if not self._clear(parent_fd, base, keep_dir=True):
                os.mkdir(base, 0o700, dir_fd=parent_fd)
            self.dir_modes["/".join(parts)] = (_safe_mode(member.mode), int(member.mtime))
            self._xattrs(member, f"/proc/self/fd/{parent_fd}/{base}")
            return
        self._clear(parent_fd, base, keep_dir=False)
        if member.isreg():
            self._regular(archive, member, parent_fd, base)
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=parent_fd)
            os.utime(base, (member.mtime, member.mtime), dir_fd=parent_fd, follow_symlinks=False)
        elif member.islnk():
            self._hardlink(member, parent_fd, base)
        elif member.isfifo():
            os.mkfifo(base, _safe_mode(member.mode), dir_fd=parent_fd)
        else:
            raise UnpackError(f"unsupported tar entry type {member.type!r}", member.name)

    def _regular(self, archive: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, base: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=parent_fd)
        try:
            write_member(archive, member, fd)
            os.fchmod(fd, _safe_mode(member.mode))
            self._xattrs(member, fd)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)

    def _hardlink(self, member: tarfile.TarInfo, parent_fd: int, base: str) -> None:
        try:
            target = _clean(member.linkname)
        except UnpackError as exc:
            raise UnpackError(f"hardlink target {member.linkname!r}: {exc.message}", member.name) from exc
        if not target:
            raise UnpackError("hardlink to the layer root", member.name)
        try:
            source_dir = open_beneath(self.root_fd, "/".join(target[:-1]) or ".", os.O_PATH | os.O_DIRECTORY)
        except (SetupError, OSError) as exc:
            raise UnpackError("hardlink target is outside this layer or behind a symlink", member.name) from exc
        try:
            st = os.stat(target[-1], dir_fd=source_dir, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise UnpackError("hardlink target is not a regular file", member.name)
            os.link(target[-1], base, src_dir_fd=source_dir, dst_dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError as exc:
            raise UnpackError("hardlink target is not in this layer", member.name) from exc
        finally:
            os.close(source_dir)

    def _whiteout(self, parent_fd: int, base: str, name: str) -> None:
        if base == OPAQUE_MARKER:
            os.setxattr(f"/proc/self/fd/{parent_fd}", OPAQUE_XATTR, b"y")
            return
        hidden = base[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", "..") or hidden.startswith(WHITEOUT_PREFIX):
            raise UnpackError("malformed whiteout", name)
        self._clear(parent_fd, hidden, keep_dir=False)
        os.mknod(hidden, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent_fd)

    def _xattrs(self, member: tarfile.TarInfo, target: int | str) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            attr = key[len("SCHILY.xattr.") :]
            if not attr.startswith("user.") or attr.startswith("user.overlay."):
                continue
            try:
                os.setxattr(target, attr, value.encode("utf-8", "surrogateescape"))
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.E2BIG, errno.ERANGE):
                    raise

    def finish(self) -> None:
        """Directory modes and times last, deepest first (children need a writable,
        searchable parent while they are created)."""
        self.close()
        for path in sorted(self.dir_modes, key=lambda p: p.count("/"), reverse=True):
            mode, mtime = self.dir_modes[path]
            try:
                fd = open_beneath(self.root_fd, path, os.O_RDONLY | os.O_DIRECTORY)
            except (SetupError, FileNotFoundError, NotADirectoryError):
                continue  # replaced by a later entry
            try:
                os.fchmod(fd, mode)
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)
