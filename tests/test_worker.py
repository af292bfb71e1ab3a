"""The worker end to end: a real `sandbox serve` process, real launchers, real jobs."""

from __future__ import annotations

import contextlib
import grp
import os
import resource
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import trio
from imagebuild import Entry, busybox_entries, layer_tar, oci_layout
from test_cleanup import sleeping, wait_until
from test_images_registry import cli
from workerutil import SANDBOX_CLI, Raw, WorkerProcess, exited

from sandbox.errors import JobError
from sandbox.models import Blob, Collect, InputFile, Job, Limits, Mount, Result, Status, WarmSpec
from worker.async_client import AsyncClient
from worker.client import Client, WorkerError
from worker.handover import OFFER_FDS
from worker.launcher_process import LauncherProcess
from worker.protocol import FrameDecoder, ProtocolError, encode, job_to_wire
from worker.slots import Slot


def py(code: str, **limits: object) -> Job:
    return Job(cmd=["python3", "-c", code], limits=Limits(**limits))  # type: ignore[arg-type]


def sleeper(seconds: str, **limits: object) -> dict:
    return job_to_wire(Job(cmd=["sleep", seconds], limits=Limits(**limits)))  # type: ignore[arg-type]


def test_socket_is_private(worker):
    assert stat.S_IMODE(os.stat(worker.socket_path).st_mode) == 0o600


def test_socket_group_lets_its_members_connect(start_worker):
    group = grp.getgrgid(os.getgid()).gr_name
    worker = start_worker("--slots", "1", "--socket-group", group)
    info = os.stat(worker.socket_path)
    assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o660, os.getgid())
    with Client(worker.socket_path) as client:
        assert client.run(Job(cmd=["true"])).status is Status.OK


