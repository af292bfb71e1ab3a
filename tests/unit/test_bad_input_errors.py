"""Input a user or a producer controls that used to raise an exception no caller caught
(a traceback from the CLI, or a worker ended): each is now the error its kind has."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.cli.group import load_spec
from sandbox.errors import JobError, ProfileError
from sandbox.images.errors import ImageNotFound
from sandbox.images.store import Store
from sandbox.models import Result, Status
from sandbox.profile_names import profile_chain
from worker.protocol import result_to_wire
from worker.queue_schema import QueueError, decode_outcome, decode_report, outcome_of_report, outcome_of_result


def test_a_reference_longer_than_a_file_name_is_an_image_not_found(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFound):
        Store(tmp_path).lookup("g" * 255)


@pytest.mark.parametrize("text", [
    '{"jobs": [{"cmd": ["true"], "stdin": "\\ud800"}]}',  # a lone surrogate: no UTF-8 for it
    '{"jobs": [{"cmd": ["true"], "files": [{"path": "/work/a", "data": "\\ud800"}]}]}',
    "[" * 100_000 + "]" * 100_000,  # past the JSON parser's recursion
])
def test_a_group_spec_json_cannot_carry_is_a_job_error(tmp_path: Path, text: str) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(text)
    with pytest.raises(JobError) as raised:
        load_spec(spec)
    assert raised.value.field == "spec"


@pytest.mark.parametrize("content", [b"\xff\xfe not text", b"a = " + b"[" * 3000 + b"]" * 3000])
def test_a_profile_file_that_is_no_toml_text_is_a_profile_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "mine.toml"
    path.write_bytes(content)
    with pytest.raises(ProfileError, match=r"mine\.toml"):
        profile_chain(path)


def test_a_jobs_outcome_read_as_a_judges_and_the_other_way_name_the_id() -> None:
    job = outcome_of_result("j", result_to_wire(Result(Status.OK)))
    judge = outcome_of_report("k", {"verdict": "accepted", "tests": []})
    for decode, outcome in ((decode_report, job), (decode_outcome, judge)):
        with pytest.raises(QueueError) as raised:
            decode(outcome)
        assert (raised.value.code, raised.value.field) == ("unknown_id", "id")
