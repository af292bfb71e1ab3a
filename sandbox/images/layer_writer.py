"""Write a directory tree as an OCI layer: a gzip'd tar, with its diff id and digest.

The reverse of ``unpack.py``, and symmetric with it, so that a layer written here and
pulled back unpacks into the tree it came from:

- an overlay upper directory in the rootless format (``userxattr``) is what is read:
  a 0:0 character device is a whiteout and becomes ``.wh.NAME``; a directory carrying
  ``user.overlay.opaque=y`` becomes the directory and its ``.wh..wh..opq``;
- ``user.overlay.*`` xattrs are never written (they steer overlayfs); a directory an
  overlay redirected or a file it copied up metadata only (``redirect``, ``metacopy``)
  cannot be said in a tar and is refused; other ``user.*`` xattrs are kept, the rest
  (``trusted.*``, ``security.*``) dropped, as unpack drops them;
- setuid and setgid bits are not written (unpack strips them); ownership is not
  written either: every entry is 0:0, as unpack gives every file to the pulling user;
- hard links between regular files of the tree stay tar hard links;
- any other device, and sockets, are refused, naming the path: they have no place in
  an image, and unpack would not make them;
- everything is opened beneath a directory fd with openat2 (``fspath.open_beneath``),
  one component at a time, never through a symlink: the tree may be a job's.

The bytes are hashed as they are written: the uncompressed stream gives the diff id,
the compressed one the digest. gzip's header carries no time, so the same tree (with
the same times) writes the same blob.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from sandbox.errors import SetupError
from sandbox.fspath import open_beneath
from sandbox.images.errors import ImageError
from sandbox.images.unpack import OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
_OVERLAY_XATTRS = "user.overlay."
# What overlayfs records that a tar cannot carry: the layer would not be the change.
_UNWRITABLE_XATTRS = ("user.overlay.redirect", "user.overlay.metacopy")
_CHUNK = 1 << 20


class LayerError(ImageError):
    """A tree that cannot become a layer; the message names the path."""


@dataclass(frozen=True)
class LayerBlob:
    """A written layer: the file holding the compressed tar and its hashes."""

    path: Path
    digest: str  # of the compressed bytes: the blob's name
    diff_id: str  # of the tar
    size: int


# Decides whether a path (as it goes into the tar) is left out, with everything below it.
Skip = Callable[[str], bool]


class Sink(Protocol):
    """Where a walked tree's entries go: a tar (``LayerTar``) or a hash of the content
    (``ContentHash``, a build cache's key)."""

    def entry(self, name: str, st: os.stat_result, fd: int | None, link: str, xattrs: dict[str, bytes]) -> None: ...

    def hardlink(self, name: str, target: str) -> None: ...

    def whiteout(self, name: str) -> None: ...

    def opaque(self, directory: str) -> None: ...


class _Hashing:
    """A write-only stream that hashes and counts what passes through to ``target``."""

    def __init__(self, target: BinaryIO | _Hashing | gzip.GzipFile) -> None:
        self.target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        """Where tarfile is (it asks once, when it opens): a seekable file's offset,
        which it never seeks to."""
        return self.size


class LayerTar:
    """A layer being written to ``out`` (tar -> diff id hash -> gzip -> digest hash)."""

    def __init__(self, out: BinaryIO) -> None:
        self._compressed = _Hashing(out)
        self._gzip = gzip.GzipFile(fileobj=self._compressed, mode="wb", mtime=0)
        self._plain = _Hashing(self._gzip)
        self._tar = tarfile.open(  # noqa: SIM115 - closed by finish()
            fileobj=self._plain, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]

    def entry(self, name: str, st: os.stat_result, fd: int | None, link: str, xattrs: dict[str, bytes]) -> None:
        info = _info(name, st)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, link
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        else:
            info.type, info.size = tarfile.REGTYPE, st.st_size
        info.pax_headers = {f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                            for key, value in sorted(xattrs.items())}
        if info.type != tarfile.REGTYPE:
            self._tar.addfile(info)
            return
        assert fd is not None, "a regular file is written from its fd"
        with os.fdopen(os.dup(fd), "rb") as source:
            self._tar.addfile(info, _Exactly(source, st.st_size, name))

    def hardlink(self, name: str, target: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.LNKTYPE, target
        self._tar.addfile(info)

    def whiteout(self, name: str) -> None:
        parent, _, base = name.rpartition("/")
        self._tar.addfile(tarfile.TarInfo(f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base))

    def opaque(self, directory: str) -> None:
        self._tar.addfile(tarfile.TarInfo(f"{directory}/{OPAQUE_MARKER}"))

    def finish(self) -> tuple[str, str, int]:
        """Close the tar and the gzip stream: (digest, diff id, size of the blob)."""
        self._tar.close()
        self._gzip.close()
        return ("sha256:" + self._compressed.hash.hexdigest(), "sha256:" + self._plain.hash.hexdigest(),
                self._compressed.size)


class ContentHash:
    """What a tree holds - names, kinds, modes, link targets, bytes, xattrs - as one
    hash; times are left out, so touching a file does not change it."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def _field(self, *values: object) -> None:
        self.hash.update(repr(values).encode("utf-8", "surrogateescape") + b"\n")

    def entry(self, name: str, st: os.stat_result, fd: int | None, link: str, xattrs: dict[str, bytes]) -> None:
        self._field("entry", name, stat.S_IFMT(st.st_mode), _mode(st), link, sorted(xattrs.items()))
        if fd is not None and stat.S_ISREG(st.st_mode):
            with os.fdopen(os.dup(fd), "rb") as source:
                while chunk := source.read(_CHUNK):
                    self.hash.update(chunk)

    def hardlink(self, name: str, target: str) -> None:
        self._field("hardlink", name, target)

    def whiteout(self, name: str) -> None:
        self._field("whiteout", name)

    def opaque(self, directory: str) -> None:
        self._field("opaque", directory)

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


class _Exactly:
    """A file's bytes, exactly as many as the tar header said: a file that grew or
    shrank while being read is an error, never a corrupt tar."""

    def __init__(self, source: BinaryIO, size: int, name: str) -> None:
        self.source, self.left, self.name = source, size, name

    def read(self, size: int = -1) -> bytes:
        wanted = self.left if size < 0 else min(size, self.left)
        data = self.source.read(wanted)
        if len(data) != wanted:
            raise LayerError(f"{self.name}: the file changed while it was read")
        self.left -= len(data)
        return data


def _mode(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)


def _info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = _mode(st)
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _xattrs(target: int, name: str) -> tuple[dict[str, bytes], bool]:
    """The ``user.*`` xattrs to keep, and whether the directory is opaque."""
    try:
        keys = os.listxattr(target)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}, False
        raise
    kept: dict[str, bytes] = {}
    opaque = False
    for key in keys:
        if key in _UNWRITABLE_XATTRS:
            raise LayerError(f"{name}: overlayfs recorded it as {key}, which a layer cannot carry")
        if key == OPAQUE_XATTR:
            opaque = os.getxattr(target, key) == b"y"
        elif key.startswith("user.") and not key.startswith(_OVERLAY_XATTRS):
            kept[key] = os.getxattr(target, key)
    return kept, opaque


class TreeWalker:
    """Walks directories beneath fds into a ``Sink``: ``upper`` says the tree is an
    overlay upper directory (whiteouts and opaque directories mean what they mean
    there; elsewhere a device is refused like any other). Hard links are remembered
    across every tree one walker adds, so they stay links within one layer."""

    def __init__(self, sink: Sink, *, upper: bool, skip: Skip | None = None, max_entries: int = 0,
                 max_bytes: int = 0) -> None:
        self.sink = sink
        self.upper = upper
        self.skip = skip
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries = 0
        self.bytes = 0
        self._links: dict[tuple[int, int], str] = {}

    def add(self, parent_fd: int, name: str, tar_name: str, *, relative: str = "") -> None:
        """Add ``name`` in the directory ``parent_fd`` as ``tar_name``, a directory with
        everything below it. ``relative``: its path as ``skip`` judges it."""
        if self.skip is not None and relative and self.skip(relative):
            return
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        self.count(tar_name, st)
        if stat.S_ISDIR(st.st_mode):
            self._directory(parent_fd, name, tar_name, relative)
        elif stat.S_ISLNK(st.st_mode):
            self.sink.entry(tar_name, st, None, os.readlink(name, dir_fd=parent_fd), {})
        elif stat.S_ISREG(st.st_mode):
            self._regular(parent_fd, name, tar_name, st)
        elif stat.S_ISFIFO(st.st_mode):
            self.sink.entry(tar_name, st, None, "", {})
        elif self.upper and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            self.sink.whiteout(tar_name)
        else:
            kind = "socket" if stat.S_ISSOCK(st.st_mode) else "device"
            raise LayerError(f"{tar_name}: a {kind} cannot go into an image layer")

    def add_contents(self, directory_fd: int, tar_prefix: str, *, relative: str = "") -> None:
        """Add what the directory ``directory_fd`` holds, beneath ``tar_prefix`` ("" for
        the layer's root)."""
        for child in sorted(os.listdir(directory_fd)):
            self.add(directory_fd, child, _join(tar_prefix, child), relative=_join(relative, child))

    def count(self, name: str, st: os.stat_result) -> None:
        """Count an entry against the caps (``add`` counts its own)."""
        self.entries += 1
        if self.max_entries and self.entries > self.max_entries:
            raise LayerError(f"{name}: more than {self.max_entries} entries")
        if stat.S_ISREG(st.st_mode):
            self.bytes += st.st_size
            if self.max_bytes and self.bytes > self.max_bytes:
                raise LayerError(f"{name}: more than {self.max_bytes} bytes")

    def _open(self, parent_fd: int, name: str, flags: int) -> int:
        try:
            return open_beneath(parent_fd, name, flags | os.O_NOFOLLOW)
        except SetupError as exc:
            raise LayerError(f"{name}: was replaced by a symlink while it was read") from exc

    def _directory(self, parent_fd: int, name: str, tar_name: str, relative: str) -> None:
        fd = self._open(parent_fd, name, os.O_RDONLY | os.O_DIRECTORY)
        try:
            xattrs, opaque = _xattrs(fd, tar_name)
            self.sink.entry(tar_name, os.fstat(fd), None, "", xattrs)
            if opaque and self.upper:
                self.sink.opaque(tar_name)
            self.add_contents(fd, tar_name, relative=relative)
        finally:
            os.close(fd)

    def _regular(self, parent_fd: int, name: str, tar_name: str, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self._links:
            self.sink.hardlink(tar_name, self._links[key])
            return
        fd = self._open(parent_fd, name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != key or not stat.S_ISREG(opened.st_mode):
                raise LayerError(f"{tar_name}: the file changed while it was read")
            xattrs, _ = _xattrs(fd, tar_name)
            self.sink.entry(tar_name, opened, fd, "", xattrs)
        finally:
            os.close(fd)
        if st.st_nlink > 1:
            self._links[key] = tar_name


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def write_upper(upper_fd: int, destination: Path) -> LayerBlob:
    """The overlay upper directory ``upper_fd`` as a layer blob written to
    ``destination`` (a new file). Raises LayerError naming what cannot be written."""
    with open(destination, "xb") as out:
        layer = LayerTar(out)
        add_upper(layer, upper_fd)
        digest, diff_id, size = layer.finish()
    return LayerBlob(destination, digest, diff_id, size)


def add_upper(layer: LayerTar, upper_fd: int) -> None:
    """What the upper directory ``upper_fd`` holds, into ``layer``. The fd may be an
    ``O_PATH`` one (a session's init hands such a one over: it cannot be listed), so the
    directory is opened again through it - by the reader, whose permissions count."""
    directory = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=upper_fd)
    try:
        TreeWalker(layer, upper=True).add_contents(directory, "")
    finally:
        os.close(directory)
