"""Files out, attacked: a job names paths to collect and lays traps at them. Each trap is
refused and reported per path, never followed, and the host is left as it was (the
harness's host state: processes, cgroups, mounts, fds, the canary tree).

The job's program is dead before anything is opened (the sandbox init kills and reaps
the rest of the job first), so a process left running cannot swap a file meanwhile.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import pytest
from workerutil import Raw

from hostile.harness import Harness
from sandbox.models import Collect, Job, Limits, Result, Status

LIMITS = Limits(wall_time="60s", memory="512M")


@dataclass(frozen=True)
class Trap:
    name: str
    script: str  # sh, run in /work; @CANARY@ is the host canary's path
    collect: list[Collect]
    files: dict[str, bytes] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=lambda: LIMITS)


PY = "python3 -c "
TRAPS = [
    Trap("symlink_to_a_host_file", "ln -s /etc/passwd /work/p", [Collect("/work/p")],
         errors={"/work/p": "not_regular: symlink"}),
    Trap("symlink_to_a_file_outside", "ln -s @CANARY@/secret.txt /work/s; ln -s ../../etc/passwd /work/r",
         [Collect("/work/s"), Collect("/work/r")],
         errors={"/work/s": "not_regular: symlink", "/work/r": "not_regular: symlink"}),
    Trap("path_through_a_symlinked_directory", "ln -s /etc /work/etc", [Collect("/work/etc/passwd"), Collect("/work/etc/")],
         errors={"/work/etc/passwd": "not_regular: symlink", "/work/etc/": "not_directory: symlink"}),
    Trap("symlinked_directory_in_a_walk", "mkdir /work/o; ln -s /etc /work/o/etc; ln -s / /work/o/root; echo k > /work/o/k",
         [Collect("/work/o/")], files={"/work/o/k": b"k\n"},
         errors={"/work/o/etc": "not_regular: symlink", "/work/o/root": "not_regular: symlink"}),
    Trap("fifo_never_blocks", "mkfifo /work/fifo; mkdir /work/d; mkfifo /work/d/fifo",
         [Collect("/work/fifo"), Collect("/work/d/")],
         errors={"/work/fifo": "not_regular: fifo", "/work/d/fifo": "not_regular: fifo"}),
    Trap("socket", PY + "\"import socket; socket.socket(socket.AF_UNIX).bind('/work/sock')\"", [Collect("/work/sock")],
         errors={"/work/sock": "not_regular: socket"}),
    # The only device a job can make: a whiteout (0:0), which the kernel lets any user
    # make for overlayfs.
    Trap("device", PY + "\"import os, stat; os.mknod('/work/dev', stat.S_IFCHR | 0o600, 0)\"", [Collect("/work/dev")],
         errors={"/work/dev": "not_regular: character device"}),
    # Refused by its size, without a byte read (a read would take hours).
    Trap("sparse_1_tib_file", "truncate -s 1T /work/big", [Collect("/work/big", max="16M")],
         errors={"/work/big": "too_large: 1099511627776 bytes over 16777216"},
         limits=Limits(wall_time="60s", file_size="2T")),
    # Dead before collection: the file is the last one renamed into place.
    Trap("background_process_replacing_the_file",
         "(while :; do echo new > /work/f.tmp; mv /work/f.tmp /work/f; done) & sleep 0.3",
         [Collect("/work/f")], files={"/work/f": b"new\n"}),
    Trap("name_not_utf8", PY + "\"open(b'/work/o/\\\\xff', 'w').close()\"", [Collect("/work/o/")],
         errors={"/work/o/\ufffd": "bad_name: not UTF-8"}),
]


def run_trap(harness: Harness, script: str, collect: list[Collect], limits: Limits) -> tuple[Result, float]:
    job = Job(cmd=["sh", "-c", "mkdir -p /work/o; " + harness.fill(script)], collect=collect, limits=limits)
    started = time.monotonic()
    result = harness.client.run(job)
    return result, time.monotonic() - started


@pytest.mark.timeout(120)
@pytest.mark.parametrize("trap", TRAPS, ids=[trap.name for trap in TRAPS])
def test_collect_trap(trap: Trap, harness: Harness, record_property) -> None:
    record_property("hostile_case", f"collect_{trap.name}")
    record_property("hostile_class", "io")
    record_property("expected", "collected" if trap.files else "refused per path")
    baseline = harness.host_state()
    result, _ = run_trap(harness, trap.script, trap.collect, trap.limits)
    record_property("got", f"{result.status.value} {sorted(result.file_errors.values())}")
    assert result.status is Status.OK, result
    assert (result.files, result.file_errors) == (trap.files, trap.errors)
    assert harness.canary.secret.encode() not in b"".join(result.files.values())
    assert harness.settle(baseline) == []


@pytest.mark.timeout(300)
def test_collect_a_hundred_thousand_files_stops_early(harness: Harness) -> None:
    # The walk counts a directory's tree up to its max_files and stops: the job's end to
    # its result takes no longer than for a few files.
    baseline = harness.host_state()
    script = PY + "\"import os\nos.mkdir('/work/many')\nfor i in range(100000): os.close(os.open(f'/work/many/{i}', os.O_CREAT))\""
    result, elapsed = run_trap(harness, script, [Collect("/work/many/", max_files=100)], LIMITS)
    assert result.status is Status.OK, result
    assert result.files == {} and result.file_errors == {"/work/many/": "too_many_files: over 100"}
    assert elapsed - result.usage.wall_ms / 1000 < 5, (elapsed, result.usage.wall_ms)
    assert harness.settle(baseline) == []


@pytest.mark.parametrize("path", ["/work/../etc/passwd", "/dev/null", "/etc/passwd", "work/x", "/proc/1/environ"])
def test_collect_paths_outside_the_jobs_files_are_invalid(harness: Harness, path: str) -> None:
    # Only the writable area, the job's own files, and never with "..": refused when
    # the job is submitted, before anything runs.
    raw = Raw(harness.worker.socket_path)
    job_id = uuid.uuid4().hex
    raw.send({"type": "submit", "id": job_id, "job": {"cmd": ["true"], "collect": [{"path": path}]}})
    reply = raw.until(lambda message: message.get("type") == "error" or message.get("event") == "finished")
    raw.sock.close()
    assert (reply["type"], reply["code"], reply["field"]) == ("error", "invalid_job", "collect.path"), reply
