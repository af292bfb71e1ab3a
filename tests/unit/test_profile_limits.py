"""The limits a built-in profile gives, read without the seccomp compiler (the worker's
trio process formats language commands with them) - the same as the full load says."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.errors import ProfileError
from sandbox.profile_names import builtin_limits, builtin_profiles, profile_chain


@pytest.mark.parametrize("name", builtin_profiles())
def test_light_limits_match_the_full_load(name: str) -> None:
    from sandbox.profile import load_profile

    assert builtin_limits(name) == load_profile(name).limits


def test_the_chain_is_base_first(tmp_path: Path) -> None:
    child = tmp_path / "child.toml"
    child.write_text('extends = "compile"\n[limits]\nmemory = "1G"\n')
    names = [path.stem for path, _, _ in profile_chain(child)]
    assert names[0] == "_base" and names[-2:] == ["compile", "child"]


def test_a_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('extends = "b"\n')
    (tmp_path / "b.toml").write_text('extends = "a"\n')
    with pytest.raises(ProfileError, match="nests deeper"):
        profile_chain(tmp_path / "a.toml")
