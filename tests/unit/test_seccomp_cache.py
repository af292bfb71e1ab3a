"""The on-disk cache of compiled seccomp programs: what names a program, and that a
file not made for the key asked - tampered, cut short, another policy's, another
user's - is never used, only compiled again and replaced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cache_damage import make_group_writable, replace_with_symlink, truncate

from sandbox import seccomp_cache
from sandbox.linux import libseccomp
from sandbox.profile import load_profile
from sandbox.seccomp_policy import SeccompPolicy

ALLOW_ALL = bytes.fromhex("0600000000 00ff7f".replace(" ", ""))  # BPF_RET | BPF_K, SECCOMP_RET_ALLOW
PROGRAM = bytes(range(8)) * 12  # stands for a compiled program: only its bytes matter here


class Compiler:
    """Counts compilations; returns ``PROGRAM`` for every policy."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, policy: SeccompPolicy) -> bytes:
        self.calls += 1
        return PROGRAM


@pytest.fixture
def policy() -> SeccompPolicy:
    return load_profile("default").seccomp


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "sandbox" / "seccomp"


def cached_file(cache: Path, policy: SeccompPolicy) -> Path:
    return cache / f"{seccomp_cache.policy_key(policy)}.bpf"


def test_a_program_compiled_once_is_read_back_by_the_next_process(policy: SeccompPolicy, cache: Path) -> None:
    compiler = Compiler()
    assert seccomp_cache.cached_program(policy, compiler, cache) == PROGRAM
    assert seccomp_cache.cached_program(policy, compiler, cache) == PROGRAM
    assert compiler.calls == 1
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert [p.name for p in cache.iterdir()] == [cached_file(cache, policy).name]  # no temporary file left


def test_the_real_compiler_s_program_round_trips(policy: SeccompPolicy, cache: Path) -> None:
    from sandbox.seccomp import compile_policy

    compiled = compile_policy(policy)
    assert seccomp_cache.cached_program(policy, compile_policy, cache) == compiled
    assert seccomp_cache.cached_program(policy, Compiler(), cache) == compiled


def test_the_key_covers_every_rule_the_library_and_the_architecture(
    policy: SeccompPolicy, monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = seccomp_cache.policy_key(policy)
    assert key == seccomp_cache.policy_key(policy.copy())
    changed = [policy.copy() for _ in range(4)]
    changed[0].actions["getpid"] = "kill"
    changed[1].default = "errno:EPERM"
    changed[2].exec_mode = "any" if policy.exec_mode == "once" else "once"
    rules = next(iter(changed[3].arg_rules.values()))
    rules[0].values = [*rules[0].values, 12345]
    assert len({key, *(seccomp_cache.policy_key(p) for p in changed)}) == 5
    monkeypatch.setattr(libseccomp, "version", lambda: "9.9.9")
    assert seccomp_cache.policy_key(policy) != key
    monkeypatch.undo()
    monkeypatch.setattr(libseccomp, "native_arch", lambda: 0x40000003)
    assert seccomp_cache.policy_key(policy) != key


def tamper_program(path: Path) -> None:
    """Swap the program for one that allows everything, the header left as it was."""
    header, _, program = path.read_bytes().partition(b"\n")
    path.write_bytes(header + b"\n" + ALLOW_ALL * (len(program) // len(ALLOW_ALL)))


def put_foreign_program(path: Path) -> None:
    """A whole, well-formed file made for another key."""
    path.write_bytes(seccomp_cache.encode("0" * 64, ALLOW_ALL))


@pytest.mark.parametrize("damage", [tamper_program, put_foreign_program, truncate, make_group_writable,
                                    replace_with_symlink])
def test_a_damaged_or_foreign_file_is_never_used_and_is_replaced(
    policy: SeccompPolicy, cache: Path, damage: object,
) -> None:
    compiler = Compiler()
    seccomp_cache.cached_program(policy, compiler, cache)
    path = cached_file(cache, policy)
    damage(path)  # type: ignore[operator]
    assert seccomp_cache.cached_program(policy, compiler, cache) == PROGRAM
    assert compiler.calls == 2
    assert not path.is_symlink()
    assert seccomp_cache.decode(seccomp_cache.policy_key(policy), path.read_bytes()) == PROGRAM
    assert seccomp_cache.cached_program(policy, compiler, cache) == PROGRAM
    assert compiler.calls == 2  # the rewritten file is valid again


def test_a_directory_others_may_write_is_neither_read_nor_written(policy: SeccompPolicy, cache: Path) -> None:
    compiler = Compiler()
    seccomp_cache.cached_program(policy, compiler, cache)
    tamper_program(cached_file(cache, policy))
    cache.chmod(0o777)
    path = cached_file(cache, policy)
    before = path.read_bytes()
    assert seccomp_cache.cached_program(policy, compiler, cache) == PROGRAM
    assert compiler.calls == 2
    assert path.read_bytes() == before


def test_decode_refuses_every_malformed_header() -> None:
    key = "a" * 64
    good = seccomp_cache.encode(key, PROGRAM)
    assert seccomp_cache.decode(key, good) == PROGRAM
    header, _, program = good.partition(b"\n")
    for bad in (
        program,  # no header
        header.replace(seccomp_cache.MAGIC, b"sandbox-seccomp-0") + b"\n" + program,
        header + b" extra\n" + program,
        header + b"\n" + program + b"\0" * 8,  # longer than said
        seccomp_cache.encode(key, PROGRAM[:-1]),  # not whole instructions
        seccomp_cache.encode(key, b""),
        seccomp_cache.encode(key, ALLOW_ALL * 4097),  # more than the kernel takes
    ):
        assert seccomp_cache.decode(key, bad) is None


def test_the_cache_is_under_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert seccomp_cache.cache_dir() == tmp_path / "sandbox" / "seccomp"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert seccomp_cache.cache_dir().parent.parent.name == ".cache"


def test_a_store_past_the_limit_removes_the_oldest_programs(
    policy: SeccompPolicy, cache: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(seccomp_cache, "MAX_FILES", 3)
    policies = [policy.copy() for _ in range(5)]
    for number, each in enumerate(policies):
        each.actions["getpid"] = f"errno:{['EPERM', 'EACCES', 'EINVAL', 'ENOENT', 'EIO'][number]}"
        seccomp_cache.cached_program(each, Compiler(), cache)
        os.utime(cached_file(cache, each), ns=(number * 10**9, number * 10**9))  # distinct ages
    assert sorted(cache.iterdir()) == sorted(cached_file(cache, p) for p in policies[2:])
