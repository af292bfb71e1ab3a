"""Built-in profiles kept on disk as loaded, with their compiled programs, so that a
process that runs one job (``sandbox run``) neither parses TOML nor hashes a policy to
find its program: reading the default profile that way - ``tomllib`` and ``hashlib``
imported, the files parsed and merged, the policy's key computed - was a tenth of such
a run.

A stored profile decides the job's filter, its limits and its environment, so it is
used only when it is exactly what loading the profile now would give:

- the entry holds the full text of every file that went into it - the profile and each
  file it extends, and the code that loads, checks and compiles profiles - and each is
  compared, byte for byte, with the file as it is now; so do the libseccomp version, the
  architecture and the Python version (the names a profile may use come from them).
  A comparison, not a digest: nothing else can pass for those files;
- the entry's header carries its length and CRC-32, against a file cut short or
  damaged on disk (the directory is this user's alone, as below: only the user, who
  needs no sandbox to run anything, could write one on purpose);
- the directory and the file must be this user's and writable by no one else: the
  program cache's directory, with its checks (``seccomp_cache.read_private``).

Anything else - a missing or refused entry, an edited profile, an upgrade - loads the
profile as before (its program from the program cache, compiled if need be) and
replaces the entry. Profile files named by path are not stored: they go the usual way.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sandbox.init_abi import HANDOVER_FD
from sandbox.linux import libseccomp
from sandbox.profile import Profile
from sandbox.profile_names import profile_chain, profile_path
from sandbox.seccomp_cache import read_private, write_private
from sandbox.seccomp_policy import ArgRule, SeccompPolicy

MAGIC = b"sandbox-profile-1"
_MAX_ENTRY = 4 << 20
_PACKAGE = Path(__file__).parent
# The code whose change could change a loaded profile or its program: what reads and
# merges the files, the names and constants it accepts, the limits it checks, the
# compiler, the fd the program stage is given; and this module.
CODE = tuple(_PACKAGE / name for name in (
    "profile.py", "profile_names.py", "seccomp_policy.py", "seccomp.py", "models.py", "units.py", "init_abi.py",
    "linux/libseccomp.py", "linux/syscalls.py", "profile_store.py",
))


def entry_path(directory: Path, name: str) -> Path:
    """Where the built-in profile ``name`` is kept (a built-in name is a safe file name)."""
    return directory / f"profile-{name}.json"


def stored_profile(name: str, load: Callable[[str], tuple[Profile, bytes]],
                   directory: Path) -> tuple[Profile, bytes]:
    """The built-in profile ``name`` and its program: the stored entry when it is valid,
    else ``load(name)``'s, stored for the next process."""
    path = entry_path(directory, name)
    data = read_private(directory, path, _MAX_ENTRY + 1)
    found = None if data is None else decode(data)
    if found is not None:
        return found
    profile, program = load(name)
    try:
        entry = encode(profile, program, [*(file for file, _, _ in profile_chain(profile_path(name))), *CODE])
    except OSError:
        return profile, program  # a source gone meanwhile: nothing to store that the next run could use
    if len(entry) <= _MAX_ENTRY:
        write_private(directory, path, entry)
    return profile, program


def encode(profile: Profile, program: bytes, sources: list[Path]) -> bytes:
    """An entry's bytes: one header line (magic, length, CRC-32 of the body), then the
    body - the sources' texts, the environment, the profile and its program - as JSON."""
    body = json.dumps({
        "sources": [[str(source), source.read_text(encoding="utf-8")] for source in sources],
        "environment": _environment(),
        "profile": {**asdict(profile), "path": str(profile.path)},
        "program": program.hex(),
    }).encode()
    return b" ".join((MAGIC, str(len(body)).encode(), str(zlib.crc32(body)).encode())) + b"\n" + body


def decode(data: bytes) -> tuple[Profile, bytes] | None:
    """The profile and program of an entry's bytes if they are whole and still what
    loading the profile would give (see the module docstring); else None."""
    header, newline, body = data.partition(b"\n")
    fields = header.split(b" ")
    if not newline or len(fields) != 3 or fields[0] != MAGIC:
        return None
    if fields[1] != str(len(body)).encode() or fields[2] != str(zlib.crc32(body)).encode():
        return None
    try:
        entry = json.loads(body)
        if entry["environment"] != _environment() or not all(_unchanged(path, text) for path, text in entry["sources"]):
            return None
        return _profile(entry["profile"]), bytes.fromhex(entry["program"])
    except (ValueError, TypeError, KeyError):
        return None


def _environment() -> dict[str, Any]:
    return {"libseccomp": libseccomp.version(), "arch": libseccomp.native_arch(), "python": sys.version,
            "handover_fd": HANDOVER_FD}


def _unchanged(path: str, text: str) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read() == text
    except OSError:
        return False


def _profile(fields: dict[str, Any]) -> Profile:
    seccomp = fields["seccomp"]
    policy = SeccompPolicy(
        default=seccomp["default"], exec_mode=seccomp["exec_mode"], actions=seccomp["actions"],
        arg_rules={call: [ArgRule(**rule) for rule in rules] for call, rules in seccomp["arg_rules"].items()},
        listener=seccomp["listener"],
    )
    return Profile(name=fields["name"], path=Path(fields["path"]), description=fields["description"],
                   network=fields["network"], limits=fields["limits"], env=fields["env"], seccomp=policy)
