"""The host image's /etc: a snapshot of the allow-listed host entries plus the files the
sandbox generates (passwd, group, hosts, hostname), bound whole into every sandbox.

Binding two dozen /etc entries one by one cost each sandbox ~4 ms of mount calls; one
bind of a prepared directory costs ~0.2 ms. The snapshot lives in the user's cache,
keyed by a digest of what it copies (names, types, sizes, mtimes, link targets), so a
change on the host makes a new one and every process of the user shares the current
one. Older snapshots are removed when a new one is published: a sandbox still using one
keeps it alive through its bind mount.

Only what the user can read is copied (an unreadable file would be unreadable inside
too); secrets and host identity (shadow, sudoers, ssh keys, machine-id, the host's
passwd) are not on the allow-list at all.
"""

from __future__ import annotations

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


def snapshot(generated: dict[str, str]) -> str:
    """The path of the current snapshot, building it if the host changed."""
    entries = allowed_entries()
    digest = hashlib.sha256()
    for name in entries:
        _fingerprint(os.path.join(HOST_ETC, name), name, digest)
    for name, content in sorted(generated.items()):
        digest.update(f"generated {name}\0{content}\0".encode())
    root = cache_root()
    target = root / digest.hexdigest()[:20]
    if target.is_dir():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
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
    _remove_older(root, keep=target.name)
    return str(target)


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


def _remove_older(root: Path, keep: str) -> None:
    """Drop superseded snapshots, and half-built ones a crashed process left behind."""
    stale_build = time.time() - 3600
    for entry in root.iterdir():
        building = entry.name.startswith(".building-")
        if entry.name != keep and (not building or entry.stat().st_mtime < stale_build):
            shutil.rmtree(entry, ignore_errors=True)
