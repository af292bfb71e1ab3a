"""Groups: several jobs at once, each in a sandbox of its own, wired by pipes - each
member's own verdict and usage, EOF and SIGPIPE when a peer is gone, a deadlock ended
by the wall limits, a cancel that reaches every member."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from workerutil import SANDBOX_CLI

from sandbox.errors import JobError
from sandbox.models import Blob, Job, Limits, Pipe, Result, Status
from sandbox.runner import Runner
from worker.async_client import AsyncClient
from worker.client import Client

pytestmark = pytest.mark.cgroup

BOTH_WAYS = [Pipe.of([0, "stdout"], [1, "stdin"]), Pipe.of([1, "stdout"], [0, "stdin"])]


def job(script: str, **limits: object) -> Job:
    return Job(cmd=["sh", "-c", script], limits=Limits(**limits), require_cgroups=True)  # type: ignore[arg-type]


@pytest.fixture
def run_group(runner: Runner) -> Iterator[object]:
    def _run(jobs: list[Job], pipes: list[Pipe], **kwargs: object) -> list[Result]:
        try:
            return runner.run_group(jobs, pipes, **kwargs)  # type: ignore[arg-type]
        finally:
            runner.tidy()

    yield _run


def test_a_pipe_carries_one_members_stdout_to_the_next_ones_stdin(run_group) -> None:
    first, second = run_group([job("echo hello; echo to-stderr >&2"), job("tr a-z A-Z")],
                              [Pipe.of([0, "stdout"], [1, "stdin"])])
    assert (first.status, second.status) == (Status.OK, Status.OK)
    assert second.stdout == b"HELLO\n"
    assert first.stdout == b""  # piped, not captured
    assert first.stderr == b"to-stderr\n"  # not piped: captured as usual


def test_two_members_talk_both_ways(run_group) -> None:
    asker = job('echo 21; read answer; echo "got $answer" >&2; [ "$answer" = 42 ]')
    doubler = job('read n; echo $((n * 2))')
    results = run_group([asker, doubler], BOTH_WAYS)
    assert [r.status for r in results] == [Status.OK, Status.OK], results
    assert results[0].stderr == b"got 42\n"
    assert all(r.usage.wall_ms > 0 for r in results)


def test_one_members_limit_kill_leaves_the_others_result_and_usage(run_group) -> None:
    # (a shell: its start is a sliver of the limit, where an emulated guest's python3 may
    # take all of it before it prints)
    spinner = Job(cmd=["sh", "-c", "echo start; while :; do :; done"], limits=Limits(cpu_time="300ms"),
                  require_cgroups=True)
    reader = job("cat; echo reader-done >&2")  # ends at EOF, when the spinner is killed
    spun, read = run_group([spinner, reader], [Pipe.of([0, "stdout"], [1, "stdin"])])
    assert spun.status is Status.TIME_LIMIT
    assert spun.usage.cpu_ms >= 300
    assert read.status is Status.OK
    assert (read.stdout, read.stderr) == (b"start\n", b"reader-done\n")
    assert read.usage.cpu_ms < spun.usage.cpu_ms  # each member has its own account


def test_a_writer_whose_reader_is_gone_gets_sigpipe(run_group) -> None:
    writer, reader = run_group([job("exec yes"), job("exec head -c 10")], [Pipe.of([0, "stdout"], [1, "stdin"])])
    assert reader.status is Status.OK and reader.stdout == b"y\n" * 5
    assert writer.status is Status.SIGNALED and writer.signal == signal.SIGPIPE


def test_members_that_both_wait_to_read_end_at_the_first_wall_limit(run_group) -> None:
    """A deadlock: each waits for the other. The member whose wall limit comes first is
    killed; its end of the pipe closes, and the other reads EOF and ends by itself."""
    first, second = run_group([job("read x", wall_time="400ms"), job("read y", wall_time="20s")], BOTH_WAYS)
    assert first.status is Status.WALL_TIME_LIMIT and first.usage.wall_ms >= 400
    # `read` at EOF, long before its own limit: the first's kill ended it. (Its wall clock
    # starts when it is handed over, after the first's: no lower bound holds exactly.)
    assert (second.status, second.exit_code) == (Status.RUNTIME_ERROR, 1)
    assert second.usage.wall_ms < 20_000


def test_a_cancel_reaches_every_member(run_group) -> None:
    cancel_r, cancel_w = os.pipe()
    try:
        os.write(cancel_w, b"x")
        results = run_group([job("sleep 30"), job("sleep 30")], [], cancel_fd=cancel_r)
    finally:
        os.close(cancel_r)
        os.close(cancel_w)
    assert [r.status for r in results] == [Status.CANCELLED] * 2


def test_a_member_may_keep_its_own_stdin_when_not_piped(run_group) -> None:
    fed = Job(cmd=["cat"], stdin=Blob(data=b"given\n"), require_cgroups=True)
    first, second = run_group([fed, job("cat")], [Pipe.of([0, "stdout"], [1, "stdin"])])
    assert (first.status, second.stdout) == (Status.OK, b"given\n")


def test_a_malformed_group_is_the_jobs_error_before_anything_runs(runner: Runner) -> None:
    with pytest.raises(JobError) as raised:
        runner.run_group([job("true")], [Pipe.of([0, "stdout"], [1, "stdin"])])
    assert raised.value.field == "pipes.to"


def test_a_group_through_the_worker_is_one_request_with_a_result_per_member(worker) -> None:
    asker = job('echo 21; read answer; echo "got $answer" >&2; [ "$answer" = 42 ]')
    with Client(worker.socket_path) as client:
        results = client.group([asker, job("read n; echo $((n * 2))"), job("echo alone")], BOTH_WAYS)
        stats = client.stats()
    assert [r.status for r in results] == [Status.OK] * 3
    assert (results[0].stderr, results[2].stdout) == (b"got 42\n", b"alone\n")
    assert stats["by_status"]["ok"] == 3  # counted per member


@pytest.mark.parametrize(("group", "field"), [
    ({"jobs": [{"cmd": ["true"]}], "pipes": [{"from": [0, "stdout"], "to": [1, "stdin"]}]}, "pipes.to"),
    ({"jobs": [{"cmd": ["true"]}, {"cmd": ["true"], "limits": {"memory": "lots"}}]}, "jobs.1.limits.memory"),
    ({"jobs": [{"cmd": ["true"]}, {"cmd": ["true"], "profile": "nope"}]}, "jobs.1.profile"),
    ({"jobs": [{"cmd": ["true"]}], "pipes": [{"from": [0, "stdout"], "into": [0, "stdin"]}]}, "pipes"),
    ({"jobs": {"cmd": ["true"]}}, "jobs"),
])
def test_a_malformed_group_is_invalid_job_naming_the_field(worker, connect, group: dict, field: str) -> None:
    raw = connect(worker)
    raw.send({"type": "group", "id": "g", **group})
    reply = raw.next()
    assert (reply["type"], reply["code"], reply.get("field"), reply.get("id")) == ("error", "invalid_job", field, "g")
    raw.send({"type": "status", "id": "g"})
    assert raw.next()["code"] == "unknown_id"  # refused: nothing queued


def test_a_groups_output_is_not_streamed(worker, connect) -> None:
    raw = connect(worker)
    raw.send({"type": "group", "id": "g", "jobs": [{"cmd": ["true"]}], "stream": True})
    reply = raw.next()
    assert (reply["code"], reply["field"]) == ("bad_message", "stream")


def test_the_trio_client_runs_a_group(worker) -> None:
    async def main() -> list[Result]:
        async with await AsyncClient.connect(worker.socket_path) as client:
            return await client.group([job("echo piped"), job("cat")], [Pipe.of([0, "stdout"], [1, "stdin"])])

    results = trio.run(main)
    assert [(r.status, r.stdout) for r in results] == [(Status.OK, b""), (Status.OK, b"piped\n")]


def test_the_group_command_runs_a_spec_here_and_through_a_worker(worker, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "jobs": [{"cmd": ["sh", "-c", "cat; echo fed >&2"], "stdin": "from the spec\n"}, {"cmd": ["tr", "a-z", "A-Z"]}],
        "pipes": [{"from": [0, "stdout"], "to": [1, "stdin"]}],
    }))
    for where in ([], ["--socket", worker.socket_path]):
        done = subprocess.run([*SANDBOX_CLI, "group", str(spec), "--json", *where], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        results = json.loads(done.stdout)["results"]
        assert [(r["status"], r["stdout"], r["stderr"]) for r in results] == [
            ("ok", "", "fed\n"), ("ok", "FROM THE SPEC\n", "")]
    spec.write_text(json.dumps({"jobs": [{"cmd": ["true"]}], "pipes": [{"from": [3, "stdout"], "to": [0, "stdin"]}]}))
    done = subprocess.run([*SANDBOX_CLI, "group", str(spec)], capture_output=True, text=True)
    assert done.returncode == 125 and "pipes.from" in done.stderr


def test_cancelling_a_group_through_the_worker_cancels_every_member(worker, connect) -> None:
    raw = connect(worker)
    sleeper = {"cmd": ["sleep", "30"]}
    raw.send({"type": "group", "id": "g", "jobs": [sleeper, {"cmd": ["cat"]}],
              "pipes": [{"from": [0, "stdout"], "to": [1, "stdin"]}]})
    raw.until(lambda m: m.get("event") == "started")
    raw.send({"type": "cancel", "id": "g"})
    final = raw.until(lambda m: m.get("event") in ("finished", "cancelled"))
    assert final["event"] == "cancelled"
    assert [r["status"] for r in final["results"]] == ["cancelled", "cancelled"]
