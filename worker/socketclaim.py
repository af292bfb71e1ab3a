"""One worker per unix socket path.

A socket file cannot say whether the worker that made it is alive, and unlinking it
under a live worker leaves that worker running, unreachable. So a worker first takes an
exclusive flock on a lock file beside the socket (``PATH.lock``, left in place: a lock
file removed at exit could be locked by one worker after another created a new one) and
holds it while it runs. A second worker for the same path is refused while the lock is
held, or while anything answers on the socket (a worker that took no lock); only a
socket that nobody holds or answers - a dead worker's - is replaced. At exit a worker
removes the socket only if the file at the path is still the one it bound.
"""

from __future__ import annotations

import fcntl
import os
import stat

from worker.client import accepting


class SocketClaim:
    """The right to serve on ``path``, taken at construction (ValueError if another
    worker has it) and given up by ``release``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock_path = f"{path}.lock"
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket this worker made
        try:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ValueError(f"cannot open the lock file {self.lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ValueError(f"another worker serves {path} (it holds {self.lock_path})") from None
        problem = self._problem()
        if problem is not None:
            os.close(self._lock_fd)
            raise ValueError(problem)

    def _problem(self) -> str | None:
        """Why the path cannot be this worker's, if it cannot."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return None
        if not stat.S_ISSOCK(info.st_mode):
            return f"{self.path} exists and is not a socket"  # somebody's data, never replaced
        if accepting(self.path):
            return f"another worker is listening on {self.path}"
        return None

    def clear_stale(self) -> None:
        """Remove a dead worker's socket at the path, if there is one."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def bound(self) -> None:
        """The worker bound its socket at the path: the one file ``release`` may remove."""
        info = os.lstat(self.path)
        self._bound = (info.st_dev, info.st_ino)

    def release(self) -> None:
        """Remove the socket if it is still this worker's, then give up the lock."""
        if self._bound is not None:
            try:
                info = os.lstat(self.path)
                if (info.st_dev, info.st_ino) == self._bound:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            self._bound = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
