"""Limits as every caller builds them: text, numbers and the no-limit words in, typed
values in canonical units out; each limit's error names it; and what the caller gave is
remembered, so that a profile's [limits] fill in only the rest (``over``)."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.errors import JobError
from sandbox.models import LIMIT_NAMES, Limits


def test_text_and_numbers_are_stored_in_canonical_units() -> None:
    limits = Limits(memory="256M", cpu_time="2s", wall_time=5, cpus=1.5, output=4096, disk="1G", stack="512K",
                    file_size="1.5M", pids=16, open_files=32)
    assert (limits.memory_bytes, limits.cpu_time_ms, limits.wall_time_ms, limits.cpus) == (256 << 20, 2000, 5000, 1.5)
    assert (limits.output_bytes, limits.disk_bytes, limits.stack_bytes) == (4096, 1 << 30, 512 << 10)
    assert (limits.file_size_bytes, limits.pids, limits.open_files) == (3 << 19, 16, 32)
    assert Limits(cpu_time="1m30s", wall_time="250ms", cpus="0.5").cpu_time_ms == 90_000
    assert Limits(cpu_time=0.25).cpu_time_ms == 250


def test_the_defaults() -> None:
    limits = Limits()
    assert limits == Limits(cpu_time="10s", wall_time="30s", memory="512M", pids=64, output="64M", disk="64M",
                            open_files=256, stack="8M", file_size="64M", cpus=None)
    assert (limits.cpu_time_ms, limits.memory_bytes, limits.cpus) == (10_000, 512 << 20, None)


@pytest.mark.parametrize("word", [None, "none", "unlimited", " Unlimited "])
def test_cpu_time_and_cpus_may_be_no_limit(word: str | None) -> None:
    limits = Limits(cpu_time=word, cpus=word)
    assert (limits.cpu_time_ms, limits.cpus) == (None, None)
    assert limits.given == {"cpu_time", "cpus"}


@pytest.mark.parametrize(("name", "value"), [
    ("memory", -5), ("memory", "lots"), ("memory", True), ("wall_time", "none"), ("cpu_time", "forever"),
    ("wall_time", float("inf")), ("output", [1]), ("disk", 0), ("stack", "1X"), ("file_size", None),
    ("pids", "12"), ("pids", 0), ("open_files", 3), ("cpus", float("nan")), ("cpus", "half"), ("cpus", 2000),
])
def test_each_error_names_its_limit(name: str, value: Any) -> None:
    with pytest.raises(JobError) as caught:
        Limits(**{name: value})
    assert caught.value.field == f"limits.{name}"


def test_the_first_wrong_limit_in_check_order_is_the_error() -> None:
    with pytest.raises(JobError) as caught:
        Limits(cpus="half", pids=0, memory="lots")
    assert caught.value.field == "limits.memory"


def test_an_unknown_limit_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="memroy"):
        Limits(memroy="1G")  # type: ignore[call-arg]


def test_limits_are_frozen_and_compare_by_value() -> None:
    limits = Limits(memory="1G")
    with pytest.raises(AttributeError):
        limits.memory_bytes = 1  # type: ignore[misc]
    assert limits == Limits(memory=1 << 30) and hash(limits) == hash(Limits(memory="1024M"))
    assert limits != Limits(memory="2G")
    assert "memory_bytes=1073741824" in repr(limits)


def test_only_what_the_caller_named_is_given() -> None:
    assert Limits().given == frozenset()
    assert Limits(cpu_time="10s", pids=64).given == {"cpu_time", "pids"}  # the defaults' values, but given


def test_given_values_build_the_same_limits_back() -> None:
    limits = Limits(cpu_time="1.5s", wall_time=3, memory="256M", cpus="0.5", stack="1M")
    values = limits.given_values()
    assert values == {"cpu_time": "1500ms", "cpus": 0.5, "memory": 256 << 20, "stack": 1 << 20, "wall_time": "3000ms"}
    assert list(values) == sorted(values)
    again = Limits(**values)
    assert again == limits and again.given == limits.given
    assert Limits(cpu_time=None).given_values() == {"cpu_time": None}


def test_over_takes_the_profile_for_what_was_not_given() -> None:
    profile = {"cpu_time": "30s", "memory": "1G", "pids": 128}
    limits = Limits(memory="256M", cpu_time=None).over(profile)
    assert (limits.memory_bytes, limits.cpu_time_ms, limits.pids, limits.wall_time_ms) == (256 << 20, None, 128, 30_000)
    assert limits.given == {"cpu_time", "memory", "pids"}
    assert Limits().over(profile) == Limits(cpu_time="30s", memory="1G", pids=128)
    mine = Limits(memory="256M")
    assert mine.over({}) is mine


def test_every_limit_name_is_a_constructor_argument() -> None:
    assert LIMIT_NAMES == ("cpu_time", "wall_time", "memory", "pids", "output", "disk", "open_files", "stack",
                           "file_size", "cpus")
    defaults = Limits()
    every = Limits(**_all_given(defaults))
    assert every.given == set(LIMIT_NAMES) and every == defaults


def _all_given(limits: Limits) -> dict[str, Any]:
    return {"cpu_time": f"{limits.cpu_time_ms}ms", "wall_time": f"{limits.wall_time_ms}ms",
            "memory": limits.memory_bytes, "pids": limits.pids, "output": limits.output_bytes,
            "disk": limits.disk_bytes, "open_files": limits.open_files, "stack": limits.stack_bytes,
            "file_size": limits.file_size_bytes, "cpus": limits.cpus}
