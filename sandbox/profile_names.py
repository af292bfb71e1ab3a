"""Where the profiles are, what they are called, which file extends which, and their
default limits: nothing beyond the standard library, so that the worker's trio process
can check a job's profile and format a language's commands without loading the seccomp
compiler (``profile.py`` turns the files into policies)."""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path
from typing import Any

from sandbox.errors import JobError, ProfileError
from sandbox.models import is_profile_file

# The top-level profiles/ folder, installed as this package (setup.py): a directory on
# disk, found as the package's own (importlib.resources, which says the same, costs a
# one-shot run milliseconds of imports).
PROFILES_DIR = Path(importlib.import_module("sandbox.profiles").__path__[0])


_MAX_DEPTH = 8


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


def profile_path(name_or_path: str) -> Path:
    """``default`` -> profiles/default.toml; a profile file (a "/" in it, or ending in
    .toml: ``models.is_profile_file``) is its own path."""
    if is_profile_file(name_or_path):
        return Path(name_or_path)
    if not re.fullmatch(r"_?[a-z0-9][a-z0-9_-]*", name_or_path):
        raise ProfileError(f"invalid profile name {name_or_path!r}")
    return PROFILES_DIR / f"{name_or_path}.toml"


def profile_chain(path: Path) -> list[tuple[Path, str, dict[str, Any]]]:
    """The profile file at ``path`` and every file it ``extends``, the base first: each
    its path, text (for error lines) and TOML document."""
    import tomllib  # here: a run whose profile is stored (``profile_store.py``) parses none

    chain: list[tuple[Path, str, dict[str, Any]]] = []
    while True:
        if len(chain) > _MAX_DEPTH:
            raise ProfileError(f"{path}: 'extends' nests deeper than {_MAX_DEPTH} (a cycle?)")
        try:
            text = path.read_text()
            document = tomllib.loads(text)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
            raise ProfileError(f"{path}: {exc}") from exc
        chain.append((path, text, document))
        parent = document.get("extends")
        if parent is None:
            return chain[::-1]
        if not isinstance(parent, str):
            raise ProfileError(f"{path}: 'extends' must be a profile name")
        path = _parent_path(path, parent)


@functools.cache
def builtin_limits(name: str) -> dict[str, Any]:
    """A built-in profile's [limits], its bases' merged in, unchecked (``profile.py``
    checks them when the profile is loaded to run a job)."""
    limits: dict[str, Any] = {}
    for _, _, document in profile_chain(profile_path(name)):
        table = document.get("limits", {})
        if isinstance(table, dict):
            limits.update(table)
    return limits


def _parent_path(child: Path, name: str) -> Path:
    """A path as written, else a sibling of the child, else a built-in profile."""
    if "/" in name:
        return Path(name)
    sibling = child.parent / f"{name}.toml"
    return sibling if sibling.is_file() else profile_path(name)
