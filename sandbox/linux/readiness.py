"""Whether file descriptors are readable, with poll(2): select(2) refuses an fd number past
FD_SETSIZE (1024), and a launcher supervising hundreds of jobs at once holds thousands."""

from __future__ import annotations

import math
import select
from collections.abc import Iterable
from typing import Protocol


class HasFileno(Protocol):
    def fileno(self) -> int: ...


def readable(fd: int | HasFileno, timeout_s: float = 0.0) -> bool:
    """Whether ``fd`` is readable (or at EOF, or broken) within ``timeout_s`` seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, round(timeout_s * 1000))))


def wait_readable(fds: Iterable[int | HasFileno], timeout_s: float | None = None) -> None:
    """Sleep until one of ``fds`` is readable (or at EOF, or broken), or ``timeout_s``
    seconds (rounded up to a millisecond) have passed."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    poller.poll(None if timeout_s is None else math.ceil(timeout_s * 1000))
