"""Seccomp policies: TOML profile -> libseccomp (via pyseccomp) -> classic BPF bytes.

Compiling happens once, in the supervisor, before any fork; the sandboxed child only
installs the finished bytes (``linux.syscalls.seccomp_install``), so no libseccomp work
and no allocation sits between dropping privileges and exec.

Argument rules compare the low 32 bits only (mask within 0xffffffff): the kernel
truncates ``int`` arguments, so a rule on the full 64 bits can be bypassed by setting
the upper half (design.md §5). "Allow unless the argument is X" cannot be written as a
single masked-equal test, so it is compiled to a set of masked-equal allow rules that
together cover every 32-bit value except the denied ones.
"""

from __future__ import annotations

import errno
import socket
import tempfile
import termios
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyseccomp

from sandbox.errors import SetupError
from sandbox.linux import syscalls

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
LOW32 = 0xFFFFFFFF

_NAMED_CONSTANTS: dict[str, int] = {
    **{name: getattr(socket, name) for name in dir(socket) if name.startswith("AF_")},
    "AF_VSOCK": 40,
    "AF_ALG": 38,
    "TIOCSTI": termios.TIOCSTI,
    "TIOCLINUX": 0x541C,
    **{name: getattr(syscalls, name) for name in dir(syscalls) if name.startswith("CLONE_NEW")},
}
_TOP_KEYS = {"default", "allow", "kill", "errno", "allow_if", "allow_unless", "allow_if_clear"}
_RULE_KEYS = {"syscall", "arg", "values", "mask", "action"}


class ProfileError(SetupError):
    """A profile file is malformed: unknown key, syscall, action or constant."""


@dataclass
class ArgRule:
    """One argument-conditioned rule, see the module docstring for the kinds."""

    kind: str
    syscall: str
    arg: int
    values: list[int] = field(default_factory=list)
    mask: int = 0
    action: str = "errno:EPERM"


@dataclass
class SeccompPolicy:
    default: str
    allow: list[str]
    kill: list[str]
    errno_rules: dict[str, list[str]]
    arg_rules: list[ArgRule]


def load_policy(name_or_path: str) -> SeccompPolicy:
    """Read ``profiles/<name>.toml`` (or a path) and validate its [seccomp] table."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILES_DIR / f"{name_or_path}.toml"
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: {exc}") from exc
    table = document.get("seccomp")
    if not isinstance(table, dict):
        raise ProfileError(f"{path}: missing [seccomp] table")
    unknown = set(table) - _TOP_KEYS
    if unknown:
        raise ProfileError(f"{path}: unknown key(s) in [seccomp]: {sorted(unknown)}")
    rules = []
    for kind in ("allow_if", "allow_unless", "allow_if_clear"):
        for entry in table.get(kind, []):
            bad = set(entry) - _RULE_KEYS
            if bad:
                raise ProfileError(f"{path}: unknown key(s) {sorted(bad)} in [[seccomp.{kind}]]")
            rules.append(
                ArgRule(
                    kind=kind,
                    syscall=entry["syscall"],
                    arg=int(entry["arg"]),
                    values=[_constant(path, v) for v in entry.get("values", [])],
                    mask=_constant(path, entry.get("mask", 0)),
                    action=entry.get("action", "errno:EPERM"),
                )
            )
    return SeccompPolicy(
        default=table.get("default", "errno:ENOSYS"),
        allow=list(table.get("allow", [])),
        kill=list(table.get("kill", [])),
        errno_rules={k: list(v) for k, v in table.get("errno", {}).items()},
        arg_rules=rules,
    )


def compile_policy(policy: SeccompPolicy) -> bytes:
    """BPF program bytes for the native architecture only (others are killed)."""
    arch = pyseccomp.system_arch()
    default_action = _action(policy.default)
    seccomp_filter = pyseccomp.SyscallFilter(default_action)
    seccomp_filter.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    seccomp_filter.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)  # binary search over syscalls

    def add(action: int, name: str, *args: pyseccomp.Arg) -> None:
        if pyseccomp.resolve_syscall(arch, name) < 0:
            raise ProfileError(f"unknown syscall {name!r} for this architecture")
        if action == default_action and not args:
            return  # libseccomp refuses a rule that repeats the default; it is implied
        try:
            seccomp_filter.add_rule(action, name, *args)
        except OSError as exc:
            raise ProfileError(f"rule for {name!r} rejected by libseccomp: {exc.strerror}") from exc

    for name in policy.allow:
        add(pyseccomp.ALLOW, name)
    for name in policy.kill:
        add(pyseccomp.KILL_PROCESS, name)
    for errno_name, names in policy.errno_rules.items():
        for name in names:
            add(_action(f"errno:{errno_name}"), name)
    for rule in policy.arg_rules:
        for action, args in _expand(rule):
            add(action, rule.syscall, *args)
    with tempfile.TemporaryFile() as handle:
        seccomp_filter.export_bpf(handle)
        handle.seek(0)
        return handle.read()


def _expand(rule: ArgRule) -> list[tuple[int, tuple[pyseccomp.Arg, ...]]]:
    """Turn one ArgRule into (action, masked-equal comparisons) pairs."""
    deny = _action(rule.action)

    def cmp(mask: int, value: int) -> tuple[pyseccomp.Arg, ...]:
        return (pyseccomp.Arg(rule.arg, pyseccomp.MASKED_EQ, mask, value),)

    if rule.kind == "allow_if":
        return [(pyseccomp.ALLOW, cmp(LOW32, v)) for v in rule.values]
    if rule.kind == "allow_if_clear":
        bits = [1 << i for i in range(32) if rule.mask & (1 << i)]
        return [(pyseccomp.ALLOW, cmp(rule.mask, 0))] + [(deny, cmp(bit, bit)) for bit in bits]
    if rule.kind == "allow_unless":
        allowed = [(pyseccomp.ALLOW, cmp(mask, value)) for mask, value in complement_cubes(rule.values)]
        return allowed + [(deny, cmp(LOW32, v)) for v in rule.values]
    raise ProfileError(f"unknown rule kind {rule.kind}")


def complement_cubes(denied: list[int]) -> list[tuple[int, int]]:
    """(mask, value) pairs whose union is every 32-bit value not in ``denied``.

    Splits the value space bit by bit (lowest first); a half that holds no denied value
    becomes one cube. Two denied values that share most bits cost ~35 rules.
    """
    cubes: list[tuple[int, int]] = []

    def split(mask: int, value: int, remaining: list[int], bit: int) -> None:
        if not remaining:
            cubes.append((mask, value))
            return
        if bit == 32:
            return
        flag = 1 << bit
        for half in (0, flag):
            inside = [v for v in remaining if v & flag == half]
            split(mask | flag, value | half, inside, bit + 1)

    split(0, 0, [v & LOW32 for v in denied], 0)
    return cubes


def _action(text: str) -> int:
    if text == "allow":
        return pyseccomp.ALLOW
    if text == "kill":
        return pyseccomp.KILL_PROCESS
    if text.startswith("errno:"):
        name = text.split(":", 1)[1]
        number = getattr(errno, name, None)
        if not isinstance(number, int):
            raise ProfileError(f"unknown errno {name!r}")
        return pyseccomp.ERRNO(number)
    raise ProfileError(f"unknown action {text!r} (allow, kill, errno:NAME)")


def _constant(path: Path, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value in _NAMED_CONSTANTS:
        return _NAMED_CONSTANTS[value]
    raise ProfileError(f"{path}: unknown constant {value!r}")
