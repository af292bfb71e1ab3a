"""Where the built-in profiles are and what they are called: names only, no parsing and
nothing beyond the standard library, so that the worker's trio process can check a
job's profile without loading the seccomp compiler (``profile.py`` parses them)."""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

from sandbox.errors import JobError
from sandbox.models import is_profile_file

# The top-level profiles/ folder, installed as this package (setup.py): a directory on disk.
PROFILES_DIR = Path(str(importlib.resources.files("sandbox.profiles")))


@functools.cache
def builtin_profiles() -> tuple[str, ...]:
    """Profiles to run with; ``_base`` (shared rules, no allow-list) is only extended.
    (Read once per process: every job submitted to a worker is checked against it.)"""
    return tuple(sorted(p.stem for p in PROFILES_DIR.glob("*.toml") if not p.stem.startswith("_")))


def unknown_profile(name: str, *, files_allowed: bool) -> JobError:
    """The job's error for a profile that is not there, listing the ones that are.
    Files are for a runner in the caller's own process (``sandbox run``): a worker runs
    only the profiles installed with it, or a client could hand itself a weaker policy."""
    known = ", ".join(builtin_profiles())
    if is_profile_file(name):
        if files_allowed:
            return JobError(f"no profile file {name!r}", field="profile")
        return JobError(f"a profile file ({name!r}) works with sandbox run only; a worker runs the profiles "
                        f"installed with it (known: {known})", field="profile")
    return JobError(f"no profile named {name!r} (known: {known}; or a path to a profile file)"
                    if files_allowed else f"no profile named {name!r} (known: {known})", field="profile")
