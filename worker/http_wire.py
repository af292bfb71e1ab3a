"""The HTTP front door's JSON forms of the protocol's messages (docs/http.md).

JSON carries no bytes, so the fields the protocol sends as msgpack bin travel as base64
strings under the same names: a job's ``stdin`` and its files' ``data``, a judge's
package entries and submission ``source``, a result's ``stdout`` and ``stderr``. A file
put in the worker's cache before is named as on the socket - a job's ``files`` entry
with ``file_id`` instead of ``data``, a package entry ``{"file_id": ID}`` - and passes
through as it is. Nothing else changes: the decoded message goes through ``job_from_wire`` and ``judge_from_wire``
as a socket client's does, so both doors accept exactly the same jobs. Pure functions:
tested without a worker.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sandbox.models import Result
from worker.protocol import ProtocolError

# How each protocol error code is answered over HTTP (anything else: 500).
STATUS_OF_CODE = {
    "bad_json": 400,
    "unauthorized": 401,
    "bind_not_allowed": 403,
    "unknown_id": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "id_conflict": 409,
    "volume_busy": 409,
    "unknown_file": 404,
    "unknown_session": 404,
    "session_paused": 409,
    "session_error": 500,
    "frame_too_large": 413,
    "bad_message": 422,
    "invalid_job": 422,
    "bad_tree": 422,
    "digest_mismatch": 422,
    "busy": 503,
    "cache_full": 507,
    "internal_error": 500,
}
_BODY_KEYS = {"id", "job", "callback_url"}
_JUDGE_KEYS = {"id", "problem", "submission", "stop_on_failure", "parallel"}


def status_of(error: ProtocolError) -> int:
    return STATUS_OF_CODE.get(error.code, 500)


def error_json(error: ProtocolError) -> dict[str, Any]:
    """The protocol's error shape without its ``type``: {"code", "message", "field"?}."""
    reply = error.to_message()
    del reply["type"]
    return reply


def job_request(body: Any, where: str = "") -> tuple[str | None, dict[str, Any], str | None]:
    """(id or None, the job in its wire form, callback_url or None) of a POST /v1/jobs
    body; ``where`` prefixes the fields an error names (a batch's ``[3].``)."""
    if not isinstance(body, dict):
        raise ProtocolError("bad_message", "the body must be an object with a job", field=where.rstrip(".") or None)
    unknown = set(body) - _BODY_KEYS
    if unknown:
        raise ProtocolError("bad_message", f"unknown key(s) {sorted(unknown)}", field=where.rstrip(".") or None)
    identifier, callback = body.get("id"), body.get("callback_url")
    if identifier is not None and not isinstance(identifier, str):
        raise ProtocolError("bad_message", "id must be a string", field=f"{where}id")
    if callback is not None and not isinstance(callback, str):
        raise ProtocolError("invalid_job", "callback_url must be a string", field=f"{where}callback_url")
    try:
        job = job_to_bytes(body.get("job"))
    except ProtocolError as exc:
        raise ProtocolError(exc.code, exc.message, field=f"{where}{exc.field or 'job'}") from None
    return identifier, job, callback


def job_to_bytes(job: Any) -> dict[str, Any]:
    """A job of the JSON form with its base64 fields decoded (the rest is checked by
    ``job_from_wire``, which names the field). A files entry without ``data`` is left as
    it is: one naming a cached file by ``file_id``, or one ``job_from_wire`` refuses."""
    if not isinstance(job, dict):
        raise ProtocolError("invalid_job", "job must be an object", field="job")
    decoded = dict(job)
    if decoded.get("stdin") is not None:
        decoded["stdin"] = _base64(decoded["stdin"], "stdin")
    files = decoded.get("files")
    if isinstance(files, list):
        decoded["files"] = [
            {**entry, "data": _base64(entry["data"], "files.data")} if isinstance(entry, dict) and "data" in entry
            else entry
            for entry in files
        ]
    return decoded


def judge_to_wire(body: Any, judge_id: str) -> dict[str, Any]:
    """A POST /v1/judge body as the protocol's ``judge`` message (for ``judge_from_wire``)."""
    if not isinstance(body, dict):
        raise ProtocolError("bad_message", "the body must be an object with problem and submission")
    unknown = set(body) - _JUDGE_KEYS
    if unknown:
        raise ProtocolError("bad_message", f"unknown key(s) {sorted(unknown)}")
    message: dict[str, Any] = {"type": "judge", "id": judge_id, **body}
    problem = body.get("problem")
    if isinstance(problem, dict):
        message["problem"] = {  # (an entry {"file_id": ID} names a cached file: judge_from_wire checks it)
            name: data if isinstance(data, dict) else _base64(data, f"problem.{name}")
            for name, data in problem.items()}
    submission = body.get("submission")
    if isinstance(submission, dict) and "source" in submission:
        message["submission"] = {**submission, "source": _base64(submission["source"], "submission.source")}
    return message


def exec_request(body: Any) -> tuple[str | None, dict[str, Any]]:
    """(id or None, the job in its wire form) of a POST /v1/sessions/ID/exec body: a job
    request's, without a callback (its caller waits, or polls /v1/jobs/ID)."""
    identifier, job, callback = job_request(body)
    if callback is not None:
        raise ProtocolError("bad_message", "an exec takes no callback_url", field="callback_url")
    return identifier, job


def session_request(body: Any) -> dict[str, Any]:
    """A POST /v1/sessions body as the protocol's ``session_create`` (for
    ``session_spec_from_wire``, which checks its keys and names the field)."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ProtocolError("bad_message", "the body must be an object: image, profile, limits, ttl")
    return dict(body)


def session_logs_to_json(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A session's recent execs with their output's ends in base64, as a result's."""
    return [{key: base64.b64encode(value).decode() if isinstance(value, bytes) else value
             for key, value in entry.items()} for entry in logs]


def result_to_json(result: Result) -> dict[str, Any]:
    """A Result as ``sandbox run --json`` prints it (collected files in base64), but with
    ``stdout`` and ``stderr`` in base64 too: a program's output need not be text."""
    data = result.to_json_dict()
    data["stdout"] = base64.b64encode(result.stdout).decode()
    data["stderr"] = base64.b64encode(result.stderr).decode()
    return data


def _base64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError("invalid_job", "expected a base64 string", field=field)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_job", "not valid base64", field=field) from None
