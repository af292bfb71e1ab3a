"""Compiled seccomp programs kept on disk, so a process that runs one job (``sandbox
run``) does not pay libseccomp's compilation - the largest single step of its set-up -
for a profile it compiled before.

A wrong filter is a hole in the sandbox, so nothing read back is trusted as it is:

- the file's name and its header carry the key: a digest of everything that decides the
  program's bytes - the policy as compiled (every rule, the default, the exec mode), the
  architecture, libseccomp's version, the compiler's own source and the fd number it lets
  the program stage use. A policy edited, a library upgraded, a compiler changed: another
  key, another file; a file copied over another's name names the wrong key and is refused;
- the header carries the program's length and digest: a file cut short, grown or altered
  is refused;
- the directory and the file must be this user's and writable by no one else (the
  directory is made 0700): another user's file is never read;
- a refused file is compiled again and replaced; writes are atomic (a temporary file,
  renamed), so a reader sees a whole file or none.

The cache is under ``$XDG_CACHE_HOME/sandbox/seccomp`` (else the account's
``~/.cache``); where it cannot be made or read, programs are compiled as before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox.init_abi import HANDOVER_FD
from sandbox.linux import libseccomp

if TYPE_CHECKING:
    from sandbox.seccomp_policy import SeccompPolicy

MAGIC = b"sandbox-seccomp-1"
# The kernel takes at most BPF_MAXINSNS (4096) instructions of 8 bytes each.
MAX_PROGRAM = 4096 * 8
# Programs kept; past this, a store removes the oldest (each profile edited, library
# upgraded or compiler changed leaves one behind that no key names any more).
MAX_FILES = 64
_COMPILER_SOURCES = [Path(__file__).with_name(name) for name in ("seccomp.py", "seccomp_policy.py")]


def cache_dir() -> Path:
    """Where this user's programs are kept (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(pwd.getpwuid(os.geteuid()).pw_dir, ".cache")
    return Path(base) / "sandbox" / "seccomp"


def policy_key(policy: SeccompPolicy) -> str:
    """The hex digest naming ``policy``'s program: see the module docstring for what
    goes in, and why each part does."""
    content = {
        "policy": dataclasses.asdict(policy),
        "arch": libseccomp.native_arch(),
        "libseccomp": libseccomp.version(),
        "compiler": [_sha256(source.read_bytes()) for source in _COMPILER_SOURCES],
        "handover_fd": HANDOVER_FD,
    }
    return _sha256(json.dumps(content, sort_keys=True).encode())


def _sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``. ``hashlib`` (OpenSSL, loaded at its import) only
    here: a run whose profile is stored (``profile_store.py``) never asks for a key."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def encode(key: str, program: bytes) -> bytes:
    """A cache file's bytes: one header line (magic, key, length, digest), then the program."""
    header = b" ".join((MAGIC, key.encode(), str(len(program)).encode(), _sha256(program).encode()))
    return header + b"\n" + program


def decode(key: str, data: bytes) -> bytes | None:
    """The program in a cache file's bytes if they are whole and made for ``key``; else
    None (the file is then compiled again and replaced, never used)."""
    header, newline, program = data.partition(b"\n")
    fields = header.split(b" ")
    if not newline or len(fields) != 4:
        return None
    magic, named_key, length, digest = fields
    if magic != MAGIC or named_key != key.encode() or not length.isdigit() or int(length) != len(program):
        return None
    if not program or len(program) % 8 or len(program) > MAX_PROGRAM:
        return None
    if _sha256(program).encode() != digest:
        return None
    return program


def cached_program(policy: SeccompPolicy, compile_policy: Callable[[SeccompPolicy], bytes],
                   directory: Path | None = None) -> bytes:
    """``policy``'s program: read from the cache when a valid one is there, else
    compiled by ``compile_policy`` and stored for the next process."""
    directory = cache_dir() if directory is None else directory
    key = policy_key(policy)
    path = directory / f"{key}.bpf"
    program = _load(directory, path, key)
    if program is None:
        program = compile_policy(policy)
        _store(directory, path, key, program)
    return program


def _load(directory: Path, path: Path, key: str) -> bytes | None:
    data = read_private(directory, path, MAX_PROGRAM + 4096)
    return None if data is None else decode(key, data)


def _store(directory: Path, path: Path, key: str, program: bytes) -> None:
    """Write the program for the next process; a cache that cannot be written only
    costs the next process a compilation."""
    if write_private(directory, path, encode(key, program)):
        try:
            _prune(directory, path)
        except OSError:
            pass


def read_private(directory: Path, path: Path, limit: int) -> bytes | None:
    """At most ``limit`` bytes of the file at ``path`` in ``directory``, if both are this
    user's alone (``_private``; the file a regular one, not a symlink); else None."""
    if not _private(directory):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with open(fd, "rb") as handle:
        facts = os.fstat(fd)
        if not stat.S_ISREG(facts.st_mode) or facts.st_uid != os.geteuid() or facts.st_mode & 0o022:
            return None
        return handle.read(limit)


def write_private(directory: Path, path: Path, data: bytes) -> bool:
    """Write ``data`` at ``path`` atomically (a temporary file, renamed: a reader sees a
    whole file or none), making ``directory`` (0700) if missing; False if it could not
    be written or the directory is not this user's alone."""
    import tempfile  # only when something was compiled or loaded anew, which a run from the cache is not

    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(directory):
            return False
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
        try:
            with open(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError:
        return False
    return True


def _prune(directory: Path, keep: Path) -> None:
    """Remove the oldest programs past ``MAX_FILES`` (one still in use is compiled
    again by its next run: a cost, never a fault)."""
    files = [entry for entry in directory.glob("*.bpf") if entry != keep]
    if len(files) < MAX_FILES:
        return
    files.sort(key=lambda entry: entry.stat().st_mtime_ns)
    for entry in files[:len(files) - MAX_FILES + 1]:
        entry.unlink(missing_ok=True)


def _private(directory: Path) -> bool:
    """True if ``directory`` is ours alone: a real directory (no symlink), of this user,
    writable by no other."""
    try:
        facts = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(facts.st_mode) and facts.st_uid == os.geteuid() and not facts.st_mode & 0o022
