"""What the worker and its launchers say to each other, apart from the process that runs
jobs: the trio side (slots, admission, the server) imports this, never the launcher
module, which loads the engine.

Each message is a small dataclass, and ``encode``/``decode`` are the one place that
knows how it travels: a frame of the public protocol's encoding (``protocol.encode``),
a map built here by hand - a job's path pays for no reflection. Both ends are ours, so
the map's keys may change with them; the client protocol is not this.

A job's result comes back in one frame of the channel, both output streams and the
files it collects in it: a job whose output limit would let its result outgrow that
frame is refused before it runs (by its launcher, which knows the limits its profile
gives), and a file that would is refused by path in the result (``RESULT_ROOM``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox.errors import JobError
from sandbox.models import Limits, Result
from sandbox.warm_kind import WarmKind
from worker.protocol import FrameDecoder, result_from_wire, result_to_wire
from worker.protocol import encode as encode_frame

LAUNCHER_MAX_FRAME = 1 << 30  # the worker already enforced the public limit
# What a result's output and collected files may fill: the frame, less room for the rest.
RESULT_ROOM = LAUNCHER_MAX_FRAME - (1 << 20)
# Both streams at the limit.
MAX_OUTPUT = RESULT_ROOM // 2


# worker -> launcher


@dataclass(frozen=True, slots=True)
class RunJob:
    """A job to run."""

    id: str
    job: dict[str, Any]  # its wire form (``protocol.job_to_wire``): the launcher checks it again
    stream: bool  # send its output as it comes (``JobOutput``)


@dataclass(frozen=True, slots=True)
class RunGroup:
    """Jobs to run at once, each in a sandbox of its own, wired by pipes (a launcher
    never gets one handed over: a group takes a sandbox per member)."""

    id: str
    group: dict[str, Any]  # its wire form (``protocol.group_to_wire``): the launcher checks it again


@dataclass(frozen=True, slots=True)
class OfferTaken:
    """The worker handed a job to that offered sandbox and supervises it itself
    (worker/supervision.py): the launcher may offer another of its kind, and keeps
    this one until ``DropOffer``."""

    sandbox: int


@dataclass(frozen=True, slots=True)
class DropOffer:
    """The worker is done with that offered sandbox - it died waiting, no job will take
    it, or its job is over: retire it (kill what is left, clean up)."""

    sandbox: int


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Kill the job of that id, if it still runs."""

    id: str


@dataclass(frozen=True, slots=True)
class CreateSession:
    """Make a session (sandbox/session.py) that goes by ``id`` from now on."""

    id: str
    spec: dict[str, Any]  # its wire form (``protocol.session_spec_to_wire``)


@dataclass(frozen=True, slots=True)
class RunExec:
    """Run a job in a session: answered as a ``RunJob`` is (``JobStarted``, ``JobOutput``,
    ``JobResult`` or ``JobRejected``, by the exec's id)."""

    id: str
    session: str
    job: dict[str, Any]  # its wire form: the launcher checks it again
    stream: bool


@dataclass(frozen=True, slots=True)
class SessionControl:
    """``action`` ("pause", "resume", "stop", "delete", "commit") on a session; answered
    by a ``SessionAnswer`` of this ``id`` (the request's, not the session's)."""

    id: str
    session: str
    action: str
    grace_s: float = 0.0  # "stop": from SIGTERM to SIGKILL
    reference: str = ""  # "commit": the new image's name:tag


# launcher -> worker


@dataclass(frozen=True, slots=True)
class LauncherReady:
    """Started: modules imported, filters compiled."""

    pid: int
    cgroups: bool  # it has a delegated cgroup subtree


