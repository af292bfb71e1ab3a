"""The build context: the directory COPY and ADD read from, as hostile as a tar.

- It is opened once, and every source beneath it with openat2(RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS) (``fspath.open_beneath``): a source naming ``..`` is refused
  before anything is opened, a symlink on the way to a source is refused, and a
  symlink that is a source or lies in a copied directory is copied as a symlink -
  never followed, wherever it points.
- ``.dockerignore`` at its root leaves paths out of every COPY and ADD from it, with
  Docker's rules (``IgnoreRules``).
- Sources are capped (entries and bytes, the store's limits of one layer: a layer past
  them would not unpack anyway), so a context holding a huge or sparse file fails the
  build with the path named rather than filling the disk.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from dataclasses import dataclass

from sandbox.errors import SandboxError, SetupError
from sandbox.fspath import open_beneath

IGNORE_FILE = ".dockerignore"


class ContextError(SandboxError):
    """A source the build context cannot give; the message names it."""


class IgnoreRules:
    """``.dockerignore`` patterns: one per line, ``#`` comments, paths relative to the
    context root (a leading ``/`` is dropped), ``*``, ``?``, ``[...]`` within a path
    component, ``**`` across any number of them, ``!`` re-including. A path is left
    out when the last pattern matching it or one of its parent directories is not a
    ``!`` one."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = os.path.normpath(line[1:].strip() if include else line).lstrip("/")
            if pattern in ("", "."):
                continue
            self.rules.append((include, re.compile(_translate(pattern))))

    def ignored(self, path: str) -> bool:
        """Whether the context path ``path`` ("dir/file", no leading slash) is left out."""
        parts = path.split("/")
        prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
        verdict = False
        for include, pattern in self.rules:
            if any(pattern.fullmatch(prefix) for prefix in prefixes):
                verdict = not include
        return verdict


def _translate(pattern: str) -> str:
    """A pattern as a regular expression over "/"-separated paths."""
    out = []
    parts = pattern.split("/")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:.*/)?")
        else:
            out.append(_component(part) + ("" if last else "/"))
    return "".join(out)


def _component(part: str) -> str:
    """One path component's wildcards; never matching across a "/"."""
    out = []
    index = 0
    while index < len(part):
        char = part[index]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and "]" in part[index + 2:]:
            end = part.index("]", index + 2)
            body = part[index + 1:end]
            negated = body.startswith(("!", "^"))
            body = re.escape(body[1:] if negated else body).replace(r"\-", "-")
            out.append(f"[{'^' if negated else ''}{body}]")
            index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


@dataclass(frozen=True)
class Source:
    """A source found in the context: its parent directory's path in the context, its
    name there (``.``: the context's root itself) and its whole path."""

    parent: str
    name: str
    path: str
    is_directory: bool


class BuildContext:
    """The context directory, opened once; ``rules`` from its ``.dockerignore``."""

    def __init__(self, path: str) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ContextError(f"cannot open the build context {path}: {exc.strerror}") from None
        self.rules = IgnoreRules(self._ignore_text())

    def close(self) -> None:
        os.close(self.fd)

    def _ignore_text(self) -> str:
        try:
            fd = open_beneath(self.fd, IGNORE_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, SetupError):
            return ""
        with os.fdopen(fd, "r", errors="replace") as handle:
            return handle.read(1 << 20)

    def sources(self, pattern: str) -> list[Source]:
        """What a COPY source names: one path, or the matches of a wildcard in its last
        component (sorted). ContextError if nothing (not left out) is there."""
        parts = [part for part in pattern.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise ContextError(f"COPY source {pattern!r}: '..' leaves the build context")
        parent = "/".join(parts[:-1])
        last = parts[-1] if parts else "."
        if last == ".":
            return [Source(parent, ".", parent, True)]
        parent_fd = self.open_directory(parent, pattern)
        try:
            names = sorted(fnmatch.filter(os.listdir(parent_fd), last)) if _wildcard(last) else [last]
            found = []
            for name in names:
                path = f"{parent}/{name}" if parent else name
                try:
                    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not self.rules.ignored(path):
                    found.append(Source(parent, name, path, stat.S_ISDIR(st.st_mode)))
        finally:
            os.close(parent_fd)
        if not found:
            raise ContextError(f"COPY source {pattern!r}: not in the build context (or left out by {IGNORE_FILE})")
        return found

    def open_directory(self, path: str, named_as: str) -> int:
        """A directory of the context (``path`` "" for its root), never reached through a
        symlink; the caller closes it."""
        try:
            return open_beneath(self.fd, path or ".", os.O_RDONLY | os.O_DIRECTORY)
        except (SetupError, OSError) as exc:
            raise ContextError(f"COPY source {named_as!r}: no such directory in the build context, or one "
                               "reached through a symlink") from exc


def _wildcard(name: str) -> bool:
    return any(char in name for char in "*?[")
