"""A group is checked whole, once, in the model: each mistake names its field."""

from __future__ import annotations

import pytest

from sandbox.errors import JobError
from sandbox.models import MAX_GROUP, Blob, Group, Job, Pipe


def jobs(count: int) -> list[Job]:
    return [Job(cmd=["true"]) for _ in range(count)]


def field_of(build: object) -> str | None:
    with pytest.raises(JobError) as raised:
        build()  # type: ignore[operator]
    return raised.value.field


def test_a_well_formed_group_keeps_its_pipes() -> None:
    group = Group(jobs(2), [Pipe.of([0, "stdout"], [1, "stdin"]), Pipe.of((1, "stderr"), (0, "stdin"))])
    assert group.pipes == [Pipe((0, "stdout"), (1, "stdin")), Pipe((1, "stderr"), (0, "stdin"))]


@pytest.mark.parametrize(("source", "target", "field"), [
    ([0, "stdin"], [1, "stdin"], "pipes.from"),  # only an output stream feeds a pipe
    ([0, "stdout"], [1, "stdout"], "pipes.to"),  # and only a stdin takes one
    ([0], [1, "stdin"], "pipes.from"),
    (["0", "stdout"], [1, "stdin"], "pipes.from"),
    ([True, "stdout"], [1, "stdin"], "pipes.from"),
    ("0:stdout", [1, "stdin"], "pipes.from"),
])
def test_a_malformed_pipe_names_its_end(source: object, target: object, field: str) -> None:
    assert field_of(lambda: Pipe.of(source, target)) == field


def test_indices_must_name_members() -> None:
    assert field_of(lambda: Group(jobs(2), [Pipe.of([2, "stdout"], [0, "stdin"])])) == "pipes.from"
    assert field_of(lambda: Group(jobs(2), [Pipe.of([0, "stdout"], [-1, "stdin"])])) == "pipes.to"


def test_a_stdin_is_fed_once_and_a_stream_piped_once() -> None:
    twice_in = [Pipe.of([0, "stdout"], [2, "stdin"]), Pipe.of([1, "stdout"], [2, "stdin"])]
    assert field_of(lambda: Group(jobs(3), twice_in)) == "pipes.to"
    twice_out = [Pipe.of([0, "stdout"], [1, "stdin"]), Pipe.of([0, "stdout"], [2, "stdin"])]
    assert field_of(lambda: Group(jobs(3), twice_out)) == "pipes.from"


def test_a_piped_stdin_takes_no_data_of_its_own() -> None:
    members = [Job(cmd=["true"]), Job(cmd=["cat"], stdin=Blob(data=b"x"))]
    assert field_of(lambda: Group(members, [Pipe.of([0, "stdout"], [1, "stdin"])])) == "pipes.to"


def test_a_group_has_members_but_not_too_many() -> None:
    assert field_of(lambda: Group([], [])) == "jobs"
    assert field_of(lambda: Group(jobs(MAX_GROUP + 1), [])) == "jobs"
