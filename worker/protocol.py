"""The worker protocol, sans-IO: bytes in, messages out; messages in, bytes out.

Frames are a 4-byte big-endian length followed by one msgpack map. The length is checked
against ``max_frame`` *before* any byte of the body is buffered or unpacked, and the
unpacker runs with limits on string, binary, array and map sizes (msgpack itself refuses
nesting deeper than its fixed stack). Nothing here touches a socket, so the whole
protocol is tested with plain bytes, and the worker, the launcher and the clients share
one codec. Documented in docs/protocol.md.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from sandbox.errors import JobError
from sandbox.models import (
    DEFAULT_SESSION_TTL_S,
    DEFAULT_STOP_GRACE_S,
    LIMIT_NAMES,
    TREE_ID_PREFIX,
    Blob,
    Collect,
    Group,
    InputFile,
    Job,
    Limits,
    Mount,
    Pipe,
    Result,
    SessionSpec,
    Status,
    Usage,
    check_file_id,
    check_tree_id,
    sandbox_path,
)

VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 << 20
# What a client accepts from the worker: a result carries the job's output (up to twice
# its output limit), so anything the 4-byte header can say; the worker is the peer the
# client chose to trust with its jobs.
REPLY_MAX_FRAME = (1 << 32) - 1
MAX_ID_LEN = 128

CLIENT_TYPES = {"hello", "submit", "group", "judge", "cancel", "status", "ping", "stats", "put_file", "del_file",
                "session_create", "session_exec", "session_pause", "session_resume", "session_stop",
                "session_delete", "session_list", "session_logs", "session_commit"}
# The requests that act on one session by its id, and what each does there.
SESSION_ACTIONS = {"session_pause": "pause", "session_resume": "resume", "session_stop": "stop",
                   "session_delete": "delete", "session_logs": "logs", "session_commit": "commit"}
_JOB_KEYS = {"cmd", "limits", "env", "stdin", "files", "image", "cwd", "require_cgroups", "profile", "collect",
             "mounts", "network", "allow_net", "interpreter"}
_COLLECT_KEYS = {"path", "max", "max_files", "cache"}
_FILE_KEYS = {"path", "data", "file_id", "mode"}
_MOUNT_KEYS = {"path", "tree_id", "bind", "volume", "writable", "size"}  # (host_dir: the launcher's own, never sent)
_LIMIT_KEYS = set(LIMIT_NAMES)
_PIPE_KEYS = {"from", "to"}


class ProtocolError(Exception):
    """A typed protocol error; becomes an ``error`` reply (and, if ``fatal``, a close)."""

    def __init__(self, code: str, message: str, *, field: str | None = None, fatal: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.fatal = fatal

    def to_message(self, job_id: str | None = None) -> dict[str, Any]:
        reply: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.field:
            reply["field"] = self.field
        if job_id is not None:
            reply["id"] = job_id
        return reply


def encode(message: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: ``feed(bytes) -> list of messages``.

    Raises a fatal ProtocolError on an oversized or undecodable frame: after that the
    stream cannot be trusted to be in sync, so the caller closes the connection.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._held: list[dict[str, Any]] = []
        # After a frame_too_large: how many bytes of that frame are still to come. A peer
        # that reads them (and throws them away) before it closes lets the sender finish
        # sending and read the error, instead of having its connection reset mid-send.
        self.oversized_rest = 0

    def feed_items(self, data: bytes | bytearray) -> list[dict[str, Any] | ProtocolError]:
        """Messages and errors in stream order. A non-map frame is an error item and
        decoding goes on; an oversized or undecodable frame is a fatal error item, the
        last one: nothing after it can be trusted to be in sync."""
        self._buffer += data
        items: list[dict[str, Any] | ProtocolError] = []
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self.max_frame:
                items.append(ProtocolError(
                    "frame_too_large", f"frame of {length} bytes exceeds the limit of {self.max_frame}", fatal=True
                ))
                self.oversized_rest = max(0, HEADER.size + length - len(self._buffer))
                self._buffer.clear()
                break
            if len(self._buffer) < HEADER.size + length:
                break
            body = bytes(self._buffer[HEADER.size : HEADER.size + length])
            del self._buffer[: HEADER.size + length]
            try:
                items.append(self._unpack(body))
            except ProtocolError as exc:
                items.append(exc)
                if exc.fatal:
                    self._buffer.clear()
                    break
        return items

    def feed(self, data: bytes | bytearray) -> list[dict[str, Any]]:
        """Messages only, for peers that treat any error as the end: the first error is
        raised, and the messages that arrived with it are returned by the next call."""
        items = self.feed_items(data)
        messages = self._held + [item for item in items if not isinstance(item, ProtocolError)]
        self._held = []
        for item in items:
            if isinstance(item, ProtocolError):
                self._held = messages
                raise item
        return messages

    def _unpack(self, body: bytes) -> dict[str, Any]:
        limit = self.max_frame
        try:
            message = msgpack.unpackb(
                body,
                raw=False,
                strict_map_key=True,
                max_str_len=limit,
                max_bin_len=limit,
                max_array_len=min(limit, 1 << 20),
                max_map_len=min(limit, 1 << 16),
                max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises many unrelated types for bad input
            raise ProtocolError("bad_frame", f"undecodable msgpack: {type(exc).__name__}", fatal=True) from None
        if not isinstance(message, dict):
            raise ProtocolError("bad_message", "a message must be a map")
        return message


def message_type(message: dict[str, Any]) -> str:
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}", field="type")
    return str(kind)


def job_id(message: dict[str, Any]) -> str:
    value = message.get("id")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LEN:
        raise ProtocolError("bad_message", f"id must be a string of 1..{MAX_ID_LEN} characters", field="id")
    return value


def job_from_wire(data: Any) -> Job:
    """Build and validate a Job from its wire form. Input files and stdin travel as
    bytes only: a host path in a job would let a client read the worker's files."""
    try:
        if not isinstance(data, dict):
            raise JobError("job must be a map", field="job")
        _no_unknown_keys(data, _JOB_KEYS, "job")
        limits_data = data.get("limits", {})
        if not isinstance(limits_data, dict):
            raise JobError("limits must be a map", field="limits")
        _no_unknown_keys(limits_data, _LIMIT_KEYS, "limits")
        for key, value in limits_data.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise JobError("must be finite", field=f"limits.{key}")
        files = []
        for index, entry in enumerate(_typed(data.get("files", []), list, "files")):
            _typed(entry, dict, "files")
            _no_unknown_keys(entry, _FILE_KEYS, "files")
            files.append(
                InputFile(
                    dest=sandbox_path(entry.get("path"), field_name="files.path"),  # the wire's name for dest
                    content=_file_content(entry, index),
                    mode=entry.get("mode", 0o644),
                )
            )
        collect = []
        for entry in _typed(data.get("collect", []), list, "collect"):
            _typed(entry, dict, "collect")
            _no_unknown_keys(entry, _COLLECT_KEYS, "collect")
            collect.append(Collect(**{"path": entry.get("path"), **entry}))
        mounts = []
        for index, entry in enumerate(_typed(data.get("mounts", []), list, "mounts")):
            _typed(entry, dict, f"mounts.{index}")
            _no_unknown_keys(entry, _MOUNT_KEYS, f"mounts.{index}")
            mounts.append(Mount(path=entry.get("path"), tree_id=entry.get("tree_id"), bind=entry.get("bind"),
                                volume=entry.get("volume"), writable=entry.get("writable"), size=entry.get("size")))
        stdin = data.get("stdin")
        env = _typed(data.get("env", {}), dict, "env")
        job = Job(
            cmd=_typed(data.get("cmd"), list, "cmd"),
            limits=Limits(**limits_data),
            env=env,
            stdin=None if stdin is None else Blob(data=_typed(stdin, bytes, "stdin")),
            files=files,
            image=_typed(data.get("image", "host"), str, "image"),
            cwd=None if data.get("cwd") is None else _typed(data["cwd"], str, "cwd"),
            require_cgroups=_typed(data.get("require_cgroups", False), bool, "require_cgroups"),
            profile=_typed(data.get("profile", "default"), str, "profile"),
            collect=collect,
            mounts=mounts,
            network=None if data.get("network") is None else _typed(data["network"], str, "network"),
            allow_net=_typed(data.get("allow_net", []), list, "allow_net"),
            interpreter=None if data.get("interpreter") is None else _typed(data["interpreter"], list, "interpreter"),
        )
        return job
    except JobError as exc:
        raise ProtocolError("invalid_job", exc.message, field=exc.field) from None
    except (TypeError, OverflowError, ValueError) as exc:
        raise ProtocolError("invalid_job", str(exc)) from None


