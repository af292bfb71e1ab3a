"""Profiles: TOML files under profiles/ that say what a job may do by default.

A profile holds a seccomp policy, default limits, environment and a network mode, and
may ``extends = "other"``. Inheritance is by syscall: every syscall has at most one
plain disposition (allow, kill, noop, errno:NAME) and at most one set of argument rules; a
child that names a syscall anywhere replaces what its parent said about it, so
``strict`` can turn ``fork`` from allowed into EPERM with one line.

Everything is checked at load time, with the file and line of the offending text:
unknown keys, syscall names this architecture does not have, actions, errnos,
constants. A typo must never silently widen or narrow a policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.errors import ProfileError
from sandbox.linux import libseccomp
from sandbox.models import LIMIT_NAMES, Limits
from sandbox.profile_names import profile_chain, profile_path
from sandbox.seccomp_policy import NAMED_CONSTANTS, ArgRule, SeccompPolicy, check_action

NETWORK_MODES = ("none", "loopback", "egress")
# The modes whose jobs may open inet sockets (the job's own lo; and with egress, the
# user-space stack's link, egress.py).
INET_MODES = ("loopback", "egress")
_TOP_KEYS = {"extends", "description", "network", "limits", "env", "seccomp"}
_SECCOMP_KEYS = {"default", "exec", "allow", "kill", "noop", "errno", "allow_if", "allow_unless", "allow_if_clear"}
_RULE_KEYS = {"syscall", "arg", "values", "mask", "action"}
_LIMIT_KEYS = set(LIMIT_NAMES)


@dataclass
class Profile:
    """A loaded profile with its parents already merged in."""

    name: str
    path: Path
    description: str = ""
    network: str = "none"
    limits: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    seccomp: SeccompPolicy = field(default_factory=SeccompPolicy)


def load_profile(name_or_path: str) -> Profile:
    profile = _load(profile_path(name_or_path))
    _socket_rules(profile)
    return profile


def _socket_rules(profile: Profile) -> None:
    """Socket families follow the network mode unless the profile rules on socket
    itself: AF_UNIX always, AF_INET/AF_INET6 with "loopback" (the job's own lo) and
    "egress" (its lo and the stack's link)."""
    policy = profile.seccomp
    families = ["AF_UNIX"] + (["AF_INET", "AF_INET6"] if profile.network in INET_MODES else [])
    if "socket" not in policy.actions and "socket" not in policy.arg_rules:
        values = [NAMED_CONSTANTS[f] for f in families]
        policy.arg_rules["socket"] = [ArgRule(kind="allow_if", syscall="socket", arg=0, values=values)]
    if "socketpair" not in policy.actions and "socketpair" not in policy.arg_rules:
        unix = [NAMED_CONSTANTS["AF_UNIX"]]
        policy.arg_rules["socketpair"] = [ArgRule(kind="allow_if", syscall="socketpair", arg=0, values=unix)]


def _load(path: Path) -> Profile:
    """The profile at ``path`` with what it extends merged in, base first: a child
    replaces what its base says of a syscall, a limit, a variable."""
    profile: Profile | None = None
    for file, text, document in profile_chain(path):
        where = _Locator(file, text)
        where.check_keys(document, _TOP_KEYS, "the top level")
        if profile is None:
            profile = Profile(name=file.stem, path=file)
        else:
            profile = Profile(name=file.stem, path=file, description=profile.description, network=profile.network,
                              limits=dict(profile.limits), env=dict(profile.env), seccomp=profile.seccomp.copy())
        profile.description = str(document.get("description", profile.description))
        network = document.get("network", profile.network)
        if network not in NETWORK_MODES:
            raise where.error("network", f"network must be one of {NETWORK_MODES}, not {network!r}")
        profile.network = network
        limits = document.get("limits", {})
        where.check_keys(limits, _LIMIT_KEYS, "[limits]")
        profile.limits.update(limits)
        try:
            Limits(**profile.limits)
        except Exception as exc:  # JobError: a bad value
            raise where.error("[limits]", f"invalid limits: {exc}") from exc
        env = document.get("env", {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise where.error("[env]", "[env] values must be strings")
        profile.env.update(env)
        _merge_seccomp(profile.seccomp, document.get("seccomp", {}), where)
    assert profile is not None  # a chain has at least the file itself
    return profile


def disposition(policy: SeccompPolicy, name: str) -> str:
    """What the policy does with a syscall, in words (for traces and docs)."""
    if policy.exec_mode == "once" and name in ("execve", "execveat"):
        return "once"
    if name in policy.arg_rules:
        return "conditional"
    return policy.actions.get(name, policy.default)


def _merge_seccomp(policy: SeccompPolicy, table: dict[str, Any], where: _Locator) -> None:
    where.check_keys(table, _SECCOMP_KEYS, "[seccomp]")
    if "default" in table:
        policy.default = where.action(table["default"])
    if "exec" in table:
        if table["exec"] not in ("any", "once"):
            raise where.error("exec", "[seccomp] exec must be 'any' or 'once'")
        policy.exec_mode = table["exec"]
    plain: dict[str, str] = {}
    for name in table.get("allow", []):
        plain[where.syscall(name)] = "allow"
    for name in table.get("kill", []):
        plain[where.syscall(name)] = "kill"
    for name in table.get("noop", []):
        plain[where.syscall(name)] = "noop"
    for errno_name, names in table.get("errno", {}).items():
        action = where.action(f"errno:{errno_name}")
        for name in names:
            plain[where.syscall(name)] = action
    rules: dict[str, list[ArgRule]] = {}
    for kind in ("allow_if", "allow_unless", "allow_if_clear"):
        for entry in table.get(kind, []):
            where.check_keys(entry, _RULE_KEYS, f"[[seccomp.{kind}]]")
            name = where.syscall(entry.get("syscall"))
            arg = entry.get("arg")
            if not isinstance(arg, int) or not 0 <= arg <= 5:
                raise where.error(f'"{name}"', f"[[seccomp.{kind}]] for {name}: arg must be 0..5")
            rules.setdefault(name, []).append(
                ArgRule(
                    kind=kind,
                    syscall=name,
                    arg=arg,
                    values=[where.constant(v) for v in entry.get("values", [])],
                    mask=where.constant(entry.get("mask", 0)),
                    action=where.action(entry.get("action", "errno:EPERM")),
                )
            )
    for name in set(plain) | set(rules):
        policy.actions.pop(name, None)
        policy.arg_rules.pop(name, None)
    policy.actions.update(plain)
    policy.arg_rules.update(rules)


class _Locator:
    """Error messages that point at the file and line of the offending text."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def error(self, needle: str, message: str) -> ProfileError:
        return ProfileError(f"{self.path}:{self.line_of(needle)}: {message}")

    def line_of(self, needle: str) -> int:
        for number, line in enumerate(self.lines, 1):
            code = line.split("#", 1)[0]
            if needle in code:
                return number
        return 0

    def check_keys(self, table: Any, allowed: set[str], where: str) -> None:
        if not isinstance(table, dict):
            raise self.error(where, f"{where} must be a table")
        for key in table:
            if key not in allowed:
                raise ProfileError(
                    f"{self.path}:{self._key_line(key)}: unknown key {key!r} in {where} "
                    f"(known: {', '.join(sorted(allowed))})"
                )

    def _key_line(self, key: str) -> int:
        pattern = re.compile(rf"^\s*(\[+\s*)?([\w.\"-]*\.)?\"?{re.escape(key)}\"?\s*(=|\])")
        for number, line in enumerate(self.lines, 1):
            if pattern.search(line):
                return number
        return self.line_of(key)

    def syscall(self, name: Any) -> str:
        if not isinstance(name, str) or libseccomp.resolve(name) < 0:
            raise self.error(f'"{name}"', f"unknown syscall {name!r} for this architecture")
        return name

    def action(self, text: Any) -> str:
        try:
            return check_action(text)
        except ProfileError as exc:
            raise self.error(f"{text}", str(exc)) from None

    def constant(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value in NAMED_CONSTANTS:
            return NAMED_CONSTANTS[value]
        raise self.error(f"{value}", f"unknown constant {value!r}")