@pytest.mark.parametrize("args, message", [
    (["--tcp", "127.0.0.1:1"], "TCP needs a token"),
    (["--socket-group", "no-such-group-here"], "no group named"),
    (["--warm-for", "count=1,profile=nope"], "profiles that do not exist: nope"),
])
def test_bad_serve_configuration_is_a_clear_error(tmp_path, args, message):
    done = subprocess.run([*SANDBOX_CLI, "serve", "--socket", str(tmp_path / "w.sock"), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 125 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "w.sock").exists()


def test_a_second_worker_on_a_live_socket_is_refused(worker, tmp_path):
    inode = os.stat(worker.socket_path).st_ino
    second = subprocess.run([*SANDBOX_CLI, "serve", "--socket", worker.socket_path],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 125 and worker.socket_path in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert os.stat(worker.socket_path).st_ino == inode  # neither replaced nor removed at its exit
    with Client(worker.socket_path) as client:
        assert client.run(Job(cmd=["true"])).status is Status.OK


def test_a_worker_holding_the_lock_keeps_its_socket_path(worker):
    # Its socket file gone (removed by hand), the worker still runs and holds the path.
    os.unlink(worker.socket_path)
    second = subprocess.run([*SANDBOX_CLI, "serve", "--socket", worker.socket_path],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 125 and f"{worker.socket_path}.lock" in second.stderr, second.stderr
    assert not os.path.exists(worker.socket_path)


def test_a_stale_socket_is_replaced_and_only_its_own_removed(tmp_path):
    # A dead worker's socket (bound, nobody listening) is replaced ...
    directory = tmp_path / "stale"
    directory.mkdir()
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(directory / "w.sock"))
    worker = WorkerProcess(directory, "--slots", "1")
    try:
        with Client(worker.socket_path) as client:
            assert client.run(Job(cmd=["true"])).status is Status.OK
        # ... and at exit a worker removes only the socket it made: not one that has
        # taken the path since.
        os.unlink(worker.socket_path)
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(worker.socket_path)
            inode = os.stat(worker.socket_path).st_ino
            assert worker.stop() == 0
            assert os.stat(worker.socket_path).st_ino == inode
    finally:
        worker.stop()


def test_a_socket_something_answers_on_is_never_replaced(tmp_path):
    # (a worker that took no lock: something listens, nobody holds PATH.lock)
    path = str(tmp_path / "w.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        done = subprocess.run([*SANDBOX_CLI, "serve", "--socket", path], capture_output=True, text=True, timeout=60)
        assert done.returncode == 125 and f"another worker is listening on {path}" in done.stderr, done.stderr
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(path)  # still the listener's


def test_a_file_that_is_not_a_socket_is_never_replaced(tmp_path):
    data = tmp_path / "w.sock"
    data.write_text("somebody's data")
    done = subprocess.run([*SANDBOX_CLI, "serve", "--socket", str(data)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 125 and "is not a socket" in done.stderr, done.stderr
    assert data.read_text() == "somebody's data"


def test_sync_client_runs_a_job(worker):
    with Client(worker.socket_path) as client:
        assert client.hello["version"] == 1
        result = client.run(py("print(6*7)", memory="256M"))
    assert result.status is Status.OK
    assert result.stdout == b"42\n"
    assert result.usage.memory_peak_bytes


def test_pipelining_many_jobs_on_one_connection(worker):
    with Client(worker.socket_path) as client:
        ids = [client.submit(Job(cmd=["sh", "-c", f"echo {n}"])) for n in range(12)]
        results = [client.wait(job_id) for job_id in reversed(ids)]
    assert [r.stdout for r in results] == [f"{n}\n".encode() for n in reversed(range(12))]


def test_async_client_runs_concurrent_jobs(worker):
    async def main() -> list[bytes]:
        client = await AsyncClient.connect(worker.socket_path)
        async with client:
            outputs: dict[int, bytes] = {}

            async def one(n: int) -> None:
                outputs[n] = (await client.run(Job(cmd=["sh", "-c", f"echo {n}"]))).stdout

            async with trio.open_nursery() as nursery:
                for n in range(6):
                    nursery.start_soon(one, n)
            return [outputs[n] for n in range(6)]

    assert trio.run(main) == [f"{n}\n".encode() for n in range(6)]


def test_verdicts_travel_unchanged(worker):
    with Client(worker.socket_path) as client:
        assert client.run(Job(cmd=["sleep", "5"], limits=Limits(wall_time="200ms"))).status is Status.WALL_TIME_LIMIT
        assert client.run(Job(cmd=["sh", "-c", "exit 4"])).exit_code == 4


def test_a_profiles_limits_fill_in_what_the_job_leaves_out(worker, connect):
    # compile.toml sets cpu_time = "30s": the RLIMIT_CPU backstop is a second past it.
    # The limits a job gives win, whatever their value; the rest come from the profile,
    # for the Python client and for a client that sends a partial map, as for the CLI.
    cpu_rlimit = ["sh", "-c", "ulimit -t"]
    with Client(worker.socket_path) as client:
        assert client.run(Job(cmd=cpu_rlimit, profile="compile")).stdout == b"31\n"
        given = Limits(cpu_time="10s")  # the default's value, but given: it wins
        assert client.run(Job(cmd=cpu_rlimit, profile="compile", limits=given)).stdout == b"11\n"
        unlimited = client.run(Job(cmd=cpu_rlimit, limits=Limits(cpu_time=None)))
        assert unlimited.stdout == b"unlimited\n"
    raw = connect(worker)
    raw.send({"type": "submit", "id": "partial", "job": {"cmd": cpu_rlimit, "profile": "compile",
                                                         "limits": {"memory": "256M"}}})
    finished = raw.until(lambda message: message.get("event") == "finished")
    assert finished["result"]["stdout"] == b"31\n"


def test_warm_sandboxes_of_another_profile(start_worker):
    worker = start_worker("--slots", "1", "--warm-for", "count=2,profile=strict")
    (launcher,) = worker.launchers()

    def sandbox_processes() -> int:  # the zygote, and the warm sandbox inits it cloned as the launcher's children
        count = 0
        for pid in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
            try:
                count += Path(f"/proc/{pid}/comm").read_text().strip() in ("sandbox-zygote", "sandbox-init")
            except FileNotFoundError:
                pass  # a retired sandbox, gone since the listing
        return count

    assert wait_until(lambda: sandbox_processes() == 3), sandbox_processes()
    with Client(worker.socket_path) as client:
        assert client.stats()["warm_per_slot"] == 2
        assert client.run(Job(cmd=["/bin/true"], profile="strict")).status is Status.OK
    assert wait_until(lambda: sandbox_processes() == 3), sandbox_processes()


def test_output_can_be_streamed_as_it_comes(worker, connect):
    chunks: list[tuple[str, int, bytes]] = []
    with Client(worker.socket_path) as client:
        result = client.run(Job(cmd=["sh", "-c", "echo one; echo two >&2; echo three"]),
                            on_output=lambda stream, offset, data: chunks.append((stream, offset, data)))
        quiet = client.submit(Job(cmd=["echo", "not streamed"]))
        assert client.wait(quiet, on_output=lambda *piece: chunks.append(piece)).stdout == b"not streamed\n"
    for stream, whole in (("stdout", result.stdout), ("stderr", result.stderr)):
        pieces = [(offset, data) for name, offset, data in chunks if name == stream]
        assert b"".join(data for _, data in pieces) == whole
        assert [offset for offset, _ in pieces] == [sum(len(d) for _, d in pieces[:i]) for i in range(len(pieces))]
    assert (result.stdout, result.stderr) == (b"one\nthree\n", b"two\n")
    # Live: the output arrives while the job still runs, not with its result.
    raw = connect(worker)
    raw.send({"type": "submit", "id": "live", "stream": True,
              "job": job_to_wire(Job(cmd=["sh", "-c", "echo ready; exec sleep 60"]))})
    output = raw.until(lambda message: message.get("event") == "output")
    assert (output["stream"], output["offset"], output["data"]) == ("stdout", 0, b"ready\n")
    raw.send({"type": "status", "id": "live"})
    assert raw.until(lambda message: message.get("type") == "status")["state"] == "running"
    raw.send({"type": "cancel", "id": "live"})
    assert raw.until(lambda message: message.get("event") == "cancelled")


def test_a_flood_of_streamed_output_neither_stalls_nor_cuts_off(worker):
    # 24 MB as fast as the pipe goes: pieces that find no room on the way are dropped
    # (the offsets say where), the client stays connected, the result has every byte
    # (in a frame larger than a request may be).
    pieces: list[tuple[int, bytes]] = []
    script = "head -c 24000000 /dev/urandom | od -An -v -tx1 | head -c 24000000"
    with Client(worker.socket_path) as client:
        result = client.run(Job(cmd=["sh", "-c", script], limits=Limits(output="64M")),
                            on_output=lambda stream, offset, data: pieces.append((offset, data)))
        assert client.run(Job(cmd=["echo", "still served"])).stdout == b"still served\n"
    assert result.status is Status.OK and len(result.stdout) == 24_000_000
    assert pieces and all(result.stdout[offset:offset + len(data)] == data for offset, data in pieces)
    assert [offset for offset, _ in pieces] == sorted(offset for offset, _ in pieces)


def test_submit_cli_prints_what_run_prints(worker):
    done = subprocess.run([*SANDBOX_CLI, "submit", "--socket", worker.socket_path, "--",
                           "sh", "-c", "echo out; echo err >&2; echo more; exit 3"],
                          capture_output=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\nmore\n", b"err\n")


def test_submit_cli_prints_output_as_it_comes(worker):
    with subprocess.Popen([*SANDBOX_CLI, "submit", "--socket", worker.socket_path, "--wall-time", "60s", "--",
                           "sh", "-c", "echo ready; exec sleep 60"], stdout=subprocess.PIPE) as cli:
        try:
            assert cli.stdout is not None and cli.stdout.readline() == b"ready\n"  # while the job runs
        finally:
            cli.terminate()  # its connection closes: the worker cancels the job


def test_cancel_a_running_job_kills_it(worker, connect):
    raw = connect(worker)
    raw.send({"type": "submit", "id": "long", "job": sleeper("1004")})
    raw.until(lambda m: m.get("event") == "started")
    assert wait_until(lambda: sleeping("1004"))
    raw.send({"type": "cancel", "id": "long"})
    final = raw.until(lambda m: m.get("event") in ("cancelled", "finished"))
    assert final["event"] == "cancelled"
    assert final["result"]["status"] == "cancelled" and "cancelled" in final["result"]["error"]
    assert not sleeping("1004")


def test_a_resubmit_while_its_job_is_being_cancelled_hears_one_end(worker, connect):
    raw, other = connect(worker), connect(worker)
    raw.send({"type": "submit", "id": "ending", "job": sleeper("1006")})
    raw.until(lambda m: m.get("event") == "started")
    raw.send({"type": "cancel", "id": "ending"})

    def cancelling() -> bool:
        other.send({"type": "status", "id": "ending"})
        return other.until(lambda m: m.get("type") == "status")["state"] == "cancelled"

    assert wait_until(cancelling)  # the cancel is in (the job may still be ending)
    other.send({"type": "submit", "id": "ending", "job": sleeper("1006")})  # the same job: it attaches
    heard: list[dict] = []
    final = other.until(lambda m: bool(heard.append(m)) or "result" in m)
    assert final["event"] == "cancelled" and final["result"]["status"] == "cancelled"
    assert [m.get("event") for m in heard] == ["accepted", "cancelled"], heard


def test_a_submitter_may_decline_progress_events(worker, connect):
    # A job's events arrive in order, its outcome last: once both outcomes are in,
    # every event of either job is.
    raw = connect(worker)
    raw.send({"type": "submit", "id": "quiet", "job": job_to_wire(Job(cmd=["true"])), "progress": False})
    raw.send({"type": "submit", "id": "chatty", "job": job_to_wire(Job(cmd=["true"]))})
    events: list[tuple[str, str]] = []
    raw.until(lambda m: bool(events.append((m.get("id"), m.get("event"))))
              or sum(event == "finished" for _, event in events) == 2)
    assert [event for job, event in events if job == "quiet"] == ["finished"]
    assert [event for job, event in events if job == "chatty"] == ["accepted", "started", "finished"]


def test_clients_decline_the_progress_events_they_never_show(worker):
    with Client(worker.socket_path) as client:
        assert "progress-optional" in client.hello["capabilities"]
        arrived = []
        put = client._mail.put
        client._mail.put = lambda message: (arrived.append(message.get("event")), put(message))  # type: ignore[method-assign]
        assert client.run(Job(cmd=["true"])).status is Status.OK
        assert arrived == ["finished"]


def test_a_client_of_no_worker_fails_without_leaking_its_socket(tmp_path):
    # The suite's per-test check counts this process's fds after each test.
    with pytest.raises(FileNotFoundError):
        Client(str(tmp_path / "nobody.sock"))


def test_cancel_a_queued_job(start_worker, connect):
    worker = start_worker("--slots", "1")
    raw = connect(worker)
    raw.send({"type": "submit", "id": "first", "job": sleeper("1005")})
    raw.send({"type": "submit", "id": "second", "job": sleeper("1006")})
    raw.until(lambda m: m.get("id") == "second" and m.get("event") == "accepted")
    raw.send({"type": "status", "id": "second"})
    assert raw.until(lambda m: m["type"] == "status")["state"] == "queued"
    raw.send({"type": "cancel", "id": "second"})
    assert raw.until(lambda m: m.get("id") == "second" and m.get("event") == "cancelled") == {
        "type": "event", "id": "second", "event": "cancelled"}
    raw.send({"type": "cancel", "id": "first"})
    raw.until(lambda m: m.get("id") == "first" and m.get("event") == "cancelled")
    assert not sleeping("1006") and not sleeping("1005")


def test_queue_full_is_busy(start_worker, connect):
    worker = start_worker("--slots", "1", "--queue", "1")
    raw = connect(worker)
    raw.send({"type": "submit", "id": "a", "job": sleeper("1007")})
    raw.until(lambda m: m.get("id") == "a" and m.get("event") == "started")
    raw.send({"type": "submit", "id": "b", "job": sleeper("1007")})
    raw.until(lambda m: m.get("id") == "b" and m.get("event") == "accepted")
    raw.send({"type": "submit", "id": "c", "job": sleeper("1007")})
    reply = raw.until(lambda m: m.get("id") == "c")
    assert reply["type"] == "error" and reply["code"] == "busy"
    raw.close()  # disconnecting cancels a and b
    assert wait_until(lambda: not sleeping("1007"))


def test_resubmitting_an_id_returns_the_same_result(worker):
    job = Job(cmd=["sh", "-c", "head -c 16 /dev/urandom | od -An -tx1"])
    with Client(worker.socket_path) as client:
        first = client.run(job, job_id="same-id")
    with Client(worker.socket_path) as client:
        again = client.run(job, job_id="same-id")
        other = client.run(job, job_id="other-id")
    assert first.stdout == again.stdout
    assert other.stdout != first.stdout


def test_an_id_names_one_job(worker, connect):
    # The same job - however its limits were spelled - attaches to the record; another
    # job under a known id is refused, whether the first is running or finished.
    raw = connect(worker)
    raw.send({"type": "submit", "id": "mine", "job": {"cmd": ["sleep", "1010"], "limits": {"memory": "256M"}}})
    raw.until(lambda m: m.get("event") == "started")
    raw.send({"type": "submit", "id": "mine", "job": {"cmd": ["sleep", "1010"], "limits": {"memory": 256 << 20}}})
    assert raw.next() == {"type": "event", "id": "mine", "event": "accepted", "state": "running"}
    for other in ({"cmd": ["sleep", "1011"], "limits": {"memory": "256M"}},
                  {"cmd": ["sleep", "1010"], "limits": {"memory": "256M", "wall_time": "30s"}}):
        raw.send({"type": "submit", "id": "mine", "job": other})
        reply = raw.next()
        assert (reply["type"], reply["code"], reply["field"], reply["id"]) == ("error", "id_conflict", "id", "mine")
    raw.send({"type": "cancel", "id": "mine"})
    raw.until(lambda m: m.get("event") == "cancelled")
    with Client(worker.socket_path) as client, pytest.raises(WorkerError) as caught:
        client.run(Job(cmd=["true"]), job_id="mine")
    assert caught.value.code == "id_conflict"


def test_sync_client_may_submit_many_before_waiting(worker):
    # Resubmitting a finished id answers at once without running anything: thousands of
    # replies, more than the worker queues for a connection that does not read. The
    # client takes them in as it submits, so it is not cut off as a non-reader.
    job = Job(cmd=["/bin/true"])
    with Client(worker.socket_path) as client:
        client.run(job, job_id="many")
        ids = [client.submit(job, job_id="many") for _ in range(6000)]
        results = [client.wait(job_id) for job_id in ids[-3:]]
    assert [result.status for result in results] == [Status.OK] * 3


def test_async_client_may_submit_many_before_waiting(worker):
    async def main() -> list[Status]:
        job = Job(cmd=["/bin/true"])
        async with await AsyncClient.connect(worker.socket_path) as client:
            await client.run(job, job_id="many-async")
            ids = [await client.submit(job, job_id="many-async") for _ in range(6000)]
            return [(await client.wait(job_id)).status for job_id in ids[-3:]]

    assert trio.run(main) == [Status.OK] * 3


def test_disconnect_cancels_the_clients_jobs(worker, connect):
    raw = connect(worker)
    raw.send({"type": "submit", "id": "orphan", "job": sleeper("1008")})
    raw.until(lambda m: m.get("event") == "started")
    raw.close()
    assert wait_until(lambda: not sleeping("1008")), "job survived its client"


def test_killed_launcher_fails_its_job_and_is_replaced(worker, connect):
    raw = connect(worker)
    raw.send({"type": "submit", "id": "victim", "job": sleeper("1009")})
    raw.until(lambda m: m.get("event") == "started")
    for pid in worker.launchers():
        os.kill(pid, signal.SIGKILL)
    final = raw.until(lambda m: m.get("id") == "victim" and m.get("event") == "finished")
    assert final["result"]["status"] == "internal_error"
    assert "died" in final["result"]["error"]
    assert wait_until(lambda: not sleeping("1009"))
    with Client(worker.socket_path) as client:
        after = client.run(Job(cmd=["echo", "still here"]))
    assert after.stdout == b"still here\n", after


def test_launchers_outlive_an_idle_worker(start_worker):
    # trio starts launchers from a cached thread that exits after 10 s idle; a death
    # signal tied to that thread used to kill every launcher of an idle worker.
    worker = start_worker("--slots", "1")
    with Client(worker.socket_path) as client:
        assert client.run(Job(cmd=["true"])).status == Status.OK
        before = worker.launchers()
        time.sleep(12)
        assert worker.launchers() == before
        assert client.run(Job(cmd=["true"])).status == Status.OK
        assert client.stats()["launcher_restarts"] == 0


def test_sigterm_lets_running_jobs_finish(worker, connect):
    raw = connect(worker)
    raw.send({"type": "submit", "id": "last", "job": job_to_wire(Job(cmd=["sh", "-c", "sleep 0.5; echo done"]))})
    raw.until(lambda m: m.get("event") == "started")
    worker.process.send_signal(signal.SIGTERM)
    final = raw.until(lambda m: m.get("id") == "last" and m.get("event") == "finished")
    assert final["result"]["stdout"] == b"done\n"
    assert worker.process.wait(timeout=30) == 0
    assert not os.path.exists(worker.socket_path)


def test_a_client_gone_before_its_refusal_leaves_the_worker_serving(start_worker):
    # Under a hard limit of 272 open files a worker takes 16 connections (its floor):
    # fill them, then have clients connect and leave before the worker can refuse them,
    # as a readiness probe does. The refusal finds them gone; the worker goes on.
    worker = start_worker("--slots", "1", wrapper=["prlimit", "--nofile=272:272"])
    first = Raw(worker.socket_path)
    held = [first]

    def connections() -> int:
        first.send({"type": "stats"})
        return int(first.until(lambda message: message.get("type") == "stats")["connections"])

    try:
        assert wait_until(lambda: connections() == 1, timeout=30)  # (start_worker's readiness probe gone)
        while True:
            raw = Raw(worker.socket_path, hello=False)
            with contextlib.suppress(BrokenPipeError):  # (refused and closed before the hello got there)
                raw.send({"type": "hello", "version": 1})
            reply = raw.next()
            if reply["type"] != "hello":
                assert (reply["code"], len(held)) == ("busy", 16), reply
                raw.close()
                break
            held.append(raw)
        for _ in range(20):
            with socket.socket(socket.AF_UNIX) as gone:
                gone.connect(worker.socket_path)
        late = Raw(worker.socket_path, hello=False)
        assert late.next()["code"] == "busy"
        late.close()
        held[0].send({"type": "ping"})
        assert held[0].next()["type"] == "pong"
    finally:
        for raw in held:
            raw.close()
    # (start_worker: it stops with exit status 0)


def test_stats_and_ping(worker):
    with Client(worker.socket_path) as client:
        client.run(Job(cmd=["true"]))
        client.run(Job(cmd=["false"]))
        stats = client.stats()
        assert client.ping()["type"] == "pong"
    assert stats["slots"] == 2 and 1 <= stats["launchers"] <= 2  # (one per CPU, never more than the slots)
    assert stats["cgroups"] is True and stats["launcher_restarts"] == 0
    assert stats["by_status"] == {"ok": 1, "runtime_error": 1}
    assert stats["latency_ms"]["count"] == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_prometheus_metrics_count_jobs_by_verdict(start_worker):
    port = _free_port()
    worker = start_worker("--slots", "1", "--warm", "1", "--metrics", f"127.0.0.1:{port}")
    with Client(worker.socket_path) as client:
        client.run(Job(cmd=["true"]))
        client.run(Job(cmd=["true"]))
        client.run(Job(cmd=["false"]))
    reply = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in reply.text.splitlines() if line and not line.startswith("#")
    }
    assert samples['sandbox_jobs_total{status="ok"}'] == 2
    assert samples['sandbox_jobs_total{status="runtime_error"}'] == 1
    assert samples["sandbox_job_latency_seconds_count"] == 3
    assert samples['sandbox_job_latency_seconds_bucket{le="+Inf"}'] == 3
    assert samples["sandbox_queue_depth"] == 0 and samples["sandbox_jobs_running"] == 0
    assert samples["sandbox_warm_sandboxes_per_slot"] == 1 and samples["sandbox_launcher_restarts"] == 0
    assert httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=10).status_code == 404


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"\x00\x00\x00\x03\xc1\xc1\xc1", "bad_frame"),
        (struct.pack(">I", 2**32 - 1), "frame_too_large"),
        (struct.pack(">I", 100 << 20) + b"\x00" * 1024, "frame_too_large"),
        (struct.pack(">I", 50_001) + b"\x91" * 50_000 + b"\xc0", "bad_frame"),  # nested 50,000 deep
    ],
)
def test_broken_frames_get_a_typed_error_and_a_close(worker, payload, code, connect):
    raw = connect(worker)
    raw.send_bytes(payload)
    reply = raw.next()
    assert reply["type"] == "error" and reply["code"] == code
    assert raw.closed_by_peer()
    with Client(worker.socket_path) as client:  # everyone else is still served
        assert client.run(Job(cmd=["true"])).status is Status.OK


@pytest.mark.parametrize(
    "message, code, field",
    [
        ({"type": "warp"}, "unknown_type", "type"),
        ({"type": "submit", "id": "x", "job": {"cmd": ["ls"], "limits": {"memory": -1}}}, "invalid_job", "limits.memory"),
        ({"type": "submit", "id": "x", "job": {"cmd": ["ls"], "limits": {"pids": 2**64 - 1}}}, "invalid_job",
         "limits.pids"),
        ({"type": "submit", "id": "x", "job": {"cmd": ["ls"], "limits": {"cpus": float("nan")}}}, "invalid_job",
         "limits.cpus"),
        ({"type": "submit", "id": "x", "job": {"cmd": ["ls"], "limits": {"open_files": "many"}}}, "invalid_job",
         "limits.open_files"),
        ({"type": "submit", "id": "x", "job": {"cmd": ["ls"], "files": [{"path": "/work/../../etc/x",
                                                                           "data": b""}]}}, "invalid_job",
         "files.path"),
        ({"type": "submit", "id": 5, "job": {"cmd": ["ls"]}}, "bad_message", "id"),
        ({"type": "submit", "id": "x", "job": {"cmd": ["ls"]}, "progress": "no"}, "bad_message", "progress"),
        ({"type": "cancel", "id": "never-submitted"}, "unknown_id", "id"),
    ],
)
def test_bad_messages_get_typed_errors_and_the_connection_lives(worker, message, code, field, connect):
    raw = connect(worker)
    raw.send(message)
    reply = raw.next()
    assert (reply["type"], reply["code"], reply.get("field")) == ("error", code, field)
    raw.send({"type": "ping", "seq": 7})
    assert raw.next() == {"type": "pong", "seq": 7}


@pytest.mark.parametrize("image", ["nosuch/img:1", "UPPER/Case"])
def test_a_job_on_an_image_not_in_the_store_is_refused_before_a_slot(worker, connect, image):
    raw = connect(worker)
    raw.send({"type": "submit", "id": "on-image", "job": {"cmd": ["true"], "image": image}})
    reply = raw.next()
    assert (reply["type"], reply["code"], reply["field"], reply["id"]) == ("error", "invalid_job", "image", "on-image")
    assert stats(raw)["launcher_restarts"] == 0
    # (a reference that cannot parse is refused by the model itself)
    with Client(worker.socket_path) as client, pytest.raises((WorkerError, JobError)) as caught:
        client.run(Job(cmd=["true"], image=image))
    assert caught.value.field == "image"


def test_the_worker_reads_its_store_before_it_queues_an_image_job(image_store, start_worker, connect):
    layer = layer_tar(busybox_entries() + [Entry("version", data=b"v1\n")])
    done = cli("import", str(oci_layout(image_store / "layout", [layer], config={"Cmd": None})), "cmdless:1")
    assert done.returncode == 0, done.stderr
    worker = start_worker("--slots", "1")  # (its store: the environment image_store set)
    raw = connect(worker)
    raw.send({"type": "submit", "id": "ran", "job": {"cmd": ["cat", "/version"], "image": "cmdless:1"}})
    final = raw.until(lambda m: m.get("event") == "finished")
    assert (final["result"]["status"], final["result"]["stdout"]) == ("ok", b"v1\n"), final
    raw.send({"type": "submit", "id": "no-cmd", "job": {"cmd": [], "image": "cmdless:1"}})
    reply = raw.next()
    assert (reply["type"], reply["code"], reply["field"]) == ("error", "invalid_job", "cmd"), reply
    assert cli("rmi", "cmdless:1").returncode == 0
    raw.send({"type": "submit", "id": "gone", "job": {"cmd": ["cat", "/version"], "image": "cmdless:1"}})
    reply = raw.next()
    assert (reply["type"], reply["code"], reply["field"]) == ("error", "invalid_job", "image"), reply
    for registry in ("one.example", "two.example"):  # a short name that names two images
        layer = layer_tar(busybox_entries() + [Entry("version", data=registry.encode())])
        assert cli("import", str(oci_layout(image_store / registry, [layer])), f"{registry}/twice:1").returncode == 0
    raw.send({"type": "submit", "id": "which", "job": {"cmd": ["cat", "/version"], "image": "twice:1"}})
    reply = raw.next()
    assert (reply["type"], reply["code"], reply["field"]) == ("error", "invalid_job", "image"), reply
    assert "ambiguous" in reply["message"]
    assert stats(raw)["launcher_restarts"] == 0


def test_an_output_limit_whose_result_no_frame_could_carry_is_invalid(worker, connect):
    # (a result carries both streams, each up to the limit, from the launcher to the worker)
    raw = connect(worker)
    # (found by its launcher, which knows the limits its profile gives: invalid_job for its id)
    raw.send({"type": "submit", "id": "loud", "job": {"cmd": ["true"], "limits": {"output": "1G"}}})
    reply = raw.until(lambda m: m["type"] == "error" or m.get("event") == "finished")
    assert (reply["type"], reply["code"], reply["field"], reply["id"]) == ("error", "invalid_job", "limits.output",
                                                                          "loud"), reply
    raw.send({"type": "submit", "id": "fits", "job": {"cmd": ["true"], "limits": {"output": "511M"}}})
    assert raw.until(lambda m: m.get("event") == "finished")["result"]["status"] == "ok"


def test_a_job_its_launcher_finds_wrong_is_invalid_and_the_launcher_lives(start_worker, connect):
    # An argument too long for the message that hands a job to its sandbox is found only
    # where that message is made: the sandbox used to wait for it until its set-up timed
    # out (30 s of the slot), then the job was an internal_error.
    worker = start_worker("--slots", "1")
    launchers = worker.launchers()
    raw = connect(worker)
    raw.send({"type": "submit", "id": "too-long", "job": job_to_wire(Job(cmd=["true", "x" * 300_000]))})
    reply = raw.until(lambda m: m["type"] == "error" or m.get("event") in ("finished", "cancelled"))
    assert (reply["type"], reply["code"], reply["field"], reply["id"]) == ("error", "invalid_job", "cmd", "too-long")
    assert worker.launchers() == launchers and stats(raw)["launcher_restarts"] == 0
    raw.send({"type": "status", "id": "too-long"})  # forgotten: sent again, it is judged again
    assert raw.next()["code"] == "unknown_id"
    with Client(worker.socket_path) as client:
        assert client.run(Job(cmd=["echo", "next"])).stdout == b"next\n"


def test_the_results_kept_for_resubmits_hold_their_byte_budget(start_worker, connect):
    # Each result holds the job's output (up to twice the output limit) for --retention
    # seconds: without a budget, jobs that print a lot grew the worker's memory by as
    # much for as long. The oldest go first; their ids are then unknown.
    worker = start_worker("--slots", "1", "--retention-size", "5M")
    raw = connect(worker)
    for number in range(3):  # 2 MiB of output each: the third takes the budget past 5 MiB
        raw.send({"type": "submit", "id": f"loud-{number}", "progress": False,
                  "job": {"cmd": ["head", "-c", "2M", "/dev/zero"]}})
        finished = raw.until(lambda m: m.get("event") == "finished")
        assert len(finished["result"]["stdout"]) == 2 << 20  # its submitter has it all
    raw.send({"type": "status", "id": "loud-0"})
    assert raw.next()["code"] == "unknown_id"
    for number in (1, 2):
        raw.send({"type": "status", "id": f"loud-{number}"})
        assert raw.next() == {"type": "status", "id": f"loud-{number}", "state": "finished"}


def test_the_most_input_files_a_job_may_bring(worker):
    # Every file travels to the sandbox as an fd of one message (at most 253 with stdio).
    files = [InputFile(f"/work/f{index}", Blob(data=b"%d" % index)) for index in range(250)]
    with Client(worker.socket_path) as client:
        result = client.run(Job(cmd=["cat", "/work/f0", "/work/f249"], files=files))
    assert (result.status, result.stdout) == (Status.OK, b"0249"), result


def test_a_frame_too_large_is_answered_not_reset(worker, connect):
    # The whole oversized frame is sent (a 20 MB stdin): the worker reads it to its end
    # and throws it away, so the sender is not reset mid-send and reads the error.
    raw = connect(worker)
    body = msgpack.packb({"type": "submit", "id": "big", "job": {"cmd": ["true"], "stdin": b"x" * (20 << 20)}})
    raw.send_bytes(struct.pack(">I", len(body)) + body)
    reply = raw.next()
    assert (reply["type"], reply["code"]) == ("error", "frame_too_large"), reply
    assert str(len(body)) in reply["message"] and str(16 << 20) in reply["message"]
    assert raw.closed_by_peer()
    assert '"event": "frame_too_large"' in worker.log_path.read_text()


def test_max_frame_is_the_workers_to_set(start_worker):
    worker = start_worker("--slots", "1", "--max-frame", "1M")
    with Client(worker.socket_path) as client:
        assert client.hello["max_frame"] == 1 << 20
        assert client.run(Job(cmd=["wc", "-c"], stdin=Blob(data=b"x" * 1_000_000))).stdout == b"1000000\n"
        with pytest.raises(WorkerError) as caught:
            client.run(Job(cmd=["wc", "-c"], stdin=Blob(data=b"x" * 1_100_000)))
    assert caught.value.code == "frame_too_large"

    async def too_large_async() -> str | None:
        async with await AsyncClient.connect(worker.socket_path) as client:
            with pytest.raises(WorkerError) as caught:
                await client.run(Job(cmd=["true"], stdin=Blob(data=b"x" * 1_100_000)))
            return caught.value.code

    assert trio.run(too_large_async) == "frame_too_large"
    big = worker.log_path.parent / "big-stdin"
    big.write_bytes(b"x" * 1_100_000)
    done = subprocess.run([*SANDBOX_CLI, "submit", "--socket", worker.socket_path, "--stdin", str(big), "--", "true"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 125 and "too large for the worker" in done.stderr and "--max-frame" in done.stderr, done
    assert "Traceback" not in done.stderr


def test_clients_read_why_a_worker_closed_on_them_mid_send(tmp_path):
    """A worker that answers a frame too large and closes without reading the rest (one
    whose reading of it timed out): the client, reset mid-send, still reads the error."""
    path = str(tmp_path / "impatient.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    listener.settimeout(30)  # a failing client must not leave the thread waiting forever

    def impatient_worker() -> None:
        for _ in range(2):
            connection, _ = listener.accept()
            with connection:
                decoder = FrameDecoder()
                while not decoder.feed(connection.recv(1 << 16)):
                    pass  # the hello
                connection.sendall(encode({"type": "hello", "version": 1, "capabilities": [], "max_frame": 1024}))
                connection.recv(1024)  # the first bytes of the submit, and then no more
                connection.sendall(encode({"type": "error", "code": "frame_too_large", "message": "too large"}))

    server = threading.Thread(target=impatient_worker, daemon=True)
    server.start()
    try:
        job = Job(cmd=["true"], stdin=Blob(data=b"x" * (8 << 20)))
        with Client(path) as client, pytest.raises(WorkerError) as caught:
            client.run(job)
        assert caught.value.code == "frame_too_large"

        async def async_client() -> str | None:
            async with await AsyncClient.connect(path) as client:
                with pytest.raises(WorkerError) as caught:
                    await client.run(job)
            return caught.value.code

        assert trio.run(async_client) == "frame_too_large"
    finally:
        server.join(timeout=30)
        listener.close()


@pytest.mark.parametrize("flags, message", [
    (["--max-frame", "1K"], "--max-frame must be from 64K to 512M"),
    (["--max-frame", "2G"], "--max-frame must be from 64K to 512M"),
    (["--max-frame", "12XB"], "argument --max-frame: invalid size '12XB'"),
    (["--slots", "0", "--warm", "1"], "--slots must be at least 1"),
    (["--slots", "-2"], "--slots must be at least 1"),
])
def test_a_configuration_out_of_range_is_a_clear_error(tmp_path, flags, message):
    done = subprocess.run([*SANDBOX_CLI, "serve", "--socket", str(tmp_path / "w.sock"), *flags],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 125 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_submit_cli_names_the_field_of_an_invalid_job(worker):
    done = subprocess.run([*SANDBOX_CLI, "submit", "--socket", worker.socket_path, "--image", "nosuch/img:1", "--",
                           "true"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 125, done
    assert done.stderr.startswith("sandbox: --image: no image 'nosuch/img:1'"), done.stderr


def test_hello_is_required_first_and_versioned(worker, connect):
    raw = connect(worker, hello=False)
    raw.send({"type": "ping"})
    assert raw.next()["code"] == "hello_required"
    assert raw.closed_by_peer()
    for kind in ("bogus", [], {}):  # whatever the type is, before hello: refused and closed
        raw = connect(worker, hello=False)
        raw.send({"type": kind})
        assert raw.next()["code"] == "hello_required"
        assert raw.closed_by_peer()
    raw = connect(worker)
    for kind in ([], {}, 7):  # after hello: an unknown type, the connection and the worker go on
        raw.send({"type": kind})
        assert raw.next()["code"] == "unknown_type"
    raw.send({"type": "ping"})
    assert raw.next()["type"] == "pong"
    raw = connect(worker, hello=False)
    raw.send({"type": "hello", "version": 99})
    assert raw.next()["code"] == "version"
    assert raw.closed_by_peer()


def test_tcp_requires_the_token(start_worker, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = start_worker("--slots", "1", "--tcp", f"127.0.0.1:{port}", "--token-file", str(token))
    with pytest.raises(WorkerError) as caught:
        Client(tcp=("127.0.0.1", port), token="wrong")
    assert caught.value.code == "unauthorized"
    with Client(tcp=("127.0.0.1", port), token="s3cret") as client:
        assert client.run(Job(cmd=["echo", "tcp"])).stdout == b"tcp\n"
    assert worker.socket_path


def test_client_that_never_reads_is_cut_off(worker, connect):
    before = worker.rss_bytes()
    raw = connect(worker)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ping = msgpack.packb({"type": "ping", "seq": "x" * 1000})
    batch = (struct.pack(">I", len(ping)) + ping) * 1000
    try:
        for _ in range(20):  # 20,000 pings, replies never read
            raw.send_bytes(batch)
    except (BrokenPipeError, ConnectionResetError):
        pass  # cut off while we were still sending: exactly the point
    assert raw.closed_by_peer()
    assert worker.rss_bytes() - before < 64 << 20
    with Client(worker.socket_path) as client:
        assert client.run(Job(cmd=["true"])).status is Status.OK


def test_ten_thousand_idle_connections(worker):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    idle = []
    try:
        for _ in range(10_000):
            conn = socket.socket(socket.AF_UNIX)
            conn.connect(worker.socket_path)
            idle.append(conn)
        with Client(worker.socket_path, timeout=60) as client:
            assert client.run(Job(cmd=["echo", "served"])).stdout == b"served\n"
        assert worker.rss_bytes() < 512 << 20
    finally:
        for conn in idle:
            conn.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_flood_of_submits_and_cancels(start_worker, connect):
    worker = start_worker("--slots", "2", "--queue", "50")
    raw = connect(worker)
    job = job_to_wire(Job(cmd=["true"]))
    for n in range(300):
        raw.send({"type": "submit", "id": f"j{n}", "job": job})
        if n % 3 == 0:
            raw.send({"type": "cancel", "id": f"j{n}"})
    outcomes: dict[str, str] = {}
    while len(outcomes) < 300:
        message = raw.next()
        if message["type"] == "event" and message["event"] in ("finished", "cancelled"):
            outcomes[message["id"]] = message["event"]
        elif message["type"] == "error" and message["code"] in ("busy", "unknown_id"):
            if message["code"] == "busy":
                outcomes[message["id"]] = "busy"
    assert set(outcomes.values()) <= {"finished", "cancelled", "busy"}
    assert "finished" in outcomes.values()
    with Client(worker.socket_path) as client:
        assert client.run(Job(cmd=["echo", "ok"])).stdout == b"ok\n"


@pytest.mark.parametrize("warm", [[], [WarmSpec(2, "default")]], ids=["by the launcher", "direct"])
def test_a_cancel_racing_the_hand_over_of_its_job(warm):
    """A cancel arriving while a slot hands its job over (to the launcher, or with a warm
    pool straight to an offered sandbox): the two sends share one stream (trio refuses
    two senders at once), and a job cancelled before it was handed over never runs.
    Each round cancels a different number of scheduler turns after the slot took the
    job, so both sides of the hand-over are hit."""

    async def main() -> tuple[list[Result | None], int]:
        launcher = LauncherProcess(0, warm)
        slot = Slot(0, launcher)
        outcomes: list[Result | None] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(launcher.keep_alive)
            for round_number in range(24):
                job_id, turns = f"j{round_number}", round_number % 8
                if warm:
                    await offered(launcher)

                async def run(job_id: str = job_id) -> None:
                    outcomes.append(await slot.run(job_id, Job(cmd=["sleep", "30"]), nothing))

                async with trio.open_nursery() as job:
                    job.start_soon(run)
                    while slot.running_id != job_id:
                        await trio.lowlevel.checkpoint()
                    for _ in range(turns):
                        await trio.lowlevel.checkpoint()
                    await slot.cancel(job_id)
            outcomes.append(await slot.run("after", Job(cmd=["echo", "ok"]), nothing))
            nursery.cancel_scope.cancel()
        return outcomes, slot.handovers

    (*cancelled, after), handovers = trio.run(main)
    assert (handovers > 0) == bool(warm)
    # Every round ended early: never handed over (None), not started by the launcher, or
    # killed by the cancel. A lost cancel would leave the 30 s sleep running.
    assert all(result is None or (result.status is Status.CANCELLED and str(result.error).startswith("cancelled before it"))
               for result in cancelled), cancelled
    assert None in cancelled and any(result is not None for result in cancelled), cancelled
    assert after is not None and after.stdout == b"ok\n"


def run_directly(client: Client, job: Job, attempts: int = 10, **run: Any) -> Result:
    """Run the job until it went straight to a sandbox the launcher offered (the stats
    count those hand-overs), each attempt once the launcher has offered one (``stats``'s
    ``offers_ready``; a busy machine prepares it late). Every attempt's result must be as
    right as the last one's, whichever way it went. ``run``: ``Client.run``'s options."""
    for _ in range(attempts):
        await_offer(client)
        before = client.stats()["direct_handovers"]
        result = client.run(job, **run)
        if client.stats()["direct_handovers"] == before + 1:
            return result
    raise AssertionError(f"no job was handed over directly in {attempts} attempts")


def await_offer(client: Client) -> None:
    """Return once the worker holds an offered sandbox (a busy machine prepares it late)."""
    deadline = time.monotonic() + 30
    while not (stats := client.stats())["offers_ready"]:
        assert time.monotonic() < deadline, f"no sandbox offered within 30 s: {stats}"
        time.sleep(0.01)  # polling the worker's state, bounded by the deadline


PROBE = ["sh", "-c", "cat; echo $FOO $PATH; pwd; ulimit -n -s -f; id -u"]


def test_warm_jobs_go_straight_to_an_offered_sandbox(start_worker, tmp_path):
    # The worker hands a job to a warm sandbox itself when it is one made for the job;
    # the job sees, and the result says, what the launcher's way gives. Its input files
    # go with it: their bytes, or a file of the worker's cache by id.
    worker = start_worker("--slots", "1", "--warm", "2")
    job = Job(cmd=PROBE, stdin=Blob(data=b"from stdin"), env={"FOO": "bar"}, cwd="/tmp")
    with Client(worker.socket_path) as client:
        direct = run_directly(client, job)
        cached = client.put_file(b"cached\n")
        with_files = run_directly(client, Job(
            cmd=["sh", "-c", "cat /tmp/in/a /tmp/b; stat -c %a /tmp/b"],
            files=[InputFile(dest="/tmp/in/a", content=Blob(data=b"inline\n")),
                   InputFile(dest="/tmp/b", content=Blob(file_id=cached), mode=0o600)]))
        handed = client.stats()["direct_handovers"]
        other_profile = Job(cmd=PROBE, stdin=job.stdin, env=job.env, cwd="/tmp", profile="strict")
        (tmp_path / "tree").mkdir()
        mounting = Job(cmd=PROBE, stdin=job.stdin, env=job.env, cwd="/tmp",
                       mounts=[Mount("/work/data", tree_id=client.put_tree(tmp_path / "tree"))])
        assert client.run(other_profile).status is Status.RUNTIME_ERROR  # strict: no fork for sh
        by_launcher = client.run(mounting)
        assert client.stats()["direct_handovers"] == handed  # none of those was made for them
    assert direct.status is Status.OK and direct.stdout.startswith(b"from stdinbar /usr/local/bin:"), direct
    assert direct.usage.memory_peak_bytes and direct.usage.wall_ms > 0 and direct.usage.cpu_ms > 0
    assert (with_files.status, with_files.stdout) == (Status.OK, b"inline\ncached\n600\n"), with_files
    assert (by_launcher.status, by_launcher.stdout, by_launcher.stderr) == (direct.status, direct.stdout, direct.stderr)


def test_limits_hold_for_jobs_handed_over_directly(start_worker, connect):
    # The cgroup's limits too: the worker writes a job's own before it hands it over,
    # and the next job's sandbox has its profile's again.
    worker = start_worker("--slots", "1", "--warm", "2")
    hog = "import os; chunks = [bytearray(1 << 20) for _ in range(100)]"
    forks = "import os\nfor n in range(16):\n    if os.fork() == 0: os._exit(0)\nprint('forked')"
    with Client(worker.socket_path) as client:
        wall = run_directly(client, Job(cmd=["sleep", "30"], limits=Limits(wall_time="300ms")))
        cpu = run_directly(client, Job(cmd=["sh", "-c", "while :; do :; done"], limits=Limits(cpu_time="300ms")))
        output = run_directly(client, Job(cmd=["yes"], limits=Limits(output="64K")))
        failing = run_directly(client, Job(cmd=["sh", "-c", "echo oops >&2; exit 3"]))
        memory = run_directly(client, Job(cmd=["python3", "-c", hog], limits=Limits(memory="48M")))
        pids = run_directly(client, Job(cmd=["python3", "-c", forks], limits=Limits(pids=4)))
        roomy = run_directly(client, Job(cmd=["python3", "-c", hog]))
    assert wall.status is Status.WALL_TIME_LIMIT and 300 <= wall.usage.wall_ms < 2000, wall
    assert cpu.status is Status.TIME_LIMIT and 300 <= cpu.usage.cpu_ms < 1300, cpu
    assert output.status is Status.OUTPUT_LIMIT and len(output.stdout) == 64 << 10, output.status
    assert (failing.status, failing.exit_code, failing.stderr) == (Status.RUNTIME_ERROR, 3, b"oops\n")
    assert memory.status is Status.MEMORY_LIMIT and memory.usage.memory_peak_bytes <= 48 << 20, memory
    assert pids.status is Status.RUNTIME_ERROR and b"BlockingIOError" in pids.stderr, pids
    assert roomy.status is Status.OK, roomy
    # A cancel reaches a job the launcher did not hand over itself.
    raw = connect(worker)
    for attempt in range(50):
        handed = stats(raw)["direct_handovers"]
        raw.send({"type": "submit", "id": f"s{attempt}", "job": sleeper("1013")})
        raw.until(lambda m: m.get("event") == "started")
        raw.send({"type": "cancel", "id": f"s{attempt}"})
        final = raw.until(lambda m, i=f"s{attempt}": m.get("id") == i and m.get("event") in ("cancelled", "finished"))
        assert final["event"] == "cancelled" and "cancelled" in final["result"]["error"], final
        if stats(raw)["direct_handovers"] == handed + 1:
            break
    else:
        raise AssertionError("no sleeper was handed over directly")
    assert wait_until(lambda: not sleeping("1013"))


def test_the_worker_supervises_the_jobs_it_hands_over(start_worker, connect):
    # The worker watches a job it handed over itself, to its result, with no launcher on
    # the way (one stopped meanwhile holds nothing up): the output streamed as it comes,
    # a seccomp violation named as the launcher names it, the files a job leaves read once
    # its program exits (the init kills what the program left running first).
    worker = start_worker("--slots", "1", "--warm", "2")
    pieces: list[tuple[str, int, bytes]] = []
    with Client(worker.socket_path) as client:
        await_offer(client)
        handed = client.stats()["direct_handovers"]
        (launcher,) = worker.launchers()
        os.kill(launcher, signal.SIGSTOP)
        try:
            alone = client.run(Job(cmd=["sh", "-c", "echo no launcher; exit 4"], limits=Limits(wall_time="20s")))
        finally:
            os.kill(launcher, signal.SIGCONT)
        assert client.stats()["direct_handovers"] == handed + 1
        assert (alone.status, alone.exit_code, alone.stdout) == (Status.RUNTIME_ERROR, 4, b"no launcher\n"), alone
        streamed = run_directly(client, Job(cmd=["sh", "-c", "echo one; echo two >&2; echo three"]),
                                on_output=lambda stream, offset, data: pieces.append((stream, offset, data)))
        violation = run_directly(client, Job(cmd=["python3", "-c", "import ctypes; ctypes.CDLL(None).syscall(101, 0)"]))
        collecting = run_directly(client, Job(cmd=["sh", "-c", "echo kept > /tmp/out; sleep 30 & echo out"],
                                              collect=[Collect("/tmp/out")]))
    assert (streamed.stdout, streamed.stderr) == (b"one\nthree\n", b"two\n")
    for stream, whole in (("stdout", streamed.stdout), ("stderr", streamed.stderr)):
        assert b"".join(data for name, _, data in pieces if name == stream) == whole
    assert violation.status is Status.SYSCALL_VIOLATION, violation
    assert violation.violation == {"syscall": "ptrace", "number": 101, "arch": "x86_64"}
    assert (collecting.status, collecting.stdout, collecting.files) == (Status.OK, b"out\n", {"/tmp/out": b"kept\n"})


def test_a_launcher_that_dies_fails_the_job_the_worker_supervises(start_worker, connect):
    # The job was handed over by the worker, which supervises it; its sandbox is still
    # the launcher's. The launcher's death kills it and fails it, as it fails the
    # launcher's own jobs, and leaves no process behind.
    worker = start_worker("--slots", "1", "--warm", "2")
    raw = connect(worker)
    with Client(worker.socket_path) as client:
        for attempt in range(10):
            await_offer(client)
            handed = client.stats()["direct_handovers"]
            raw.send({"type": "submit", "id": f"d{attempt}", "job": sleeper("1014")})
            raw.until(lambda m, i=f"d{attempt}": m.get("id") == i and m.get("event") == "started")
            if client.stats()["direct_handovers"] == handed + 1:
                break
            raw.send({"type": "cancel", "id": f"d{attempt}"})
            raw.until(lambda m, i=f"d{attempt}": m.get("id") == i and m.get("event") == "cancelled")
        else:
            raise AssertionError("no sleeper was handed over directly")
        assert wait_until(lambda: len(sleeping("1014")) == 1)
        (launcher,) = worker.launchers()
        os.kill(launcher, signal.SIGKILL)
        final = raw.until(lambda m, i=f"d{attempt}": m.get("id") == i and m.get("event") == "finished")
        assert final["result"]["status"] == "internal_error" and "died" in final["result"]["error"], final
        assert wait_until(lambda: not sleeping("1014"))
        assert run_directly(client, Job(cmd=["echo", "new"])).stdout == b"new\n"


def test_launchers_killed_with_an_offer_out_leak_nothing(start_worker):
    # A launcher's offer is fds in the worker: a dead launcher's are closed, and the
    # next launcher offers its own sandboxes.
    worker = start_worker("--slots", "1", "--warm", "2")
    fds = []
    with Client(worker.socket_path) as client:
        for _ in range(4):
            assert run_directly(client, Job(cmd=["true"])).status is Status.OK
            fds.append(len(os.listdir(f"/proc/{worker.process.pid}/fd")))
            (launcher,) = worker.launchers()
            os.kill(launcher, signal.SIGKILL)
            assert wait_until(lambda launcher=launcher: worker.launchers() not in ([], [launcher]))
        assert run_directly(client, Job(cmd=["echo", "new"])).stdout == b"new\n"
        assert client.stats()["launcher_restarts"] == 4
    # Each count may fall with or without the live launcher's one offer held (its job
    # channel, pipe ends, report pipe and pidfd, and at most 8 cgroup counters); a dead
    # launcher's offer left open would add as many per kill.
    assert fds[-1] <= fds[0] + OFFER_FDS + 8, fds


def test_an_offered_sandbox_that_died_is_given_back():
    # The worker finds the sandbox it was offered gone when it hands a job over: the
    # launcher gets the offer back and runs the job the usual way.
    async def main() -> tuple[Result | None, int, int]:
        launcher = LauncherProcess(0, [WarmSpec(1, "default")])
        slot = Slot(0, launcher)
        async with trio.open_nursery() as nursery:
            await nursery.start(launcher.keep_alive)
            await slot.run("first", Job(cmd=["true"]), nothing)
            await offered(launcher)
            (offer,) = launcher.offers
            os.kill(offer.init_pid, signal.SIGKILL)
            assert wait_until(lambda: exited(offer.init_pid))  # its end of the channel is closed then
            handed = slot.handovers
            after = await slot.run("after", Job(cmd=["echo", "ok"]), nothing)
            nursery.cancel_scope.cancel()
        return after, handed, slot.handovers

    after, handed_before, handed_after = trio.run(main)
    assert after is not None and after.status is Status.OK and after.stdout == b"ok\n", after
    assert handed_after == handed_before


def test_no_job_content_ends_a_launcher():
    """What the worker lets through but the launcher cannot run - an image removed since
    the worker looked (the worker's look is skipped here), a command too long to hand to
    a sandbox - comes back as invalid_job from the same launcher."""

    async def main() -> tuple[list[Result | ProtocolError | None], int]:
        launcher = LauncherProcess(0, [])
        slot = Slot(0, launcher)
        async with trio.open_nursery() as nursery:
            await nursery.start(launcher.keep_alive)
            outcomes = [await slot.run(f"j{index}", job, nothing) for index, job in enumerate((
                Job(cmd=["true"], image="nosuch/img:1"),
                Job(cmd=["true"], env={"BIG": "x" * 300_000}),
                Job(cmd=["echo", "ok"]),
            ))]
            nursery.cancel_scope.cancel()
        return outcomes, launcher.restarts

    (*refused, after), restarts = trio.run(main)
    assert [(error.code, error.field) for error in refused] == [  # type: ignore[union-attr]
        ("invalid_job", "image"), ("invalid_job", "cmd")], refused
    assert isinstance(after, Result) and after.stdout == b"ok\n" and restarts == 0, (after, restarts)


async def nothing() -> None:
    """A job's "started" that nobody waits for."""


async def offered(launcher: LauncherProcess) -> None:
    """Wait until the launcher has offered a sandbox (its reader task takes the offer as
    it comes: this looks after each of the scheduler's turns, for at most 30 s)."""
    with trio.fail_after(30):
        while not launcher.offers:
            await trio.sleep(0.001)


def stats(raw: Raw) -> dict:
    raw.send({"type": "stats"})
    return raw.until(lambda message: message.get("type") == "stats")


def test_a_job_cannot_reach_the_worker(start_worker, tmp_path):
    """The worker's unix socket is outside the job's mount namespace and its TCP port
    outside the job's network namespace."""
    token = tmp_path / "token"
    token.write_text("t0k3n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = start_worker("--slots", "1", "--tcp", f"127.0.0.1:{port}", "--token-file", str(token))
    code = (
        "import socket\n"
        f"u = socket.socket(socket.AF_UNIX)\n"
        f"try:\n    u.connect({worker.socket_path!r}); print('unix reached')\n"
        "except OSError as e: print('unix', e.errno)\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('tcp reached')\n"
        "except OSError as e: print('tcp', e.errno)\n"
    )
    with Client(worker.socket_path) as client:
        result = client.run(Job(cmd=["python3", "-c", code]))
    assert result.stdout == b"unix 2\ntcp 111\n", result  # ENOENT, ECONNREFUSED