def group_from_wire(jobs: Any, pipes: Any) -> Group:
    """Build and validate a group (a ``group`` request's ``jobs`` and ``pipes``). A member
    job's error names it: ``jobs.1.limits.memory``."""
    if not isinstance(jobs, list):
        raise ProtocolError("invalid_job", "jobs must be a list of jobs", field="jobs")
    members = []
    for index, data in enumerate(jobs):
        try:
            members.append(job_from_wire(data))
        except ProtocolError as exc:
            raise ProtocolError("invalid_job", exc.message, field=f"jobs.{index}.{exc.field or 'job'}") from None
    try:
        wired = []
        for entry in _typed(pipes if pipes is not None else [], list, "pipes"):
            _typed(entry, dict, "pipes")
            _no_unknown_keys(entry, _PIPE_KEYS, "pipes")
            wired.append(Pipe.of(entry.get("from"), entry.get("to")))
        return Group(members, wired)
    except JobError as exc:
        raise ProtocolError("invalid_job", exc.message, field=exc.field) from None


def group_to_wire(group: Group) -> dict[str, Any]:
    """A group request's ``jobs`` and ``pipes``."""
    return {"jobs": [job_to_wire(job) for job in group.jobs],
            "pipes": [{"from": list(p.source), "to": list(p.target)} for p in group.pipes]}


