"""The HTTP front door's pure parts: the JSON forms of jobs, judges and results, the
error statuses, the callback target check and signature, and the OpenAPI document."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest
import trio

from sandbox.models import Result, Status
from worker.callbacks import Callbacks, backoff_s, is_global, signature
from worker.http_wire import error_json, job_request, judge_to_wire, result_to_json, status_of
from worker.judging import judge_from_wire
from worker.openapi import DOCUMENT, render
from worker.protocol import ProtocolError, job_from_wire

DOCS = Path(__file__).parent.parent.parent / "docs"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_jobs_base64_fields_become_the_protocols_bytes() -> None:
    body = {"id": "x", "callback_url": "https://example.com/cb",
            "job": {"cmd": ["cat"], "stdin": b64(b"\x00\xff"), "files": [{"path": "/work/a", "data": b64(b"A")}]}}
    identifier, wire, callback = job_request(body)
    assert (identifier, callback) == ("x", "https://example.com/cb")
    job = job_from_wire(wire)
    assert job.stdin is not None and job.stdin.data == b"\x00\xff"
    assert job.files[0].content.data == b"A"


def test_cached_files_are_named_as_on_the_socket() -> None:
    file_id = "sha256:" + "a" * 64
    _, wire, _ = job_request({"job": {"cmd": ["cat"], "files": [{"path": "/work/a", "file_id": file_id}]}})
    assert job_from_wire(wire).files[0].content.file_id == file_id
    body = {"problem": {"problem.toml": b64(b"[limits]\n"), "tests/1.in": {"file_id": file_id}},
            "submission": {"lang": "python3", "source": b64(b"print(3)")}}
    assert judge_from_wire(judge_to_wire(body, "j"), "j").package["tests/1.in"] == file_id
    with pytest.raises(ProtocolError) as raised:  # data and file_id: the protocol's own refusal
        job_from_wire(job_request({"job": {"cmd": ["cat"], "files": [
            {"path": "/work/a", "file_id": file_id, "data": b64(b"A")}]}})[1])
    assert raised.value.field == "files[0]"
    with pytest.raises(ProtocolError) as raised:  # neither
        job_from_wire(job_request({"job": {"cmd": ["cat"], "files": [{"path": "/work/a"}]}})[1])
    assert raised.value.field == "files.data"


@pytest.mark.parametrize(("body", "where", "code", "field"), [
    ({"job": {"cmd": ["cat"], "stdin": "***"}}, "", "invalid_job", "stdin"),
    ({"job": {"cmd": ["cat"], "stdin": 5}}, "", "invalid_job", "stdin"),
    ({"job": {"cmd": ["cat"], "files": [{"path": "/work/a", "data": "%%"}]}}, "[2].", "invalid_job", "[2].files.data"),
    ({"job": "cat"}, "", "invalid_job", "job"),
    ({"job": {}, "id": 7}, "", "bad_message", "id"),
    ({"job": {}, "callback_url": 7}, "", "invalid_job", "callback_url"),
    ({"job": {}, "surprise": 1}, "[0].", "bad_message", "[0]"),
    ([], "", "bad_message", None),
])
def test_a_bad_job_request_names_its_field(body: object, where: str, code: str, field: str | None) -> None:
    with pytest.raises(ProtocolError) as raised:
        job_request(body, where)
    assert (raised.value.code, raised.value.field) == (code, field)


def test_a_judge_body_becomes_the_judge_message() -> None:
    body = {"problem": {"problem.toml": b64(b"[limits]\n"), "tests/1.in": b64(b"1 2\n")},
            "submission": {"lang": "python3", "source": b64(b"print(3)")}, "stop_on_failure": True}
    request = judge_from_wire(judge_to_wire(body, "j"), "j")
    assert request.package == {"problem.toml": b"[limits]\n", "tests/1.in": b"1 2\n"}
    assert (request.submission.lang, request.submission.source, request.stop_on_failure) == ("python3", b"print(3)", True)
    with pytest.raises(ProtocolError) as raised:
        judge_to_wire({**body, "problem": {"problem.toml": "not base64!"}}, "j")
    assert raised.value.field == "problem.problem.toml"
    with pytest.raises(ProtocolError):
        judge_to_wire({**body, "typo": 1}, "j")


def test_a_results_output_is_base64_and_the_rest_as_run_json_prints_it() -> None:
    result = Result(Status.OK, exit_code=0, stdout=b"\xff\n", stderr=b"e")
    data = result_to_json(result)
    assert (data["stdout"], data["stderr"]) == (b64(b"\xff\n"), b64(b"e"))
    json.dumps(data)  # plain JSON types only
    assert {key: value for key, value in data.items() if key not in ("stdout", "stderr")} == {
        key: value for key, value in result.to_json_dict().items() if key not in ("stdout", "stderr")}


@pytest.mark.parametrize(("code", "status"), [
    ("bad_json", 400), ("unauthorized", 401), ("unknown_id", 404), ("id_conflict", 409), ("frame_too_large", 413),
    ("not_found", 404), ("method_not_allowed", 405), ("invalid_job", 422), ("bad_message", 422), ("busy", 503), ("internal_error", 500), ("anything_else", 500),
    ("unknown_file", 404), ("bad_tree", 422), ("digest_mismatch", 422), ("cache_full", 507), ("cache_error", 500),
])
def test_each_error_code_has_its_status(code: str, status: int) -> None:
    error = ProtocolError(code, "m", field="f")
    assert status_of(error) == status
    assert error_json(error) == {"code": code, "message": "m", "field": "f"}


@pytest.mark.parametrize(("address", "allowed"), [
    ("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False), ("10.0.0.1", False),
    ("192.168.1.1", False), ("172.16.0.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("::1", False), ("fe80::1%eth0", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
    ("224.0.0.1", False),
])
def test_only_global_addresses_are_callback_targets(address: str, allowed: bool) -> None:
    assert is_global(address) is allowed


def _callbacks(allow_private: bool = False, secret: bytes | None = b"k") -> Callbacks:
    return Callbacks(secret, attempts=5, timeout_s=1.0, allow_private=allow_private, count=lambda *_: None)


@pytest.mark.parametrize("url", ["http://127.0.0.1/cb", "http://localhost:8080/cb", "http://10.1.2.3/",
                                 "http://[::1]/", "http://169.254.169.254/latest", "ftp://8.8.8.8/",
                                 "http:///nohost", "http://8.8.8.8:99999/", "http://x" + "y" * 3000])
def test_a_private_or_malformed_callback_target_is_refused(url: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        trio.run(_callbacks().check, url)
    assert (raised.value.code, raised.value.field) == ("invalid_job", "callback_url")


def test_callback_targets_allowed_by_option_and_refused_without_a_secret() -> None:
    trio.run(_callbacks().check, "http://8.8.8.8/cb")  # a global literal: no DNS needed
    trio.run(_callbacks(allow_private=True).check, "http://127.0.0.1:9/cb")
    with pytest.raises(ProtocolError, match="no secret"):
        trio.run(_callbacks(secret=None).check, "http://8.8.8.8/cb")


def test_the_signature_is_hmac_sha256_of_the_body_and_backoff_doubles() -> None:
    assert signature(b"key", b"{}") == "sha256=" + hmac.new(b"key", b"{}", hashlib.sha256).hexdigest()
    assert [backoff_s(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_s(50) == 30.0


def test_the_checked_in_openapi_document_is_the_served_one() -> None:
    assert (DOCS / "openapi.json").read_text() == render()
    assert DOCUMENT["openapi"].startswith("3.")
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                assert operation["responses"], (path, method)
                assert path == "/v1/health" or "401" in operation["responses"], (path, method)
