"""A submission's compiler options against its preset's allow-list: what a judge offers
(an optimisation level, a standard, a define) passes; anything else is refused by name,
with the field a client fixes."""

from __future__ import annotations

import pytest

from sandbox.errors import JobError
from sandbox.languages import load_preset


def test_allowed_options_pass() -> None:
    load_preset("cpp").check_options(["-O0", "-std=c++20", "-DONLINE_JUDGE", "-Wall"])


@pytest.mark.parametrize("option", ["-o", "/tmp/x", "-fplugin=evil.so", "-Wl,--script=x", "--sysroot=/", "-B/tmp"])
def test_other_options_are_refused_by_name(option: str) -> None:
    with pytest.raises(JobError) as raised:
        load_preset("cpp").check_options([option])
    assert raised.value.field == "compile_options"
    assert repr(option) in str(raised.value)


def test_a_preset_without_the_slot_takes_none() -> None:
    load_preset("python3").check_options([])
    with pytest.raises(JobError, match="takes no compiler options"):
        load_preset("python3").check_options(["-O"])


def test_options_are_strings() -> None:
    with pytest.raises(JobError):
        load_preset("cpp").check_options([3])  # type: ignore[list-item]  # as a protocol client might send
    with pytest.raises(JobError):
        load_preset("cpp").check_options(["-DA\0B"])


def test_every_preset_with_options_has_the_slot() -> None:
    from sandbox.languages import OPTIONS_SLOT, preset_names

    for name in preset_names():
        preset = load_preset(name)
        assert bool(preset.compile_options) == (OPTIONS_SLOT in preset.compile), name
