"""The sans-IO protocol on its own: framing, limits, job validation, and a
property-based fuzz of the decoder and of job validation.

The fuzz tests run FUZZ_EXAMPLES cases each (300 in CI). The long run, >= 100k cases
per property: ``SANDBOX_FUZZ_EXAMPLES=100000 scripts/test tests/test_protocol.py -k fuzz
--timeout 0`` (5,000 per property took 163 s here: about an hour for 100k)."""

from __future__ import annotations

import math
import os
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.models import Blob, InputFile, Job, Limits, Result, Status, Usage
from worker.protocol import (
    FrameDecoder,
    ProtocolError,
    encode,
    job_from_wire,
    job_to_wire,
    message_type,
    result_from_wire,
    result_to_wire,
)

FUZZ_EXAMPLES = int(os.environ.get("SANDBOX_FUZZ_EXAMPLES", "300"))


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def test_round_trip_in_arbitrary_chunks():
    stream = encode({"type": "ping", "seq": 1}) + encode({"type": "stats"})
    decoder = FrameDecoder()
    got = []
    for byte in stream:
        got.extend(decoder.feed(bytes([byte])))
    assert got == [{"type": "ping", "seq": 1}, {"type": "stats"}]


@pytest.mark.parametrize("length", [2**32 - 1, 100 << 20])
def test_oversized_frame_is_refused_from_its_header(length):
    decoder = FrameDecoder(max_frame=16 << 20)
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(struct.pack(">I", length) + b"x")
    assert caught.value.code == "frame_too_large" and caught.value.fatal


def test_the_rest_of_an_oversized_frame_is_counted():
    # (so a peer can read it to its end before it closes: docs/protocol.md, Framing)
    decoder = FrameDecoder(max_frame=1000)
    assert decoder.feed_items(struct.pack(">I", 5000) + b"x" * 1200)[0].code == "frame_too_large"  # type: ignore[union-attr]
    assert decoder.oversized_rest == 5000 - 1200


def test_garbage_and_deep_nesting_are_bad_frames():
    for body in (b"\xc1\xc1\xc1", b"\x91" * 100_000 + b"\xc0"):
        with pytest.raises(ProtocolError) as caught:
            FrameDecoder().feed(struct.pack(">I", len(body)) + body)
        assert caught.value.code == "bad_frame"


def test_non_map_and_unknown_type():
    with pytest.raises(ProtocolError) as caught:
        FrameDecoder().feed(frame([1, 2, 3]))
    assert caught.value.code == "bad_message"
    with pytest.raises(ProtocolError) as caught:
        message_type({"type": "launch_missiles"})
    assert caught.value.code == "unknown_type" and not caught.value.fatal


@pytest.mark.parametrize(
    "job, field",
    [
        ({"cmd": []}, "cmd"),
        ({"cmd": "ls"}, "cmd"),
        ({"cmd": ["ls"], "limits": {"memory": -5}}, "limits.memory"),
        ({"cmd": ["ls"], "limits": {"cpu_time": "forever"}}, "limits.cpu_time"),
        ({"cmd": ["ls"], "limits": {"pids": 2**64}}, "limits.pids"),
        ({"cmd": ["ls"], "limits": {"pids": "12"}}, "limits.pids"),
        ({"cmd": ["ls"], "limits": {"cpus": math.nan}}, "limits.cpus"),
        ({"cmd": ["ls"], "limits": {"wall_time": math.inf}}, "limits.wall_time"),
        ({"cmd": ["ls"], "limits": {"bogus": 1}}, "limits"),
        ({"cmd": ["ls"], "files": [{"path": "/work/../etc/passwd", "data": b"x"}]}, "files.path"),
        ({"cmd": ["ls"], "files": [{"path": "/etc/passwd", "data": b"x"}]}, "files.path"),
        ({"cmd": ["ls"], "files": [{"data": b"x"}]}, "files.path"),
        ({"cmd": ["ls"], "image": "UPPER/Case"}, "image"),
        ({"cmd": ["ls"], "files": [{"path": "/work/a", "data": "text, not bytes"}]}, "files.data"),
        ({"cmd": ["ls"], "files": [{"path": "/work/a", "source": "/etc/shadow"}]}, "files"),
        ({"cmd": ["ls"], "stdin": "not bytes"}, "stdin"),
        ({"cmd": ["ls"], "env": {"A=B": "c"}}, "env"),
        ({"cmd": ["l\x00s"]}, "cmd"),
        ({"cmd": ["ls"], "surprise": True}, "job"),
        # more than one message can pass to the sandbox with stdin, stdout and stderr
        ({"cmd": ["ls"], "files": [{"path": f"/work/{n}", "data": b""} for n in range(251)]}, "files"),
    ],
)
def test_invalid_jobs_name_the_field(job, field):
    with pytest.raises(ProtocolError) as caught:
        job_from_wire(job)
    assert caught.value.code == "invalid_job"
    assert caught.value.field == field


