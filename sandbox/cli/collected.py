"""``--collect-to DIR``: a job's collected files written beneath DIR, at their paths in
the sandbox (``/work/out/x.txt`` -> ``DIR/work/out/x.txt``).

The names are the job's: each part is created or entered relative to its parent's fd,
never through a symlink (O_NOFOLLOW: one already in DIR, or put there meanwhile, is an
error, not a way out), and a name with "..", "." or an empty part is refused, as is
anything but a regular file where a file is to go.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

from sandbox.errors import JobError

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_target(path: str) -> int:
    """DIR, opened before the job runs: a missing one is the flag's error, not a job's
    work thrown away."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise JobError(f"cannot open the directory {path}: {exc.strerror}", field="collect_to") from None


def write_all(target: int, files: dict[str, bytes]) -> None:
    """Write every file beneath ``target``; each one that cannot be is said on stderr."""
    for path, content in files.items():
        try:
            write_beneath(target, path, content)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"sandbox: not written: {path}: {reason}", file=sys.stderr)


def write_beneath(target: int, path: str, content: bytes) -> None:
    parts = path.removeprefix("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("a name with '..', '.' or an empty part")
    current = os.dup(target)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=current)
            except FileExistsError:
                pass
            entered = os.open(part, _DIRECTORY_FLAGS, dir_fd=current)
            os.close(current)
            current = entered
        name = parts[-1]
        try:
            existing = os.stat(name, dir_fd=current, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISREG(existing.st_mode):
                raise OSError(errno.EEXIST, "something other than a regular file is there")
        fd = os.open(name, _FILE_FLAGS, 0o644, dir_fd=current)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EEXIST, "something other than a regular file is there")
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    finally:
        os.close(current)
