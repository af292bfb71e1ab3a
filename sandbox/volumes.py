"""Named volumes: directories kept under the data directory, beside the image store
(``<data>/volumes/NAME``), that outlive the jobs which mount them.

Who may use a volume at once is decided by an flock on ``<data>/volumes/.locks/NAME``,
held by the supervisor of each job that mounts it (the ``sandbox run`` process, or a
worker's launcher) from before the mount until the job's sandbox is gone: read-write
is exclusive, read-only is shared. An flock, not a record, so that a supervisor that
dies gives its volumes back with its fds, and ``prune`` and ``rm`` can ask whether a
volume is in use by trying the same lock. A job that finds its volume held the other
way is refused (``VolumeBusy``), never queued behind it: a job that waits for another
one would hold its slot meanwhile.

A volume's files belong to the last read-write job's id (the zygote gives them to each
such job as it mounts the volume, ``Zygote.clone_volume``), which the supervisor's own
user on the host cannot override; ``rm`` and ``prune`` therefore have a zygote give
them back to the supervisor's user before removing them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import JobError, VolumeBusy
from sandbox.locks import lock_is_held
from sandbox.models import check_volume_name

_LOCKS = ".locks"
# Gives a volume's files (root, name) back to the supervisor's user: a zygote's
# ``clone_volume`` with the template's 1000 as the owner.
GiveBack = Callable[[str, str], None]


def volumes_root() -> Path:
    """Where volumes live: ``$SANDBOX_VOLUMES``, else ``volumes`` beside the image store
    (its parent is the data directory: ``$XDG_DATA_HOME/sandbox`` by default)."""
    explicit = os.environ.get("SANDBOX_VOLUMES")
    if explicit:
        return Path(explicit)
    from sandbox.images import config as images_config  # (the store's config: only to find the data directory)

    return images_config.load().store.parent / "volumes"


def prepare_root(root: Path) -> None:
    """The volumes' directory and its locks' directory, made 0700 if missing: volumes
    hold the files of jobs, readable by no other user of the host."""
    (root / _LOCKS).mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)


def lock(root: Path, name: str, writable: bool) -> int:
    """Hold the volume for a job: exclusive for read-write, shared for read-only; the
    lock's fd (held until closed). Raises VolumeBusy if another job holds it the other
    way.

    ``rm`` removes a volume's lock file with the volume: a lock taken on a file already
    unlinked would hold nothing, so the name is looked up again once locked."""
    path = root / _LOCKS / name
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if writable else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except BlockingIOError:
            os.close(fd)
            how = "read-write" if writable else "read-only"
            raise VolumeBusy(f"the volume {name} is in use by a running job; {how} use is refused until it ends "
                             "(one read-write user, or any number of read-only ones)") from None
        except FileNotFoundError:
            pass  # removed between the open and the look: take the next one
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    size_bytes: int  # what its files take on disk
    in_use: bool


def in_use(root: Path, name: str) -> bool:
    """Whether a running job holds the volume (its lock is taken either way)."""
    return lock_is_held(root / _LOCKS / name)


def list_volumes(root: Path) -> list[VolumeInfo]:
    """Every volume, by name."""
    if not root.is_dir():
        return []
    names = sorted(entry.name for entry in root.iterdir() if entry.name != _LOCKS and entry.is_dir()
                   and not entry.is_symlink())
    return [VolumeInfo(name, _disk_usage(root / name), in_use(root, name)) for name in names]


def _disk_usage(directory: Path) -> int:
    """Bytes the tree's files take (allocated blocks), never following a symlink; what
    cannot be read (a job's file of mode 000) counts as nothing."""
    total = 0
    for _, dirnames, filenames, dir_fd in os.fwalk(directory, follow_symlinks=False):
        for name in (*dirnames, *filenames):
            try:
                total += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_blocks * 512
            except OSError:
                pass
    return total


def remove(root: Path, name: str, give_back: GiveBack) -> None:
    """Remove a volume no job uses (``JobError`` if missing, ``VolumeBusy`` if used):
    held exclusively meanwhile, so no job mounts it while it goes. ``give_back`` makes
    its files the supervisor's user's again first (they belong to its last job's id)."""
    check_volume_name(name, "volume")
    if not (root / name).is_dir() or (root / name).is_symlink():
        raise JobError(f"no volume named {name}", field="volume")
    held = lock(root, name, writable=True)
    try:
        give_back(str(root), name)
        _remove_tree(root / name)
        os.unlink(root / _LOCKS / name)
    finally:
        os.close(held)


def _remove_tree(directory: Path) -> None:
    """Remove a volume's tree, now this user's: its directories are first made this
    user's to enter and empty (a job may have left one of mode 000), on the way down,
    never through a symlink."""
    os.chmod(directory, 0o700, follow_symlinks=False)
    for _, dirnames, _, dir_fd in os.fwalk(directory, follow_symlinks=False):
        for name in dirnames:
            os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=False)
    shutil.rmtree(directory)


def prune(root: Path, give_back: GiveBack) -> list[str]:
    """Remove every volume no running job uses; the names removed."""
    removed = []
    for volume in list_volumes(root):
        try:
            remove(root, volume.name, give_back)
        except VolumeBusy:
            continue
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        removed.append(volume.name)
    return removed