def test_a_bad_message_does_not_swallow_the_messages_before_it():
    decoder = FrameDecoder()
    got = []
    try:
        got.extend(decoder.feed(encode({"type": "ping", "seq": 1}) + frame([1, 2]) + encode({"type": "ping", "seq": 2})))
    except ProtocolError as exc:
        assert exc.code == "bad_message"
    got.extend(decoder.feed(b""))
    assert [m["seq"] for m in got] == [1, 2]


def test_the_server_sees_messages_and_errors_in_stream_order():
    items = FrameDecoder().feed_items(encode({"type": "ping", "seq": 1}) + frame([1, 2]) + encode({"type": "stats"}))
    assert items[0] == {"type": "ping", "seq": 1}
    assert isinstance(items[1], ProtocolError) and items[1].code == "bad_message" and not items[1].fatal
    assert items[2] == {"type": "stats"}


def test_job_and_result_round_trip():
    job = Job(
        cmd=["python3", "-c", "print(1)"],
        limits=Limits(cpu_time="1500ms", wall_time="3s", memory="256M", cpus=0.5),
        env={"A": "1"},
        stdin=Blob(data=b"in"),
        files=[InputFile("/work/a.py", Blob(data=b"print(2)"), 0o755)],
    )
    assert job_from_wire(msgpack.unpackb(msgpack.packb(job_to_wire(job)))) == job
    result = Result(Status.TIME_LIMIT, signal=9, signal_name="SIGKILL", stdout=b"\xff", usage=Usage(cpu_ms=1.5))
    assert result_from_wire(msgpack.unpackb(msgpack.packb(result_to_wire(result)))) == result


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_decoder_only_raises_protocol_errors(data):
    decoder = FrameDecoder(max_frame=1024)
    try:
        for message in decoder.feed(data):
            assert isinstance(message, dict)
    except ProtocolError:
        pass


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "cmd": st.lists(st.text(max_size=10), max_size=3) | wire_values,
            "limits": st.dictionaries(
                st.sampled_from(["cpu_time", "wall_time", "memory", "pids", "disk", "cpus", "x"]), wire_values
            ),
            "env": wire_values,
            "files": st.lists(st.fixed_dictionaries({"path": st.text(max_size=20), "data": wire_values})),
            "stdin": wire_values,
            "cwd": wire_values,
        },
    )
)
def test_fuzz_job_validation_accepts_or_names_the_problem(data):
    try:
        job = job_from_wire(data)
    except ProtocolError as exc:
        assert exc.code == "invalid_job"
    else:
        assert isinstance(job, Job) and job.cmd


encodable_values = st.recursive(  # what msgpack can encode: integers fit in 64 bits
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=8), encodable_values, max_size=4), max_size=6), st.data())
def test_fuzz_valid_frames_survive_any_chunking(messages, data):
    """However the stream is cut into reads, the decoder returns the messages sent."""
    stream = b"".join(encode(message) for message in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got.extend(decoder.feed(stream[start:end]))
    # Compared as bytes: NaN never equals itself.
    assert [msgpack.packb(m, use_bin_type=True) for m in got] == [msgpack.packb(m, use_bin_type=True) for m in messages]