@dataclass(frozen=True, slots=True)
class OfferSandbox:
    """A warm sandbox for the worker to hand a job to itself and supervise
    (worker/handover.py, worker/supervision.py). With it, by SCM_RIGHTS
    (``handover.OFFER_FDS`` and then its cgroup's counters): its job channel, both
    ends of its new stdout and stderr pipes, its report pipe, a pidfd of its init, and
    the counters' fds - the CPU counter first, then ``counters``' names in order."""

    sandbox: int  # its init's pid: how the launcher knows it again
    kind: WarmKind
    profile_limits: dict[str, Any]  # the profile's [limits]
    env: dict[str, str]  # the profile's environment
    cgroups: bool
    # Its cgroup, where the worker writes a job's limits before the job starts
    # (``JobCgroup.limit_files``), and the limits written there (``Limits.cgroup_values``,
    # the profile's); None without a cgroup.
    cgroup: tuple[dict[str, Any], tuple[int, int, float | None]] | None = None
    # On a stored image: the image's id (its config digest), which the job's reference
    # must still name, and the working directory its root was made with; None: the host's.
    image: tuple[str, str] | None = None
    # Its cgroup's counters (``cgroup_files.Counters``): the version and the names of
    # the fds after the CPU counter's; and their readings when its account started
    # (``Sandbox.arm``): CPU, user and system time, OOM kills. None without a cgroup.
    counters: tuple[int, list[str]] | None = None
    baseline: tuple[int, int, int, int] | None = None
    # What every Result of this launcher says (``Runner.standing_warnings``).
    warnings: list[str] = field(default_factory=list)
    not_enforced: list[str] = field(default_factory=list)
    parallelism: int = 1  # the CPUs a job may use here, before its own limit


@dataclass(frozen=True, slots=True)
class JobStarted:
    """The launcher handed the job to its sandbox."""

    id: str


@dataclass(frozen=True, slots=True)
class JobOutput:
    """A piece of the job's output, as it came."""

    id: str
    stream: str  # "stdout" or "stderr"
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class JobResult:
    id: str
    result: Result


@dataclass(frozen=True, slots=True)
class GroupResult:
    """A group's Results, one per member, in member order."""

    id: str
    results: list[Result]


@dataclass(frozen=True, slots=True)
class JobRejected:
    """The job's content was found wrong only in the launcher: the error ``code`` for its
    id (``JobError.code``: invalid_job, or what a client may want to tell apart -
    bind_not_allowed, volume_busy)."""

    id: str
    message: str
    field: str | None
    code: str = "invalid_job"


@dataclass(frozen=True, slots=True)
class SessionAnswer:
    """A ``CreateSession``'s or ``SessionControl``'s outcome: done (``code`` None, with
    what it found in ``info``), or the error the worker answers its client."""

    id: str
    code: str | None = None
    message: str = ""
    field: str | None = None
    info: dict[str, Any] | None = None


ToLauncher = RunJob | RunGroup | OfferTaken | DropOffer | CancelJob | CreateSession | RunExec | SessionControl
ToWorker = (LauncherReady | OfferSandbox | JobStarted | JobOutput | JobResult | GroupResult | JobRejected
            | SessionAnswer)
Message = ToLauncher | ToWorker


def encode(message: Message) -> bytes:
    """The frame that carries ``message``."""
    wire: dict[str, Any]
    match message:
        case RunJob():
            wire = {"type": "run", "id": message.id, "job": message.job, "stream": message.stream}
        case RunGroup():
            wire = {"type": "run_group", "id": message.id, "group": message.group}
        case OfferTaken():
            wire = {"type": "taken", "sandbox": message.sandbox}
        case DropOffer():
            wire = {"type": "drop", "sandbox": message.sandbox}
        case CancelJob():
            wire = {"type": "cancel", "id": message.id}
        case LauncherReady():
            wire = {"type": "ready", "pid": message.pid, "cgroups": message.cgroups}
        case OfferSandbox():
            kind = message.kind
            wire = {"type": "offer", "sandbox": message.sandbox, "kind": [kind.profile, kind.image, kind.cpu_quota],
                    "limits": message.profile_limits, "env": message.env, "cgroups": message.cgroups,
                    "cgroup": message.cgroup, "image": message.image, "counters": message.counters,
                    "baseline": message.baseline, "warnings": message.warnings, "not_enforced": message.not_enforced,
                    "parallelism": message.parallelism}
        case JobStarted():
            wire = {"type": "started", "id": message.id}
        case JobOutput():
            wire = {"type": "output", "id": message.id, "stream": message.stream, "offset": message.offset,
                    "data": message.data}
        case JobResult():
            wire = {"type": "result", "id": message.id, "result": result_to_wire(message.result)}
        case GroupResult():
            wire = {"type": "group_result", "id": message.id, "results": [result_to_wire(r) for r in message.results]}
        case JobRejected():
            wire = {"type": "rejected", "id": message.id, "message": message.message, "field": message.field,
                    "code": message.code}
        case CreateSession():
            wire = {"type": "session_create", "id": message.id, "spec": message.spec}
        case RunExec():
            wire = {"type": "session_exec", "id": message.id, "session": message.session, "job": message.job,
                    "stream": message.stream}
        case SessionControl():
            wire = {"type": "session_control", "id": message.id, "session": message.session,
                    "action": message.action, "grace": message.grace_s, "reference": message.reference}
        case SessionAnswer():
            wire = {"type": "session_answer", "id": message.id, "code": message.code, "message": message.message,
                    "field": message.field, "info": message.info}
    return encode_frame(wire)


