"""A Sandboxfile parsed: the Dockerfile syntax ``sandbox build`` understands.

Pure logic, no I/O beyond the text given. Lines are joined at a trailing backslash,
``#`` lines are comments (parser directives such as ``# syntax=`` are comments too), and
keywords are case-insensitive. The instructions are FROM (``AS name``), RUN, COPY, ADD,
ENV, ARG, WORKDIR, USER, ENTRYPOINT, CMD, LABEL and EXPOSE; any other Dockerfile
instruction is refused by name with its line, never silently ignored - an image that
builds here means what it says.

Variables (``$NAME``, ``${NAME}``, ``${NAME:-default}``, ``${NAME:+alternative}``, ``\\$``
for a dollar) are replaced where Docker replaces them - in FROM (the ARGs before the
first FROM only), COPY, ADD, ENV, ARG, WORKDIR, USER, LABEL and EXPOSE - and never inside
single quotes; RUN, CMD and ENTRYPOINT are left to the shell, as in Docker.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from sandbox.errors import SandboxError

SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "ENTRYPOINT", "CMD", "LABEL", "EXPOSE")
SUBSTITUTED = ("FROM", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL", "EXPOSE")
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}"
                       r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


class SandboxfileError(SandboxError):
    """A Sandboxfile that cannot be built as written; the message names its line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"Sandboxfile line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Instruction:
    """One instruction: its keyword (upper case), its text after the keyword as written
    (variables not yet replaced) and the line it starts on."""

    keyword: str
    text: str
    line: int

    def __str__(self) -> str:
        return f"{self.keyword} {self.text}"


@dataclass
class Stage:
    """``FROM base [AS name]`` and the instructions up to the next FROM."""

    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Sandboxfile:
    global_args: list[Instruction]  # the ARGs before the first FROM
    stages: list[Stage]


def parse(text: str) -> list[Instruction]:
    """The instructions of ``text``, lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction, as Docker allows
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        instructions.append(_instruction(" ".join(part.strip() for part in pending if part.strip()), start))
        pending = []
    if pending:
        instructions.append(_instruction(" ".join(part.strip() for part in pending if part.strip()), start))
    return instructions


def _instruction(joined: str, line: int) -> Instruction:
    keyword, _, rest = joined.partition(" ")
    keyword = keyword.upper()
    if keyword not in SUPPORTED:
        raise SandboxfileError(line, f"{keyword} is not supported (sandbox build knows {', '.join(SUPPORTED)})")
    if not rest.strip():
        raise SandboxfileError(line, f"{keyword} needs arguments")
    return Instruction(keyword, rest.strip(), line)


def split_stages(instructions: list[Instruction]) -> Sandboxfile:
    """Group instructions into stages; only ARG may come before the first FROM."""
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.text.split()
            if len(words) == 3 and words[1].upper() == "AS":
                stages.append(Stage(words[0], words[2].lower(), instruction.line))
            elif len(words) == 1:
                stages.append(Stage(words[0], None, instruction.line))
            else:
                raise SandboxfileError(instruction.line, "FROM takes an image and an optional 'AS name'")
        elif stages:
            stages[-1].instructions.append(instruction)
        elif instruction.keyword == "ARG":
            global_args.append(instruction)
        else:
            raise SandboxfileError(instruction.line, f"{instruction.keyword} before the first FROM")
    if not stages:
        raise SandboxfileError(1, "no FROM: a Sandboxfile starts from an image (or 'scratch')")
    names = [stage.name for stage in stages if stage.name]
    if len(names) != len(set(names)):
        raise SandboxfileError(stages[-1].line, "two stages have the same name")
    return Sandboxfile(global_args, stages)


def substitute(text: str, variables: dict[str, str], line: int) -> str:
    """``text`` with its variables replaced (unset: empty), not inside single quotes."""
    out: list[str] = []
    index = 0
    quoted = False
    while index < len(text):
        char = text[index]
        if char == "'" and not quoted:
            end = text.find("'", index + 1)
            end = len(text) if end < 0 else end + 1
            out.append(text[index:end])
            index = end
            continue
        if char == "\\" and text.startswith("$", index + 1):
            out.append("\\$")
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        if char == "$":
            match = _VARIABLE.match(text, index)
            if match is None:
                raise SandboxfileError(line, f"a '$' that names no variable at {text[index:index + 12]!r}")
            out.append(_value(match, variables))
            index = match.end()
            continue
        out.append(char)
        index += 1
    return "".join(out)


def _value(match: re.Match[str], variables: dict[str, str]) -> str:
    name = match.group("braced") or match.group("bare")
    value = variables.get(name, "")
    operator = match.group("op")
    if operator == "-":
        return value or match.group("word")
    if operator == "+":
        return match.group("word") if value else ""
    return value


def words(text: str, line: int) -> list[str]:
    """Shell-like words (quotes removed, ``\\$`` a dollar)."""
    try:
        return [word.replace("\\$", "$") for word in shlex.split(text.replace("\\$", "\\\\$"), posix=True)]
    except ValueError as exc:
        raise SandboxfileError(line, f"cannot split {text!r}: {exc}") from None


def command(text: str, line: int) -> list[str]:
    """CMD, ENTRYPOINT and RUN: the JSON form as it is, the shell form run by /bin/sh."""
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
    return ["/bin/sh", "-c", text]


def assignments(text: str, line: int, keyword: str) -> list[tuple[str, str]]:
    """ENV and LABEL: ``key=value ...`` (quotes allowed), or the old ``key value``."""
    split = words(text, line)
    if split and "=" not in split[0]:
        if keyword == "LABEL" or len(split) < 2:
            raise SandboxfileError(line, f"{keyword} takes key=value pairs")
        name, _, value = text.partition(" ")
        return [(name, words(value.strip(), line)[0] if value.strip().startswith(('"', "'")) else value.strip())]
    pairs = []
    for word in split:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise SandboxfileError(line, f"{keyword} takes key=value pairs, not {word!r}")
        pairs.append((key, value))
    return pairs


@dataclass(frozen=True)
class CopyArguments:
    """COPY and ADD: the sources, the destination and ``--from``."""

    sources: list[str]
    destination: str
    from_stage: str | None


def copy_arguments(text: str, line: int, keyword: str) -> CopyArguments:
    """The flags first (``--from=stage`` only), then the JSON form or words."""
    from_stage = None
    rest = text
    while rest.startswith("--"):
        flag_text, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        flag, _, value = flag_text.partition("=")
        if flag == "--from" and keyword == "COPY" and value:
            from_stage = value.lower()
        else:
            raise SandboxfileError(line, f"{keyword} {flag} is not supported")
    split = command(rest, line) if rest.startswith("[") else words(rest, line)
    if rest.startswith("[") and split[:2] == ["/bin/sh", "-c"]:
        raise SandboxfileError(line, f"{keyword}'s JSON form is not a list of strings")
    if len(split) < 2:
        raise SandboxfileError(line, f"{keyword} needs a source and a destination")
    return CopyArguments(split[:-1], split[-1], from_stage)
