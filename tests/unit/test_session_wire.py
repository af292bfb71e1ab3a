"""A session request's wire forms: what session_create and session_stop accept, and what
the HTTP door passes on, checked without a worker."""

from __future__ import annotations

import pytest

from sandbox.models import Limits, SessionSpec
from worker.http_wire import exec_request, session_logs_to_json
from worker.protocol import (
    ProtocolError,
    session_id,
    session_spec_from_wire,
    session_spec_to_wire,
    stop_grace,
)


def test_a_spec_comes_back_as_it_went() -> None:
    spec = SessionSpec(image="host", profile="strict", limits=Limits(memory="1G", pids=32), ttl_s=90)
    assert session_spec_from_wire({"type": "session_create", "id": "r", **session_spec_to_wire(spec)}) == spec


@pytest.mark.parametrize(("message", "field"), [
    ({"ttl": 0}, "ttl"),
    ({"ttl": float("inf")}, "ttl"),
    ({"ttl": True}, "ttl"),
    ({"ttl": 8 * 24 * 3600}, "ttl"),
    ({"limits": {"memory": "12XB"}}, "limits.memory"),
    ({"limits": {"nonsense": 1}}, "limits"),
    ({"profile": "no such name"}, "profile"),
    ({"colour": "blue"}, "session_create"),
])
def test_a_bad_spec_names_its_field(message: dict[str, object], field: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        session_spec_from_wire(message)
    assert (refused.value.code, refused.value.field) == ("invalid_job", field)


def test_defaults_fill_an_empty_request() -> None:
    assert session_spec_from_wire({}) == SessionSpec()


@pytest.mark.parametrize("value", [-1, 301, "5", None, True])
def test_a_stop_grace_is_seconds_within_bounds(value: object) -> None:
    with pytest.raises(ProtocolError):
        stop_grace({"grace": value})
    assert stop_grace({}) == 10.0
    assert stop_grace({"grace": 0}) == 0.0


@pytest.mark.parametrize("value", ["", "job-1", 7, "s-" + "x" * 200])
def test_a_session_id_is_one_the_worker_made(value: object) -> None:
    with pytest.raises(ProtocolError) as refused:
        session_id({"session": value})
    assert refused.value.field == "session"


def test_an_exec_over_http_is_a_job_request_without_a_callback() -> None:
    assert exec_request({"id": "e", "job": {"cmd": ["true"], "stdin": "aGk="}}) == (
        "e", {"cmd": ["true"], "stdin": b"hi"})
    with pytest.raises(ProtocolError) as refused:
        exec_request({"job": {"cmd": ["true"]}, "callback_url": "http://example.com/"})
    assert refused.value.field == "callback_url"


def test_logs_carry_output_as_base64() -> None:
    assert session_logs_to_json([{"id": "e", "stdout": b"\xff", "status": "ok"}]) == [
        {"id": "e", "stdout": "/w==", "status": "ok"}]