def decode(wire: dict[str, Any]) -> Message:
    """The message a frame of ``encode``'s carried. Raises ValueError for one it never
    makes (the other end is ours: a bug, or not a launcher)."""
    match wire.get("type"):
        case "run":
            return RunJob(wire["id"], wire["job"], wire["stream"])
        case "run_group":
            return RunGroup(wire["id"], wire["group"])
        case "taken":
            return OfferTaken(wire["sandbox"])
        case "drop":
            return DropOffer(wire["sandbox"])
        case "cancel":
            return CancelJob(wire["id"])
        case "ready":
            return LauncherReady(wire["pid"], wire["cgroups"])
        case "offer":
            profile, image, cpu_quota = wire["kind"]
            cgroup = None
            if wire["cgroup"] is not None:
                files, written = wire["cgroup"]
                cgroup = (files, (written[0], written[1], written[2]))
            made_from = None if wire["image"] is None else (wire["image"][0], wire["image"][1])
            counters = None if wire["counters"] is None else (wire["counters"][0], wire["counters"][1])
            base = wire["baseline"]
            baseline = None if base is None else (base[0], base[1], base[2], base[3])
            return OfferSandbox(wire["sandbox"], WarmKind(profile, image, cpu_quota), wire["limits"], wire["env"],
                                wire["cgroups"], cgroup, made_from, counters, baseline,
                                wire["warnings"], wire["not_enforced"], wire["parallelism"])
        case "started":
            return JobStarted(wire["id"])
        case "output":
            return JobOutput(wire["id"], wire["stream"], wire["offset"], wire["data"])
        case "result":
            return JobResult(wire["id"], result_from_wire(wire["result"]))
        case "group_result":
            return GroupResult(wire["id"], [result_from_wire(result) for result in wire["results"]])
        case "rejected":
            return JobRejected(wire["id"], wire["message"], wire["field"], wire["code"])
        case "session_create":
            return CreateSession(wire["id"], wire["spec"])
        case "session_exec":
            return RunExec(wire["id"], wire["session"], wire["job"], wire["stream"])
        case "session_control":
            return SessionControl(wire["id"], wire["session"], wire["action"], wire["grace"], wire["reference"])
        case "session_answer":
            return SessionAnswer(wire["id"], wire["code"], wire["message"], wire["field"], wire["info"])
    raise ValueError(f"not a launcher channel message: {wire.get('type')!r}")


class ChannelDecoder:
    """The channel's bytes in, its messages out (``FrameDecoder``, then ``decode``)."""

    def __init__(self) -> None:
        self._frames = FrameDecoder(LAUNCHER_MAX_FRAME)

    def feed(self, data: bytes | bytearray) -> list[Message]:
        return [decode(wire) for wire in self._frames.feed(data)]


def check_output_limit(limits: Limits) -> None:
    """Raise the job's error (``limits.output``) for an output limit no result frame carries."""
    if limits.output_bytes > MAX_OUTPUT:
        raise JobError(f"at most {MAX_OUTPUT >> 20}M through the worker (a result carries both streams)",
                       field="limits.output")
