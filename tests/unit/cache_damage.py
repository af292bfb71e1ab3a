"""Damage done to a file of the user's caches (compiled programs, stored profiles): each
must be refused when loaded, never trusted."""

from __future__ import annotations

from pathlib import Path


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-8])


def make_group_writable(path: Path) -> None:
    path.chmod(0o664)


def replace_with_symlink(path: Path) -> None:
    target = path.with_name("elsewhere")
    path.rename(target)
    path.symlink_to(target.name)