def _file_content(entry: dict[str, Any], index: int) -> Blob:
    """An input file's bytes, or the id of a file the worker caches (``put_file``)."""
    if "file_id" in entry:
        if "data" in entry:
            raise JobError("give data or file_id, not both", field=f"files[{index}]")
        return Blob(file_id=check_file_id(entry["file_id"], f"files[{index}].file_id"))
    return Blob(data=_typed(entry.get("data"), bytes, "files.data"))


def job_to_wire(job: Job) -> dict[str, Any]:
    """The wire form of a Job whose blobs hold their bytes or name cached files (a client
    reads host files first: ``worker.client.with_file_contents``; this module does no I/O)."""

    def blob_bytes(blob: Blob) -> bytes:
        if blob.data is None:
            raise ValueError(f"{blob.path}: a host file goes on the wire as its bytes: read it first")
        return blob.data

    def file_to_wire(item: InputFile) -> dict[str, Any]:
        if item.content.file_id is not None:
            return {"path": item.dest, "file_id": item.content.file_id, "mode": item.mode}
        return {"path": item.dest, "data": blob_bytes(item.content), "mode": item.mode}

    def mount_to_wire(entry: Mount) -> dict[str, Any]:
        if entry.host_dir is not None:
            raise ValueError(f"{entry.path}: a cache's directory is mounted only by a worker's launcher, never sent")
        if entry.tree_id is not None:
            return {"path": entry.path, "tree_id": entry.tree_id}
        if entry.bind is not None:
            return {"path": entry.path, "bind": entry.bind, "writable": entry.writable}
        return {"path": entry.path, "volume": entry.volume, "writable": entry.writable, "size": entry.size}

    wire: dict[str, Any] = {
        "cmd": job.cmd,
        "limits": job.limits.given_values(),  # the rest come from the profile, on the worker
        "env": job.env,
        "stdin": None if job.stdin is None else blob_bytes(job.stdin),
        "files": [file_to_wire(f) for f in job.files],
        "image": job.image,
        "cwd": job.cwd,
        "require_cgroups": job.require_cgroups,
        "profile": job.profile,
        "collect": [collect_to_wire(entry) for entry in job.collect],
    }
    if job.mounts:  # (only then: a worker without trees refuses the key)
        wire["mounts"] = [mount_to_wire(entry) for entry in job.mounts]
    if job.network is not None:  # (the same: only then, for a worker without egress)
        wire["network"] = job.network
    if job.allow_net:
        wire["allow_net"] = job.allow_net
    if job.interpreter is not None:
        wire["interpreter"] = job.interpreter
    return wire


def collect_to_wire(entry: Collect) -> dict[str, Any]:
    wire: dict[str, Any] = {"path": entry.path, "max": entry.max}
    if entry.max_files is not None:
        wire["max_files"] = entry.max_files
    if entry.cache:
        wire["cache"] = True
    return wire


@dataclass
class PutChunk:
    """One ``put_file`` message: a piece of the file uploaded under ``upload`` (a name the
    client chose, as it chooses job ids), starting at ``offset``; the last one may name
    the ``expected`` file id (a tree id for a tree). ``tree`` on the first chunk: the
    bytes are a tar of a directory tree, to be unpacked and cached as a tree."""

    upload: str
    offset: int
    data: bytes
    last: bool
    expected: str | None
    tree: bool = False


def put_chunk(message: dict[str, Any]) -> PutChunk:
    """A ``put_file`` message, checked field by field (the upload's name as a job id is)."""
    offset = message.get("offset")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ProtocolError("bad_message", "offset must be a whole number of bytes", field="offset")
    data = message.get("data")
    if not isinstance(data, bytes):
        raise ProtocolError("bad_message", "data must be bytes", field="data")
    last = message.get("last")
    if not isinstance(last, bool):
        raise ProtocolError("bad_message", "last must be true or false", field="last")
    tree = message.get("tree", False)
    if not isinstance(tree, bool):
        raise ProtocolError("bad_message", "tree must be true or false", field="tree")
    expected = message.get("file_id")
    return PutChunk(job_id(message), offset, data, last, None if expected is None else file_id(message), tree)


