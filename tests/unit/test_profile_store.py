"""The on-disk store of built-in profiles as loaded, with their programs: an entry is
used only while it is exactly what loading the profile would give - every file it was
made from unchanged, the same library, architecture and Python - and a damaged,
altered or foreign one is never used, only loaded again and replaced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cache_damage import make_group_writable, replace_with_symlink, truncate

from sandbox import profile_store
from sandbox.linux import libseccomp
from sandbox.profile import Profile, load_profile
from sandbox.profile_cache import ProfileCache

PROGRAM = bytes(range(8)) * 12  # stands for a compiled program: only its bytes matter here


class Loader:
    """Counts loads; the real default profile (loaded once, before a test changes what
    loading depends on) with ``PROGRAM``."""

    def __init__(self) -> None:
        self.calls = 0
        self.profile = load_profile("default")

    def __call__(self, name: str) -> tuple[Profile, bytes]:
        assert name == "default"
        self.calls += 1
        return self.profile, PROGRAM


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "sandbox" / "seccomp"


def test_a_profile_loaded_once_is_read_back_by_the_next_process(store: Path) -> None:
    loader = Loader()
    first = profile_store.stored_profile("default", loader, store)
    assert profile_store.stored_profile("default", loader, store) == first == (load_profile("default"), PROGRAM)
    assert loader.calls == 1
    assert [p.name for p in store.iterdir()] == ["profile-default.json"]  # no temporary file left


def test_the_profile_cache_gives_the_stored_profile_and_the_real_program(
    store: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(store.parent.parent))
    fresh = ProfileCache().get("strict")
    assert profile_store.entry_path(store, "strict").is_file()
    stored = ProfileCache().get("strict")
    assert (stored.profile, stored.bpf) == (fresh.profile, fresh.bpf) == (load_profile("strict"), fresh.bpf)


def test_an_edited_source_is_loaded_again(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "compiler.py"
    source.write_text("RULES = 1\n")
    monkeypatch.setattr(profile_store, "CODE", (*profile_store.CODE, source))
    loader = Loader()
    profile_store.stored_profile("default", loader, store)
    source.write_text("RULES = 2\n")  # same length: only the text tells
    profile_store.stored_profile("default", loader, store)
    source.unlink()
    profile_store.stored_profile("default", loader, store)
    assert loader.calls == 3


def test_another_library_or_architecture_is_loaded_again(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loader = Loader()
    profile_store.stored_profile("default", loader, store)
    monkeypatch.setattr(libseccomp, "version", lambda: "9.9.9")
    profile_store.stored_profile("default", loader, store)
    monkeypatch.undo()
    monkeypatch.setattr(libseccomp, "native_arch", lambda: 0x40000003)
    profile_store.stored_profile("default", loader, store)
    assert loader.calls == 3


def widen_the_policy(path: Path) -> None:
    """Every call allowed, the header left as it was."""
    path.write_bytes(path.read_bytes().replace(b'"default": "errno:ENOSYS"', b'"default": "allow        "'))


def flip_a_program_byte(path: Path) -> None:
    data = path.read_bytes()
    at = data.index(b'"program": "') + len(b'"program": "')
    path.write_bytes(data[:at] + (b"1" if data[at:at + 1] != b"1" else b"2") + data[at + 1:])


@pytest.mark.parametrize("damage", [widen_the_policy, flip_a_program_byte, truncate, make_group_writable,
                                    replace_with_symlink])
def test_a_damaged_or_foreign_entry_is_never_used_and_is_replaced(store: Path, damage: object) -> None:
    loader = Loader()
    profile_store.stored_profile("default", loader, store)
    path = profile_store.entry_path(store, "default")
    before = path.read_bytes()
    damage(path)  # type: ignore[operator]
    assert path.read_bytes() != before or os.stat(path).st_mode & 0o020 or path.is_symlink()
    assert profile_store.stored_profile("default", loader, store) == (load_profile("default"), PROGRAM)
    assert loader.calls == 2
    assert not path.is_symlink()
    assert profile_store.decode(path.read_bytes()) == (load_profile("default"), PROGRAM)
