"""The host image's /etc: a snapshot of the allow-listed host entries plus the files the
sandbox generates (passwd, group, hosts, hostname), bound whole into every sandbox.

Binding two dozen /etc entries one by one cost each sandbox ~4 ms of mount calls; one
bind of a prepared directory costs ~0.2 ms. The snapshot lives in the user's cache,
keyed by a digest of what it copies (names, types, sizes, mtimes, link targets), so a
change on the host makes a new one and every process of the user shares the current
one. A process holds the snapshot it uses (a shared flock); older snapshots nobody holds
are removed when a new one is published (a sandbox already built on one keeps it alive
through its bind mount). A long-lived Runner looks for a newer snapshot every minute.

Only what the user can read is copied (an unreadable file would be unreadable inside
too); secrets and host identity (shadow, sudoers, ssh keys, machine-id, the host's
passwd) are not on the allow-list at all.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

HOST_ETC = "/etc"
# /etc entries a program may legitimately read.
ETC_ALLOW_LIST = (
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
    "nsswitch.conf", "ssl", "ca-certificates", "ca-certificates.conf", "java-*", "python3*",
    "perl", "mime.types", "os-release", "debian_version", "protocols", "services",
    "gai.conf", "host.conf", "magic", "magic.mime", "inputrc", "bash.bashrc", "fonts",
)


class Snapshot:
    """A snapshot in use: its directory is not removed while this is open (a shared
    flock on ``<key>.lock`` beside it), so a long-lived Runner never points at a
    directory a newer process has pruned."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = str(path)
        self.key = path.name
        self._lock_fd = lock_fd

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def current_key(generated: dict[str, str]) -> str:
    """The key of the snapshot the host's /etc calls for now (a walk of stat calls)."""
    digest = hashlib.sha256()
    for name in allowed_entries():
        _fingerprint(os.path.join(HOST_ETC, name), name, digest)
    for name, content in sorted(generated.items()):
        digest.update(f"generated {name}\0{content}\0".encode())
    return digest.hexdigest()[:20]


def acquire(generated: dict[str, str]) -> Snapshot:
    """The current snapshot, held; built first if the host changed since the last one."""
    key = current_key(generated)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / key
    lock_fd = os.open(root / f"{key}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_SH)
    try:
        if not target.is_dir():
            _build(target, allowed_entries(), generated)
    except BaseException:
        os.close(lock_fd)
        raise
    _remove_unused(root, keep=key)
    return Snapshot(target, lock_fd)


def _build(target: Path, entries: list[str], generated: dict[str, str]) -> None:
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        for name in entries:
            _copy(os.path.join(HOST_ETC, name), building / name)
        for name, content in generated.items():
            (building / name).write_text(content)
        building.chmod(0o755)
        try:
            building.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # Another process published the same snapshot first: use it.
    finally:
        shutil.rmtree(building, ignore_errors=True)


def allowed_entries() -> list[str]:
    return sorted(
        name for name in os.listdir(HOST_ETC) if any(fnmatch.fnmatchcase(name, p) for p in ETC_ALLOW_LIST)
    )


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/sandbox/host-etc`` (or ~/.cache); /var/tmp when home is unusable."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidate = Path(base) / "sandbox" / "host-etc"
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        if os.access(candidate, os.W_OK):
            return candidate
    except OSError:
        pass
    return Path(f"/var/tmp/sandbox-{os.getuid()}") / "host-etc"


def _fingerprint(path: str, relative: str, digest: "hashlib._Hash") -> None:
    try:
        info = os.lstat(path)
    except OSError:
        return
    digest.update(f"{relative}\0{info.st_mode}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    if stat.S_ISLNK(info.st_mode):
        digest.update(os.readlink(path).encode() + b"\0")
    elif stat.S_ISDIR(info.st_mode):
        try:
            children = sorted(os.listdir(path))
        except OSError:
            return
        for child in children:
            _fingerprint(os.path.join(path, child), f"{relative}/{child}", digest)


def _copy(source: str, target: Path) -> None:
    """Copy a tree without following symlinks, leaving out what we cannot read."""
    try:
        info = os.lstat(source)
    except OSError:
        return
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(source), target)
    elif stat.S_ISDIR(info.st_mode):
        try:
            children = os.listdir(source)
        except PermissionError:
            return
        target.mkdir(mode=0o755)
        for child in children:
            _copy(os.path.join(source, child), target / child)
    elif stat.S_ISREG(info.st_mode):
        try:
            shutil.copyfile(source, target, follow_symlinks=False)
        except PermissionError:
            return
        target.chmod(stat.S_IMODE(info.st_mode) & 0o755)


def _remove_unused(root: Path, keep: str) -> None:
    """Drop superseded snapshots no process holds, and half-built ones a crashed
    process left behind. (Lock files stay: a few bytes per change of the host's /etc.)"""
    stale_build = time.time() - 3600
    for entry in root.iterdir():
        if entry.name == keep or entry.suffix == ".lock":
            continue
        if entry.name.startswith(".building-"):
            if entry.stat().st_mtime < stale_build:
                shutil.rmtree(entry, ignore_errors=True)
            continue
        lock_fd = os.open(root / f"{entry.name}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # still in use
        finally:
            os.close(lock_fd)
        shutil.rmtree(entry, ignore_errors=True)
