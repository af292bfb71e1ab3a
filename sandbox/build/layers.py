"""An image's file tree as its unpacked layers make it, read without mounting them.

What COPY needs of the image it copies into (where a destination lands: a directory
there, a symlink on the way - Debian's ``/bin`` -> ``usr/bin``) and of the stage it
copies from (``COPY --from``): the union overlayfs would show, worked out the way
overlayfs works it out from the rootless format the store unpacks into. Upper layers
first; a 0:0 character device hides the name below it, ``user.overlay.opaque=y`` hides
a directory's lower contents, and a non-directory hides everything below its name.

Every file is opened beneath its layer's directory fd with no symlink followed
(``fspath.open_beneath``); a symlink in the image is followed only by ``resolve``,
within the image's root (an absolute target starts at the image's root, ``..`` stops
there), as a container would see it.
"""

from __future__ import annotations

import errno
import os
import stat

from sandbox.errors import SetupError
from sandbox.fspath import open_beneath
from sandbox.images.layer_writer import TreeWalker
from sandbox.images.unpack import OPAQUE_XATTR

_MAX_SYMLINKS = 40  # as the kernel's path walk


class LayerStack:
    """The unpacked layer directories of an image, bottom first; ``close`` them."""

    def __init__(self, layer_dirs: list[str]) -> None:
        self.fds: list[int] = []  # top first
        try:
            for layer in reversed(layer_dirs):
                self.fds.append(os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    def lookup(self, parts: list[str]) -> tuple[int, os.stat_result] | None:
        """The layer (its fd) holding the path ``parts`` as the image shows it, and its
        stat; None where the image has nothing there. No symlink is followed: a path
        through one is None (``resolve`` first)."""
        for layer in self.fds:
            found, hides_below = _in_layer(layer, parts)
            if found is not None:
                return None if _is_whiteout(found) else (layer, found)
            if hides_below:
                return None
        return None

    def list_directory(self, parts: list[str]) -> list[str]:
        """The names in the image's directory ``parts`` (sorted), whiteouts applied."""
        names: set[str] = set()
        for layer in self.fds:
            found, hides_below = _in_layer(layer, parts)
            if found is not None:
                if not stat.S_ISDIR(found.st_mode):
                    break
                fd = _open(layer, parts, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    names.update(os.listdir(fd))
                    opaque = _opaque(fd)
                finally:
                    os.close(fd)
                if opaque:
                    break
            if hides_below:
                break
        return sorted(name for name in names if self.lookup([*parts, name]) is not None)

    def resolve(self, path: str, *, follow_last: bool) -> list[str]:
        """``path`` (absolute) with every symlink on its way followed within the image's
        root (and the last one with ``follow_last``): the components it ends at."""
        pending = [part for part in path.split("/") if part not in ("", ".")]
        resolved: list[str] = []
        hops = 0
        while pending:
            part = pending.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            found = self.lookup([*resolved, part])
            if found is None or not stat.S_ISLNK(found[1].st_mode) or (not pending and not follow_last):
                resolved.append(part)
                continue
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise SetupError(f"too many symlinks on the way to {path!r} in the image")
            layer, _ = found
            parent_fd = _open(layer, resolved, os.O_PATH | os.O_DIRECTORY)
            try:
                target = os.readlink(part, dir_fd=parent_fd)
            finally:
                os.close(parent_fd)
            if target.startswith("/"):
                resolved = []
            pending = [piece for piece in target.split("/") if piece not in ("", ".")] + pending
        return resolved

    def open_parent(self, layer: int, parts: list[str]) -> int:
        """The directory in ``layer`` that holds ``parts``' last component (O_PATH)."""
        return _open(layer, parts[:-1], os.O_PATH | os.O_DIRECTORY)


def _open(layer: int, parts: list[str], flags: int) -> int:
    return open_beneath(layer, "/".join(parts) or ".", flags)


def _in_layer(layer: int, parts: list[str]) -> tuple[os.stat_result | None, bool]:
    """What one layer holds at ``parts``, and whether it hides the layers below there
    (a whiteout, a non-directory or an opaque directory on the way or at the end)."""
    current = os.dup(layer)
    try:
        for index, part in enumerate(parts):
            try:
                found = os.stat(part, dir_fd=current, follow_symlinks=False)
            except FileNotFoundError:
                return None, False
            last = index == len(parts) - 1
            if last:
                if stat.S_ISDIR(found.st_mode):
                    fd = open_beneath(current, part, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        return found, _opaque(fd)
                    finally:
                        os.close(fd)
                return found, True
            if not stat.S_ISDIR(found.st_mode):
                return None, True  # a whiteout or a file hides whatever lower layers hold below it
            next_fd = open_beneath(current, part, os.O_RDONLY | os.O_DIRECTORY)
            os.close(current)
            current = next_fd
            if _opaque(current):
                # Lower layers hold nothing below an opaque directory.
                rest_found, _ = _in_layer(current, parts[index + 1:])
                return rest_found, True
        found = os.fstat(current)
        return found, _opaque(current)
    finally:
        os.close(current)


def _opaque(directory_fd: int) -> bool:
    try:
        return os.getxattr(directory_fd, OPAQUE_XATTR) == b"y"
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return False
        raise


def _is_whiteout(found: os.stat_result) -> bool:
    return stat.S_ISCHR(found.st_mode) and found.st_rdev == 0


def add_from_image(walker: TreeWalker, stack: LayerStack, parts: list[str], tar_name: str, *,
                   contents_only: bool) -> None:
    """Add the image's ``parts`` (found: ``lookup``) as ``tar_name``, a directory with
    what the image shows below it (``contents_only``: only that, beneath ``tar_name``)."""
    found = stack.lookup(parts)
    if found is None:
        raise SetupError(f"/{'/'.join(parts)} is not in the image")
    layer, st = found
    if not stat.S_ISDIR(st.st_mode):
        parent_fd = stack.open_parent(layer, parts)
        try:
            walker.add(parent_fd, parts[-1], tar_name)
        finally:
            os.close(parent_fd)
        return
    if not contents_only:
        walker.count(tar_name, st)
        walker.sink.entry(tar_name, st, None, "", {})
    for name in stack.list_directory(parts):
        add_from_image(walker, stack, [*parts, name], f"{tar_name}/{name}" if tar_name else name, contents_only=False)
