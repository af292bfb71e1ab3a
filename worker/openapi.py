"""The OpenAPI 3 document of the HTTP front door, served at ``/v1/openapi.json`` and
checked in as ``docs/openapi.json`` (``python -m worker.openapi > docs/openapi.json``
writes it; a test keeps the two equal). Written by hand beside ``worker/http.py``
rather than generated from it: the schemas say what the protocol accepts, which the
handlers leave to ``job_from_wire`` and ``judge_from_wire``.
"""

from __future__ import annotations

import json
from typing import Any

_BASE64 = {"type": "string", "contentEncoding": "base64"}
_DURATION = {"oneOf": [{"type": "string", "example": "2s"}, {"type": "number"}, {"type": "null"}]}
_SIZE = {"oneOf": [{"type": "string", "example": "256M"}, {"type": "integer"}]}
_ID = {"type": "string", "minLength": 1, "maxLength": 128}
_SESSION_ID = {"type": "string", "pattern": "^s-", "description": "A session's id, made by the worker."}
_FILE_ID = {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$",
            "description": "A file put in the cache (POST /v1/files)."}
_TREE_ID = {"type": "string", "pattern": "^tree:sha256:[0-9a-f]{64}$",
            "description": "A tree put in the cache (POST /v1/files?tree=true)."}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_ID_PARAMETER = {"name": "id", "in": "path", "required": True, "schema": _ID}
_SESSION_PARAMETER = {"name": "session", "in": "path", "required": True, "schema": _SESSION_ID}
_NO_SESSION = {"404": _error("No such session: deleted, expired or gone with its launcher (code unknown_session).")}
_WAIT_PARAMETER = {"name": "wait", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
                   "description": "Answer when it has ended, with its outcome, instead of 202 at once."}
