"""Whether a live process holds a lock file: the store's image leases and the volumes'
use locks are flocks that their holders' deaths release, so asking the kernel is the
one answer that survives a crashed holder."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def lock_is_held(path: Path) -> bool:
    """True if some process holds a flock on ``path`` (shared or exclusive); False if
    none does or the file is missing. Never follows a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
