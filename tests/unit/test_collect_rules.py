"""Files out without a sandbox: the collect entry's validation, its wire form, the CLI's
--collect, how the supervisor reads what the init hands it (the init's messages made
here, with real fds), and --collect-to's writing beneath a directory."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import pytest

from sandbox.cli.collected import write_beneath
from sandbox.cli.job_flags import add_job_arguments, collect_from_args
from sandbox.collect import read_capped, receive
from sandbox.errors import JobError
from sandbox.models import MAX_COLLECT, Collect, Job, Result, Status
from worker.protocol import ProtocolError, job_from_wire, job_to_wire, result_from_wire, result_to_wire


@pytest.mark.parametrize(("entry", "field"), [
    ({"path": "/work/../etc/passwd"}, "collect.path"),
    ({"path": "/etc/passwd"}, "collect.path"),
    ({"path": "/dev/null"}, "collect.path"),
    ({"path": "work/x"}, "collect.path"),
    ({"path": "/work/x\0"}, "collect.path"),
    ({"path": 7}, "collect.path"),
    ({"path": "/work/x", "max": "12XB"}, "collect.max"),
    ({"path": "/work/x", "max": True}, "collect.max"),
    ({"path": "/work/x", "max_files": 5}, "collect.max_files"),
    ({"path": "/work/d/", "max_files": 0}, "collect.max_files"),
    ({"path": "/work/d/", "max_files": 10**9}, "collect.max_files"),
])
def test_an_entry_is_validated_once_naming_its_field(entry: dict[str, object], field: str) -> None:
    with pytest.raises(JobError) as caught:
        Collect(**entry)  # type: ignore[arg-type]
    assert caught.value.field == field
    with pytest.raises(ProtocolError) as refused:
        job_from_wire({"cmd": ["true"], "collect": [entry]})
    assert (refused.value.code, refused.value.field) == ("invalid_job", field)


def test_an_entry_normalised() -> None:
    directory = Collect("/work//out/./", max="1K", max_files=7)
    assert (directory.path, directory.directory, directory.max_bytes, directory.max_entries) == ("/work/out/", True,
                                                                                                  1024, 7)
    assert Collect("/work/").path == "/work/" and Collect("/tmp/").max_entries == Collect.DEFAULT_MAX_FILES
    file = Collect("/tmp/a")
    assert (file.directory, file.max_bytes, file.max_entries) == (False, 64 << 20, 0)
    with pytest.raises(JobError):
        Collect("/work")  # the area itself only as a directory


def test_a_job_names_at_most_so_many_paths() -> None:
    with pytest.raises(JobError) as caught:
        Job(cmd=["true"], collect=[Collect(f"/work/{i}") for i in range(MAX_COLLECT + 1)])
    assert caught.value.field == "collect"
    with pytest.raises(ProtocolError) as unknown:
        job_from_wire({"cmd": ["true"], "collect": [{"path": "/work/a", "keep": True}]})
    assert unknown.value.field == "collect"
    with pytest.raises(ProtocolError) as not_a_flag:
        job_from_wire({"cmd": ["true"], "collect": [{"path": "/work/a", "cache": "yes"}]})
    assert not_a_flag.value.field == "collect.cache"


def test_the_wire_round_trip() -> None:
    job = Job(cmd=["true"], collect=[Collect("/work/a", max="1M"), Collect("/work/d/", max_files=3, cache=True)])
    wire = job_to_wire(job)
    assert wire["collect"] == [{"path": "/work/a", "max": 1 << 20},
                               {"path": "/work/d/", "max": 64 << 20, "max_files": 3, "cache": True}]
    assert job_from_wire(wire) == job
    result = Result(Status.OK, files={"/work/a": b"\0\xff"}, file_errors={"/work/b": "missing"},
                    file_ids={"/work/d/x": "sha256:" + "0" * 64})
    assert result_from_wire(result_to_wire(result)) == result
    assert result.to_json_dict()["files"] == {"/work/a": "AP8="}


def test_the_collect_flag() -> None:
    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    args = parser.parse_args(["--collect", "/work/a", "--collect", "/work/out/:16M", "--collect", "/work/a:b/c", "--",
                              "true"])
    assert collect_from_args(args) == [Collect("/work/a"), Collect("/work/out/", max="16M"), Collect("/work/a:b/c")]


def write(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_a_file_is_judged_by_its_size_before_it_is_read(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as handle:
        handle.truncate(1 << 40)
    fd = os.open(sparse, os.O_RDONLY)
    try:
        assert read_capped(fd, 1 << 20, None) == (None, f"too_large: {1 << 40} bytes over {1 << 20}")
        assert read_capped(fd, 1 << 41, 100)[1] == f"too_large: {1 << 40} bytes over the 100 left in the result's frame"
    finally:
        os.close(fd)
    fd = write(tmp_path / "small", b"abc")
    try:
        assert read_capped(fd, 3, 3) == (b"abc", "")
    finally:
        os.close(fd)


def test_a_file_that_grows_while_read_is_changed(tmp_path: Path) -> None:
    # A FIFO-like trick by a file system: more bytes than its size said. Made here by
    # appending through a second fd between the size and the read (a pread hook).
    path = tmp_path / "grows"
    fd = write(path, b"abc")
    original = os.pread

    def growing(target: int, length: int, offset: int) -> bytes:
        with open(path, "ab") as handle:
            handle.write(b"more")
        return original(target, length, offset)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "pread", growing)
            content, reason = read_capped(fd, 100, None)
    finally:
        os.close(fd)
    assert content is None and reason.startswith("changed: 3 bytes when opened, 4 read")


def init_messages(channel: socket.socket, messages: list[tuple[list[bytes], list[int]]]) -> None:
    """What native/collect.c sends: NUL-terminated records, an fd per "f" record."""
    for fields, fds in messages:
        socket.send_fds(channel, [b"".join(item + b"\0" for item in fields)], fds)


def test_receive_builds_files_and_errors_within_the_room(tmp_path: Path) -> None:
    entries = [Collect("/work/a"), Collect("/work/d/", max=5), Collect("/work/b")]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = [write(tmp_path / name, data) for name, data in (("a", b"aaaa"), ("x", b"xxx"), ("y", b"yyy"), ("b", b"b" * 10))]
    with ours, theirs:
        init_messages(theirs, [
            ([b"f", b"0", b"/work/a", b"f", b"1", b"/work/d/x", b"f", b"1", b"/work/d/y"], fds[:3]),
            ([b"e", b"1", b"/work/d/l", b"not_regular: symlink", b"f", b"2", b"/work/b"], fds[3:]),
            ([b"d"], []),
        ])
        for fd in fds:
            os.close(fd)
        collected = receive(ours, entries, room=4 + 7 + 64 + 3 + 9 + 64 + 5, timeout_s=5)
    assert collected.files == {"/work/a": b"aaaa", "/work/d/x": b"xxx"}
    assert collected.errors == {"/work/d/y": "too_large: 3 bytes over 2", "/work/d/l": "not_regular: symlink",
                                "/work/b": "too_large: 10 bytes over the 5 left in the result's frame"}


def test_receive_from_an_init_that_died_refuses_what_it_did_not_answer() -> None:
    entries = [Collect("/work/a"), Collect("/work/b")]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        init_messages(theirs, [([b"e", b"0", b"/work/a", b"missing"], [])])
        theirs.close()
        collected = receive(ours, entries, room=None, timeout_s=5)
    assert collected.files == {}
    assert collected.errors == {"/work/a": "missing",
                                "/work/b": "not_collected: the sandbox ended before it collected this path"}


def test_collect_to_writes_beneath_and_never_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    outside = tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_beneath(fd, "/work/out/sub/x", b"x")
        assert (target / "work/out/sub/x").read_bytes() == b"x"
        (target / "work" / "link").symlink_to(outside)
        (target / "work" / "file-link").symlink_to(outside / "f")
        for name in ("/work/link/x", "/work/file-link"):
            with pytest.raises(OSError):
                write_beneath(fd, name, b"x")
        for name in ("/work/../x", "/work/./x", "/work//x", "/work/out/"):
            with pytest.raises(ValueError):
                write_beneath(fd, name, b"x")
        os.mkfifo(target / "work" / "fifo")
        with pytest.raises(OSError):
            write_beneath(fd, "/work/fifo", b"x")
    finally:
        os.close(fd)
    assert list(outside.iterdir()) == []
