"""Seccomp policies (``seccomp_policy.py``) -> libseccomp (via pyseccomp) -> classic BPF bytes.

Compiling happens once, in the supervisor, before any fork; the sandbox's program stage
(``native/program.c``) only installs the finished bytes, so no libseccomp work and no
allocation sits between dropping privileges and exec.

Argument rules compare the low 32 bits only (mask within 0xffffffff): the kernel
truncates ``int`` arguments, so a rule on the full 64 bits can be bypassed by setting
the upper half. "Allow unless the argument is X" cannot be written as a
single masked-equal test, so it is compiled to a set of masked-equal allow rules that
together cover every 32-bit value except the denied ones.
"""

from __future__ import annotations

import dataclasses
import errno
import tempfile
from typing import Any

import pyseccomp

from sandbox.errors import ProfileError
from sandbox.init_abi import HANDOVER_FD
from sandbox.seccomp_policy import ACTIONS, EXEC_CALLS, ArgRule, SeccompPolicy

LOW32 = 0xFFFFFFFF


def compile_policy(policy: SeccompPolicy) -> bytes:
    """BPF program bytes for the native architecture.

    Kill-listed calls, foreign architectures (int 0x80, x32) and, with ``exec_mode``
    "once", execve/execveat return SECCOMP_RET_USER_NOTIF: the sandbox init holds the
    listener, names the call and ends the job (or lets the program's own exec through).
    Never RET_TRAP: a SIGSYS handler in the program could swallow it.
    """
    if not policy.listener:
        policy = _killing(policy)
    violation = pyseccomp.NOTIFY if policy.listener else pyseccomp.KILL_PROCESS
    seccomp_filter = _new_filter(_action(policy.default), violation)
    actions = dict(policy.actions)
    if policy.exec_mode == "once":
        for name in EXEC_CALLS:
            actions[name] = "notify"
    for name, action in sorted(actions.items()):
        _add(seccomp_filter, _action(policy.default), _action(action), name)
    for name, rules in sorted(policy.arg_rules.items()):
        for rule in rules:
            for rule_action, args in _expand(rule):
                _add(seccomp_filter, _action(policy.default), rule_action, name, *args)
    _allow_program_stage(seccomp_filter, policy, actions)
    return _export(seccomp_filter)


def _allow_program_stage(
    seccomp_filter: pyseccomp.SyscallFilter, policy: SeccompPolicy, actions: dict[str, str],
) -> None:
    """Let through the calls the sandbox's program stage makes between installing the
    filter and the exec (``native/program.c``), where the profile does not name them:
    sendmsg and recvmsg on HANDOVER_FD, to hand the listener over and receive the job,
    and chdir into the job's directory. After the exec that fd is closed, and a profile
    without sockets gives the program none to put there; chdir grants no access that
    open does not."""
    on_handover = pyseccomp.Arg(0, pyseccomp.MASKED_EQ, LOW32, HANDOVER_FD)
    for name, args in (("sendmsg", (on_handover,)), ("recvmsg", (on_handover,)), ("chdir", ())):
        if name not in actions and name not in policy.arg_rules:
            seccomp_filter.add_rule(pyseccomp.ALLOW, name, *args)


def _killing(policy: SeccompPolicy) -> SeccompPolicy:
    """``policy`` with its kill-listed calls killing the process outright: for a filter
    no listener watches."""
    def killing(action: str) -> str:
        return "kill_process" if action == "kill" else action

    changed = policy.copy()
    changed.actions = {name: killing(action) for name, action in policy.actions.items()}
    changed.arg_rules = {name: [dataclasses.replace(rule, action=killing(rule.action)) for rule in rules]
                         for name, rules in policy.arg_rules.items()}
    return changed


def compile_trace() -> bytes:
    """A filter that notifies every call (the tracer lets each continue and records it),
    except sendmsg, which hands the listener to the sandbox init right after install."""
    seccomp_filter = _new_filter(pyseccomp.NOTIFY, pyseccomp.NOTIFY)
    seccomp_filter.add_rule(pyseccomp.ALLOW, "sendmsg")
    return _export(seccomp_filter)


def _new_filter(default_action: int, bad_arch: int) -> pyseccomp.SyscallFilter:
    seccomp_filter = pyseccomp.SyscallFilter(default_action)
    seccomp_filter.set_attr(pyseccomp.Attr.ACT_BADARCH, bad_arch)
    seccomp_filter.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)  # binary search over syscalls
    return seccomp_filter


def _add(seccomp_filter: pyseccomp.SyscallFilter, default: int, action: int, name: str, *args: pyseccomp.Arg) -> None:
    if pyseccomp.resolve_syscall(pyseccomp.system_arch(), name) < 0:
        raise ProfileError(f"unknown syscall {name!r} for this architecture")
    if action == default and not args:
        return  # libseccomp refuses a rule that repeats the default; it is implied
    try:
        seccomp_filter.add_rule(action, name, *args)
    except OSError as exc:
        raise ProfileError(f"rule for {name!r} rejected by libseccomp: {exc.strerror}") from exc


def _export(seccomp_filter: pyseccomp.SyscallFilter) -> bytes:
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


def _action(text: Any) -> int:
    """``noop``: the call is skipped and returns 0 (the filter's errno action with 0),
    for calls a program may make but must not have reach beyond the sandbox."""
    if text == "allow":
        return int(pyseccomp.ALLOW)
    if text == "noop":
        return int(pyseccomp.ERRNO(0))
    if text in ("kill", "notify"):
        return int(pyseccomp.NOTIFY)
    if text == "kill_process":
        return int(pyseccomp.KILL_PROCESS)
    if isinstance(text, str) and text.startswith("errno:"):
        name = text.split(":", 1)[1]
        number = getattr(errno, name, None)
        if not isinstance(number, int):
            raise ProfileError(f"unknown errno {name!r}")
        return int(pyseccomp.ERRNO(number))
    raise ProfileError(f"unknown action {text!r} ({ACTIONS})")