_COMMON_ERRORS = {"401": _error("No token, or a wrong one.")}
_BODY_ERRORS = {
    "400": _error("The body is not JSON (code bad_json)."),
    "413": _error("The body is larger than the worker's --max-frame (code frame_too_large)."),
    "422": _error("Validation failed (codes invalid_job, bad_message); field names the part."),
    "503": {**_error("The queue is full or the worker is stopping (code busy)."),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
}
_NOT_FOUND = {"404": _error("No job (or judge) with this id, or it ended over --retention seconds ago.")}
_FILE_PARAMETER = {"name": "id", "in": "path", "required": True, "schema": {"oneOf": [_FILE_ID, _TREE_ID]}}
_NO_FILE = {
    "404": _error("The cache has no such file or tree: never put, evicted or deleted (code unknown_file)."),
    "422": _error("The id is not a file or tree id (code bad_message)."),
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}},
    },
    "Job": {
        "type": "object", "additionalProperties": False,
        "description": "The protocol's job (docs/protocol.md), with stdin and files[].data in base64.",
        "properties": {
            "cmd": {"type": "array", "items": {"type": "string"}},
            "limits": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "cpu_time": _DURATION, "wall_time": _DURATION, "memory": _SIZE, "pids": {"type": "integer"},
                    "output": _SIZE, "disk": _SIZE, "open_files": {"type": "integer"}, "stack": _SIZE,
                    "file_size": _SIZE, "cpus": {"oneOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}]},
                },
            },
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "stdin": {"oneOf": [_BASE64, {"type": "null"}]},
            "files": {"type": "array", "items": {
                "type": "object", "required": ["path"], "additionalProperties": False,
                "description": "Its bytes in data, or file_id naming a file put in the cache (not both).",
                "properties": {"path": {"type": "string"}, "data": _BASE64, "file_id": _FILE_ID,
                               "mode": {"type": "integer"}},
            }},
            "mounts": {"type": "array", "items": {
                "type": "object", "required": ["path"], "additionalProperties": False,
                "description": "Mounted at path (under /work or /tmp), from exactly one of: tree_id, a tree put "
                               "in the cache (read-only); bind, a host directory at or below one the worker "
                               "allows (--allow-bind; else the error bind_not_allowed), no symlink followed; "
                               "volume, a named volume made on first use and kept between jobs (a read-write "
                               "user excludes every other: volume_busy).",
                "properties": {"path": {"type": "string"}, "tree_id": _TREE_ID,
                               "bind": {"type": "string", "description": "An absolute, normal host path."},
                               "volume": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
                               "writable": {"type": ["boolean", "null"], "default": None,
                                            "description": "null: read-only for a tree or a bind, read-write "
                                                           "for a volume."},
                               "size": {"type": ["integer", "string", "null"], "default": None,
                                        "description": "A read-write volume's cap (bytes, or 512M, 1G...; "
                                                       "null: 1G): writes past it are ENOSPC inside."}},
            }},
            "image": {"type": "string", "default": "host"},
            "cwd": {"type": ["string", "null"]},
            "require_cgroups": {"type": "boolean", "default": False},
            "profile": {"type": "string", "default": "default"},
            "network": {"type": ["string", "null"], "enum": ["egress", None],
                        "description": "egress: the outside through a user-space stack; absent: the profile's mode."},
            "allow_net": {"type": "array", "items": {"type": "string"},
                          "description": "IPv4 ranges (CIDR) an egress job may reach though blocked by default."},
            "interpreter": {"type": ["array", "null"], "items": {"type": "string"},
                            "description": "The interpreter mode, for python3 FILE or python3 -c CODE: a python3 "
                                           "with these modules imported forks a sandbox of its own per job."},
        },
    },
    "JobRequest": {
        "type": "object", "required": ["job"], "additionalProperties": False,
        "properties": {
            "id": {**_ID, "description": "Chosen by the client (idempotent, as on the socket); else made up."},
            "job": _ref("Job"),
            "callback_url": {"type": "string", "format": "uri",
                             "description": "POSTed the job's document, signed, when the job ends."},
        },
    },
    "Result": {
        "type": "object",
        "description": "The result as `sandbox run --json` prints it, with stdout and stderr in base64 "
                       "as its collected files are.",
        "properties": {
            "status": {"type": "string"}, "exit_code": {"type": ["integer", "null"]},
            "signal": {"type": ["integer", "null"]}, "signal_name": {"type": ["string", "null"]},
            "stdout": _BASE64, "stderr": _BASE64,
            "stdout_truncated": {"type": "boolean"}, "stderr_truncated": {"type": "boolean"},
            "usage": {"type": "object"}, "violation": {"type": ["object", "null"]},
            "limits_not_enforced": {"type": "array", "items": {"type": "string"}},
            "warnings": {"type": "array", "items": {"type": "string"}}, "error": {"type": ["string", "null"]},
            "files": {"type": "object", "additionalProperties": _BASE64,
                      "description": "The collected files: path in the sandbox -> its bytes."},
            "file_errors": {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "Each collect path refused, with why (\"missing\", \"too_large: ...\")."},
            "file_ids": {"type": "object", "additionalProperties": {"type": "string"},
                         "description": "Files collected with cache: true: path -> file id (GET /v1/files/{id})."},
        },
    },
    "JobDocument": {
        "type": "object", "required": ["id", "state"],
        "properties": {
            "id": _ID, "state": {"enum": ["queued", "running", "finished", "cancelled", "failed"]},
            "result": {**_ref("Result"), "description": "Once finished (or cancelled after it reached a slot)."},
            "error": {"type": "object", "description": "With --http-forward, a job that produced no result "
                                                       "(state failed): its worker's invalid_job, or dead_letter."},
        },
    },
    "SessionRequest": {
        "type": "object", "additionalProperties": False,
        "description": "A session (docs/protocol.md \"Sessions\"): its limits hold for every exec together.",
        "properties": {
            "image": {"type": "string", "default": "host"},
            "profile": {"type": "string", "default": "default"},
            "limits": {"type": "object", "description": "As a job's; memory, pids, cpus and disk are the session's."},
            "ttl": {"type": "number", "default": 600, "description": "Seconds idle (no exec) before it is deleted."},
        },
    },
    "Session": {
        "type": "object", "required": ["session", "state"],
        "properties": {
            "session": _SESSION_ID, "image": {"type": "string"}, "profile": {"type": "string"},
            "state": {"enum": ["idle", "running", "paused"]}, "ttl": {"type": "number"},
            "idle_s": {"type": "number"}, "created_at": {"type": "number"}, "execs": {"type": "integer"},
            "launcher": {"type": "integer"}, "stopped": {"type": "boolean", "description": "After stop: "
                                                                                           "whether an exec ran."},
            "reference": {"type": "string", "description": "After commit: the new image's reference."},
            "image_id": {"type": "string", "description": "After commit: the new image's id."},
            "logs": {"type": "array", "description": "GET only: the recent execs, stdout and stderr ends in base64.",
                     "items": {"type": "object"}},
        },
    },
    "JudgeRequest": {
        "type": "object", "required": ["problem", "submission"], "additionalProperties": False,
        "properties": {
            "id": _ID,
            "problem": {"type": "object", "additionalProperties": {"oneOf": [
                            _BASE64,
                            {"type": "object", "required": ["file_id"], "additionalProperties": False,
                             "properties": {"file_id": _FILE_ID}}]},
                        "description": "The package: problem.toml, NAME and tests/NAME, each in base64 "
                                       "or as {\"file_id\": ID} of a file put in the cache."},
            "submission": {
                "type": "object", "required": ["lang", "source"], "additionalProperties": False,
                "properties": {
                    "lang": {"type": "string"}, "source": _BASE64,
                    "compile_options": {"type": "array", "items": {"type": "string"}},
                    "args": {"type": "array", "items": {"type": "string"}},
                    "image": {"type": "string", "description": "compile and run on this stored image (one "
                                                                "built on the language image) instead of it"},
                    "interpreter": {"type": "array", "items": {"type": "string"},
                                    "description": "run a python3 submission's tests in the interpreter mode, "
                                                   "these modules imported ahead"},
                },
            },
            "stop_on_failure": {"type": "boolean", "default": False},
            "parallel": {"type": "integer", "minimum": 1, "maximum": 256, "default": 1},
        },
    },
    "JudgeDocument": {
        "type": "object", "required": ["id", "state", "tests"],
        "properties": {
            "id": _ID, "state": {"enum": ["queued", "running", "judged", "cancelled", "failed"]},
            "tests": {"type": "array", "items": {"type": "object"}, "description": "Each test decided so far."},
            "report": {"type": "object", "description": "When judged: the JSON of `sandbox judge --json`."},
            "error": _ref("Error"),
        },
    },
    "StoredFile": {
        "type": "object", "required": ["file_id", "size"],
        "properties": {"file_id": {"oneOf": [_FILE_ID, _TREE_ID]},
                       "size": {"type": "integer", "description": "Bytes: a tree's unpacked size."}},
    },
    "FileCache": {
        "type": "object", "description": "The cache's snapshot (the protocol's stats file_cache).",
        "properties": {name: {"type": "integer"}
                       for name in ("bytes", "entries", "capacity", "uploading", "evictions")},
    },
    "Language": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "description": {"type": "string"}, "image": {"type": "string"},
                       "present": {"type": "boolean"}},
    },
}

