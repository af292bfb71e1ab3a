"""The launcher channel's messages: each one comes out of the channel as it went in, in
the frames the channel carries, whatever the chunks they arrive in."""

from __future__ import annotations

import pytest

from sandbox.models import Group, Job, Limits, Pipe, Result, SessionSpec, Status, Usage
from sandbox.warm_kind import WarmKind
from worker.launcher_channel import (
    CancelJob,
    ChannelDecoder,
    CreateSession,
    DropOffer,
    GroupResult,
    JobOutput,
    JobRejected,
    JobResult,
    JobStarted,
    LauncherReady,
    Message,
    OfferSandbox,
    OfferTaken,
    RunExec,
    RunGroup,
    RunJob,
    SessionAnswer,
    SessionControl,
    decode,
    encode,
)
from worker.protocol import encode as encode_frame
from worker.protocol import group_to_wire, job_to_wire, session_spec_to_wire

MESSAGES: list[Message] = [
    RunJob("j1", job_to_wire(Job(cmd=["true"], limits=Limits(memory="1G"))), stream=False),
    RunJob("j2", job_to_wire(Job(cmd=["cat"])), stream=True),
    RunGroup("g1", group_to_wire(Group([Job(cmd=["yes"]), Job(cmd=["head", "-1"])],
                                       [Pipe((0, "stdout"), (1, "stdin"))]))),
    OfferTaken(4242),
    DropOffer(4242),
    CancelJob("j2"),
    LauncherReady(77, cgroups=True),
    OfferSandbox(4242, WarmKind("default"), {"cpu_time": "30s"}, {"PATH": "/usr/bin"}, cgroups=True,
                 cgroup=({"version": 2, "directory": "/sys/fs/cgroup/job"}, (1 << 30, 64, None)),
                 image=("sha256:" + "ab" * 32, "/srv")),
    OfferSandbox(4243, WarmKind("strict", cpu_quota=False), {}, {}, cgroups=False),
    OfferSandbox(4244, WarmKind("default"), {}, {}, cgroups=True,
                 cgroup=({"version": 1, "dirs": {"memory": "/m"}, "swap": True, "tcp": False}, (1 << 30, 64, 1.5)),
                 counters=(1, ["user", "sys", "peak", "oom", "procs"]), baseline=(10**9, 6 * 10**8, 4 * 10**8, 1),
                 warnings=["the job ran as this user"], not_enforced=["memory"], parallelism=2),
    JobStarted("j1"),
    JobOutput("j1", "stderr", 65536, b"\x00\xffbytes"),
    JobResult("j1", Result(Status.TIME_LIMIT, exit_code=None, signal=9, signal_name="SIGKILL", stdout=b"x",
                           usage=Usage(cpu_ms=12.5, memory_peak_bytes=1 << 20), warnings=["w"])),
    GroupResult("g1", [Result(Status.OK, stdout=b"y\n"), Result(Status.SIGNALED, signal=13, signal_name="SIGPIPE")]),
    JobRejected("j1", "image not found", "image"),
    JobRejected("j1", "too long", None),
    CreateSession("s-1", session_spec_to_wire(SessionSpec(limits=Limits(memory="1G"), ttl_s=60))),
    RunExec("e1", "s-1", job_to_wire(Job(cmd=["true"])), stream=True),
    SessionControl("r1", "s-1", "stop", 2.5),
    SessionControl("r2", "s-1", "commit", reference="registry.test/app:2"),
    SessionAnswer("r1"),
    SessionAnswer("r2", "unknown_session", "no session s-9", "session", {"cgroups": ["/sys/fs/cgroup/x"]}),
    JobRejected("j1", "in use by a running job", "mounts.0.volume", "volume_busy"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_comes_back_as_it_went(message: Message) -> None:
    (back,) = ChannelDecoder().feed(encode(message))
    assert back == message and type(back) is type(message)


def test_messages_survive_any_chunking() -> None:
    stream = b"".join(encode(message) for message in MESSAGES)
    decoder = ChannelDecoder()
    received: list[Message] = []
    for start in range(0, len(stream), 7):
        received += decoder.feed(stream[start:start + 7])
    assert received == MESSAGES


def test_a_frame_no_message_makes_is_refused() -> None:
    with pytest.raises(ValueError, match="submit"):
        decode({"type": "submit", "id": "x"})
    with pytest.raises(ValueError):
        ChannelDecoder().feed(encode_frame({"id": "x"}))