def file_id(message: dict[str, Any]) -> str:
    """The ``file_id`` field of a request: a cached file's id, or a cached tree's."""
    value = message.get("file_id")
    try:
        if isinstance(value, str) and value.startswith(TREE_ID_PREFIX):
            return check_tree_id(value, "file_id")
        return check_file_id(value, "file_id")
    except JobError as exc:
        raise ProtocolError("bad_message", exc.message, field=exc.field) from None


def result_to_wire(result: Result) -> dict[str, Any]:
    data = {key: getattr(result, key) for key in result.__dataclass_fields__ if key != "usage"}
    data["status"] = result.status.value
    data["usage"] = dict(result.usage.__dict__)
    return data


def result_from_wire(data: dict[str, Any]) -> Result:
    fields = dict(data)
    fields["status"] = Status(fields["status"])
    fields["usage"] = Usage(**fields["usage"])
    return Result(**fields)


def hello_message(capabilities: list[str], max_frame: int) -> dict[str, Any]:
    return {"type": "hello", "version": VERSION, "capabilities": capabilities, "max_frame": max_frame}


def event_message(job_id: str, event: str, **extra: Any) -> dict[str, Any]:
    """A job event: accepted, started, finished (with ``result``) or cancelled."""
    return {"type": "event", "id": job_id, "event": event, **extra}


def _typed(value: Any, kind: type, field: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise JobError(f"expected {kind.__name__}", field=field)
    return value


def _no_unknown_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise JobError(f"unknown key(s) {sorted(map(str, unknown))}", field=where)


# Sessions: sandboxes that live between commands (docs/protocol.md "Sessions").

SESSION_ID_PREFIX = "s-"
_SESSION_KEYS = {"type", "id", "image", "profile", "limits", "ttl"}
MAX_STOP_GRACE_S = 300.0


@dataclass(frozen=True)
class SessionExec:
    """A ``session_exec``: a job to run in a session, queued like a submitted job (it
    takes a slot while it runs), on the launcher that holds the session."""

    session: str
    job: Job


def session_id(message: dict[str, Any]) -> str:
    value = message.get("session")
    if not isinstance(value, str) or not value.startswith(SESSION_ID_PREFIX) or not 0 < len(value) <= MAX_ID_LEN:
        raise ProtocolError("bad_message", "session must be a session's id", field="session")
    return value


def session_spec_from_wire(message: dict[str, Any]) -> SessionSpec:
    """A ``session_create``'s image, profile, limits (the session's as a whole) and idle TTL."""
    try:
        _no_unknown_keys(message, _SESSION_KEYS, "session_create")
        limits_data = _typed(message.get("limits", {}), dict, "limits")
        _no_unknown_keys(limits_data, _LIMIT_KEYS, "limits")
        ttl = message.get("ttl", DEFAULT_SESSION_TTL_S)
        if isinstance(ttl, float) and not math.isfinite(ttl):
            raise JobError("must be finite", field="ttl")
        return SessionSpec(
            image=_typed(message.get("image", "host"), str, "image"),
            profile=_typed(message.get("profile", "default"), str, "profile"),
            limits=Limits(**limits_data),
            ttl_s=ttl,
        )
    except JobError as exc:
        raise ProtocolError("invalid_job", exc.message, field=exc.field) from None
    except (TypeError, OverflowError, ValueError) as exc:
        raise ProtocolError("invalid_job", str(exc)) from None


def session_spec_to_wire(spec: SessionSpec) -> dict[str, Any]:
    return {"image": spec.image, "profile": spec.profile, "limits": spec.limits.given_values(), "ttl": spec.ttl_s}


def stop_grace(message: dict[str, Any]) -> float:
    """A ``session_stop``'s grace period: seconds from SIGTERM to SIGKILL."""
    value = message.get("grace", DEFAULT_STOP_GRACE_S)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_STOP_GRACE_S:
        raise ProtocolError("bad_message", f"grace must be 0..{MAX_STOP_GRACE_S:.0f} seconds", field="grace")
    return float(value)


def commit_reference(message: dict[str, Any]) -> str:
    """A ``session_commit``'s name:tag for the new image (checked as a reference where
    the image is stored, by the launcher)."""
    value = message.get("reference")
    if not isinstance(value, str) or not 0 < len(value) <= 512:
        raise ProtocolError("bad_message", "reference must be the new image's name:tag", field="reference")
    return value