PATHS: dict[str, Any] = {
    "/v1/health": {"get": {
        "summary": "200 while the pool runs; no token needed.", "security": [],
        "responses": {"200": _json({"type": "object"}, "Running."), "503": _json({"type": "object"}, "Stopping.")},
    }},
    "/v1/openapi.json": {"get": {"summary": "This document.", "responses": {
        "200": _json({"type": "object"}, "OpenAPI 3."), **_COMMON_ERRORS}}},
    "/v1/jobs": {"post": {
        "summary": "Submit a job.", "parameters": [_WAIT_PARAMETER],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("JobRequest")}}},
        "responses": {
            "200": _json(_ref("JobDocument"), "With wait=true: the job ended."),
            "202": _json(_ref("JobDocument"), "Accepted (Location: /v1/jobs/ID)."),
            "409": _error("The id names another job (code id_conflict)."),
            **_COMMON_ERRORS, **_BODY_ERRORS,
        },
    }},
    "/v1/jobs/batch": {"post": {
        "summary": "Submit many jobs, all or none.",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"type": "array", "minItems": 1, "items": _ref("JobRequest")}}}},
        "responses": {
            "202": _json({"type": "object", "properties": {"ids": {"type": "array", "items": _ID}}},
                         "Every job accepted, ids in order."),
            "409": _error("An id names another job (code id_conflict)."),
            **_COMMON_ERRORS, **_BODY_ERRORS,
        },
    }},
    "/v1/jobs/{id}": {
        "parameters": [_ID_PARAMETER],
        "get": {"summary": "A job's state, and its result once it ended.", "responses": {
            "200": _json(_ref("JobDocument"), "The job."), **_COMMON_ERRORS, **_NOT_FOUND}},
        "delete": {"summary": "Cancel a job (its result then says cancelled).", "responses": {
            "200": _json(_ref("JobDocument"), "Cancelled, or already ended."), **_COMMON_ERRORS, **_NOT_FOUND}},
    },
    "/v1/judge": {"post": {
        "summary": "Judge a submission against a problem package.", "parameters": [_WAIT_PARAMETER],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("JudgeRequest")}}},
        "responses": {
            "200": _json(_ref("JudgeDocument"), "With wait=true: the judge ended."),
            "202": _json(_ref("JudgeDocument"), "Started (Location: /v1/judge/ID)."),
            "409": _error("A judge with this id exists (code id_conflict)."),
            **_COMMON_ERRORS, **_BODY_ERRORS,
        },
    }},
    "/v1/judge/{id}": {
        "parameters": [_ID_PARAMETER],
        "get": {"summary": "A judge's state, the tests decided so far, and the report once judged.", "responses": {
            "200": _json(_ref("JudgeDocument"), "The judge."), **_COMMON_ERRORS, **_NOT_FOUND}},
        "delete": {"summary": "Cancel a judge.", "responses": {
            "200": _json(_ref("JudgeDocument"), "Cancelling, or already ended."), **_COMMON_ERRORS, **_NOT_FOUND}},
    },
    "/v1/judge/{id}/events": {
        "parameters": [_ID_PARAMETER],
        "get": {"summary": "Server-sent events: test_finished per test, then judged, cancelled or error.",
                "responses": {"200": {"description": "An event stream; it ends after the final event.",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              **_COMMON_ERRORS, **_NOT_FOUND}},
    },
    "/v1/files": {
        "post": {
            "summary": "Put a file (or, with tree=true, a tar to keep as a tree) in the worker's file cache.",
            "parameters": [
                {"name": "tree", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
                 "description": "The body is a tar, unpacked and kept as a tree for jobs' mounts."},
                {"name": "file_id", "in": "query", "required": False, "schema": {"oneOf": [_FILE_ID, _TREE_ID]},
                 "description": "The id the client expects: other bytes are refused (code digest_mismatch)."},
            ],
            "requestBody": {"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
            "responses": {
                "201": _json(_ref("StoredFile"), "Kept (Location: /v1/files/ID)."),
                "422": _error("A tar that is not a tree (code bad_tree), bytes of another id than file_id "
                              "(code digest_mismatch), a malformed file_id (code bad_message)."),
                "503": {**_error("The worker is stopping (code busy)."),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                "507": _error("No room: more than the cache, or the rest is leased by queued or running jobs "
                              "(code cache_full). Nothing was kept or evicted."),
                **_COMMON_ERRORS,
            },
        },
        "get": {"summary": "The file cache's snapshot.", "responses": {
            "200": _json(_ref("FileCache"), "Its counts."), **_COMMON_ERRORS}},
    },
    "/v1/files/{id}": {
        "parameters": [_FILE_PARAMETER],
        "get": {"summary": "Whether a job may name the file (or tree) now, and its size.", "responses": {
            "200": _json(_ref("StoredFile"), "It is in the cache."), **_COMMON_ERRORS, **_NO_FILE}},
        "delete": {"summary": "Delete a file (or tree): no job submitted from now on may name it.", "responses": {
            "200": _json({"type": "object", "properties": {
                "file_id": {"type": "string"},
                "removed": {"type": "boolean", "description": "false: leased jobs still read it; removed as they end."},
            }}, "Deleted."), **_COMMON_ERRORS, **_NO_FILE}},
    },
    "/v1/sessions": {
        "post": {
            "summary": "Make a session: a sandbox that lives between execs (the body may be empty).",
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("SessionRequest")}}},
            "responses": {
                "201": _json(_ref("Session"), "Made (Location: /v1/sessions/ID)."),
                "500": _error("Its sandbox did not start (code session_error)."),
                **_COMMON_ERRORS, **_BODY_ERRORS,
            },
        },
        "get": {"summary": "The worker's sessions.", "responses": {
            "200": _json({"type": "object", "properties": {"sessions": {"type": "array", "items": _ref("Session")}}},
                         "Every session."), **_COMMON_ERRORS}},
    },
    "/v1/sessions/{session}": {
        "parameters": [_SESSION_PARAMETER],
        "get": {"summary": "A session, with its recent execs.", "responses": {
            "200": _json(_ref("Session"), "The session."), **_COMMON_ERRORS, **_NO_SESSION}},
        "delete": {"summary": "End a session: its processes, files and cgroups.", "responses": {
            "200": _json(_ref("Session"), "Deleted."), **_COMMON_ERRORS, **_NO_SESSION}},
    },
    "/v1/sessions/{session}/exec": {
        "parameters": [_SESSION_PARAMETER],
        "post": {
            "summary": "Run a job in the session: a job (GET /v1/jobs/ID), its image and profile the session's.",
            "parameters": [_WAIT_PARAMETER],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["job"], "additionalProperties": False,
                "properties": {"id": _ID, "job": _ref("Job")}}}}},
            "responses": {
                "200": _json(_ref("JobDocument"), "With wait=true: the exec ended."),
                "202": _json(_ref("JobDocument"), "Accepted (Location: /v1/jobs/ID)."),
                "409": _error("The session is paused (code session_paused), or the id names another job "
                              "(code id_conflict)."),
                **_COMMON_ERRORS, **_BODY_ERRORS, **_NO_SESSION,
            },
        },
    },
    "/v1/sessions/{session}/commit": {
        "parameters": [_SESSION_PARAMETER],
        "post": {
            "summary": "Store an image session's root - its image plus what its execs changed outside /work, /tmp "
                       "and /dev/shm - as the image reference (name:tag), between execs.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["reference"], "additionalProperties": False,
                "properties": {"reference": {"type": "string", "maxLength": 512}}}}}},
            "responses": {
                "200": _json(_ref("Session"), "Stored: the listing with reference and image_id."),
                "500": _error("It could not be done (code session_error: a host-image session, an exec "
                              "running, a layer that cannot be written)."),
                **_COMMON_ERRORS, **_BODY_ERRORS, **_NO_SESSION,
            },
        },
    },
    "/v1/sessions/{session}/{action}": {
        "parameters": [_SESSION_PARAMETER, {"name": "action", "in": "path", "required": True,
                                            "schema": {"enum": ["pause", "resume", "stop"]}}],
        "post": {
            "summary": "pause (freeze: no CPU), resume, or stop (SIGTERM to the exec under way, SIGKILL after "
                       "grace seconds; body {\"grace\": 10} optional).",
            "responses": {
                "200": _json(_ref("Session"), "Done."),
                "500": _error("It could not be done (code session_error: no freezer delegated, say)."),
                **_COMMON_ERRORS, **_NO_SESSION,
            },
        },
    },
    "/v1/languages": {"get": {"summary": "The language presets, and whether their image is present.",
                              "responses": {"200": _json({"type": "array", "items": _ref("Language")}, "Presets."),
                                            **_COMMON_ERRORS}}},
    "/v1/stats": {"get": {"summary": "The pool's snapshot (the protocol's stats).",
                          "responses": {"200": _json({"type": "object"}, "Counts."), **_COMMON_ERRORS}}},
    "/metrics": {"get": {"summary": "Prometheus text format.", "responses": {
        "200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **_COMMON_ERRORS}}},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "sandbox worker", "version": "1",
             "description": "The HTTP+JSON front door of `sandbox serve --http` (docs/http.md)."},
    "components": {"schemas": SCHEMAS,
                   "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": PATHS,
}


def render() -> str:
    """The document as checked in: sorted keys, indented, a final newline."""
    return json.dumps(DOCUMENT, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
