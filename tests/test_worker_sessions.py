"""Sessions through the worker and the CLI: the life cycle (create, exec, cp, logs, stop,
pause, resume, ls, rm), an exec's limit leaving the session usable, the idle TTL, and a
worker killed with sessions open leaving nothing behind once restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest
from hoststate import own_processes
from imagebuild import Entry, busybox_entries, layer_tar, oci_layout
from test_cleanup import reaped_orphans, sleeping, wait_until
from test_images_registry import cli as image_cli
from workerutil import SANDBOX_CLI, WorkerProcess

from sandbox.models import Job, Limits, SessionSpec, Status
from worker.client import Client, WorkerError
from worker.protocol import job_to_wire

pytestmark = pytest.mark.cgroup


def sh(script: str, **limits: object) -> Job:
    return Job(cmd=["sh", "-c", script], limits=Limits(**limits))  # type: ignore[arg-type]


def cli(worker: WorkerProcess, action: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*SANDBOX_CLI, "session", action, "--socket", worker.socket_path, *args],
                          capture_output=True, timeout=60)


def test_the_life_cycle_through_the_client(worker):
    with Client(worker.socket_path) as client:
        session = client.session_create(SessionSpec(limits=Limits(memory="256M")))
        assert client.session_exec(session, sh("echo one > /work/state")).status is Status.OK
        result = client.session_exec(session, sh("cat /work/state"))
        assert (result.status, result.stdout) == (Status.OK, b"one\n")
        [listed] = [s for s in client.session_list() if s["session"] == session]
        assert (listed["state"], listed["execs"], listed["image"]) == ("idle", 2, "host")
        logs = client.session_logs(session)
        assert [(entry["cmd"][-1], entry["status"]) for entry in logs] == [
            ("echo one > /work/state", "ok"), ("cat /work/state", "ok")]
        assert logs[1]["stdout"] == b"one\n"
        client.session_delete(session)
        assert session not in [s["session"] for s in client.session_list()]
        with pytest.raises(WorkerError) as refused:
            client.session_exec(session, sh("true"))
        assert refused.value.code == "unknown_session"


@pytest.mark.parametrize(("spec", "field"), [
    (SessionSpec(profile="../../etc/profile.toml"), "profile"),  # a worker runs its own profiles, never a file
    (SessionSpec(profile="nonesuch"), "profile"),
    (SessionSpec(image="not-pulled:1"), "image"),
])
def test_a_session_on_what_the_worker_lacks_is_refused(worker, spec, field):
    with Client(worker.socket_path) as client:
        with pytest.raises(WorkerError) as refused:
            client.session_create(spec)
        assert (refused.value.code, refused.value.field) == ("invalid_job", field)
        assert client.session_list() == []


def test_an_image_sessions_writable_layer_lives_between_execs(image_store, start_worker):
    layer = layer_tar(busybox_entries() + [Entry("motd", data=b"from the image\n")])
    done = image_cli("import", str(oci_layout(image_store / "layout", [layer])), "bb:1")
    assert done.returncode == 0, done.stderr
    worker = start_worker("--slots", "1")
    with Client(worker.socket_path) as client:
        session = client.session_create(SessionSpec(image="bb:1"))
        try:
            # (the job owns the image's root directory: a file of the image is replaced there)
            changed = client.session_exec(session, sh("rm /motd && echo changed > /motd && echo new > /new"))
            assert changed.status is Status.OK, changed
            seen = client.session_exec(session, sh("cat /motd /new"))
            assert seen.stdout == b"changed\nnew\n", seen
        finally:
            client.session_delete(session)
        other = client.run(Job(cmd=["sh", "-c", "cat /motd; ls /new"], image="bb:1"))
        assert other.stdout == b"from the image\n"  # the image itself is unchanged


def test_a_limit_in_one_exec_leaves_the_session_usable(worker):
    with Client(worker.socket_path) as client:
        session = client.session_create()
        try:
            client.session_exec(session, sh("echo kept > /work/mark"))
            spun = client.session_exec(session, sh("while :; do :; done", cpu_time="200ms"))
            assert spun.status is Status.TIME_LIMIT
            grown = client.session_exec(session, Job(
                cmd=["python3", "-c", "b = bytearray(256 << 20)"], limits=Limits(memory="64M")))
            assert grown.status is Status.MEMORY_LIMIT
            after = client.session_exec(session, sh("cat /work/mark"))
            assert (after.status, after.stdout) == (Status.OK, b"kept\n")
        finally:
            client.session_delete(session)


def test_stop_ends_the_running_exec_from_another_connection(worker):
    with Client(worker.socket_path) as client, Client(worker.socket_path) as other:
        session = client.session_create()
        try:
            results = []
            running = threading.Thread(target=lambda: results.append(client.session_exec(
                session, Job(cmd=["sleep", "1301"], limits=Limits(wall_time="60s")))))
            running.start()
            try:
                assert wait_until(lambda: sleeping("1301"), 20), "the exec never started"
                assert other.session_stop(session, grace_s=5)["stopped"] is True
            finally:
                running.join()
            assert results[0].signal_name == "SIGTERM"
            assert sleeping("1301") == []
            assert other.session_exec(session, sh("echo alive")).stdout == b"alive\n"
        finally:
            client.session_delete(session)


def test_pause_and_resume_through_the_client(worker):
    with Client(worker.socket_path) as client:
        session = client.session_create()
        try:
            assert client.session_pause(session)["state"] == "paused"
            with pytest.raises(WorkerError) as refused:
                client.session_exec(session, sh("true"))
            assert refused.value.code == "session_paused"
            assert client.session_resume(session)["state"] == "idle"
            assert client.session_exec(session, sh("true")).status is Status.OK
        finally:
            client.session_delete(session)


def test_an_idle_session_expires_after_its_ttl(worker, slowdown):
    with Client(worker.socket_path) as client:
        session = client.session_create(SessionSpec(ttl_s=0.5))
        assert client.session_exec(session, sh("true")).status is Status.OK
        deadline = time.monotonic() + 10 * slowdown
        while session in [s["session"] for s in client.session_list()]:
            assert time.monotonic() < deadline, "the idle session outlived its TTL"
            time.sleep(0.05)
        with pytest.raises(WorkerError) as refused:
            client.session_exec(session, sh("true"))
        assert refused.value.code == "unknown_session"


def test_a_session_whose_exec_lost_its_client_still_expires(worker, connect, slowdown):
    with Client(worker.socket_path) as client:
        session = client.session_create(SessionSpec(ttl_s=0.5))
        raw = connect(worker)
        raw.send({"type": "session_exec", "id": "left", "session": session,
                  "job": job_to_wire(sh("sleep 100", wall_time="200s"))})
        raw.until(lambda message: message.get("id") == "left" and message.get("event") == "started")
        raw.close()  # its exec is cancelled with it: the session goes idle, and its TTL ends it
        assert wait_until(lambda: session not in [s["session"] for s in client.session_list()],
                          timeout=30 * slowdown), client.session_list()


def test_the_life_cycle_through_the_cli(worker, tmp_path):
    created = cli(worker, "create", "--memory", "256M", "--ttl", "10m")
    assert created.returncode == 0, created.stderr
    session = created.stdout.decode().strip()
    assert session.startswith("s-")
    ran = cli(worker, "exec", session, "--", "sh", "-c", "echo hi > /work/a; echo done")
    assert (ran.returncode, ran.stdout) == (0, b"done\n"), ran.stderr
    (tmp_path / "in.txt").write_bytes(b"copied in\n")
    assert cli(worker, "cp", str(tmp_path / "in.txt"), f"{session}:/work/in.txt").returncode == 0
    assert cli(worker, "cp", f"{session}:/work/a", str(tmp_path / "out.txt")).returncode == 0
    assert (tmp_path / "out.txt").read_bytes() == b"hi\n"
    # A path as the user writes it (the result names it normalised); a missing file and
    # a directory are clear errors.
    assert cli(worker, "cp", f"{session}:/work/./a", str(tmp_path / "again.txt")).returncode == 0
    assert (tmp_path / "again.txt").read_bytes() == b"hi\n"
    for source, said in ((f"{session}:/work/none", b"/work/none: missing"), (f"{session}:/work/", b"not a directory")):
        refused = cli(worker, "cp", source, str(tmp_path / "x"))
        assert refused.returncode == 125 and b"Traceback" not in refused.stderr, refused.stderr
        assert said in refused.stderr, refused.stderr
    shown = cli(worker, "exec", "--json", session, "--", "cat", "/work/in.txt")
    assert json.loads(shown.stdout)["stdout"] == "copied in\n"
    failed = cli(worker, "exec", session, "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3
    listed = cli(worker, "ls", "--json")
    assert session in [entry["session"] for entry in json.loads(listed.stdout)]
    logs = cli(worker, "logs", session)
    assert b"exit 3" in logs.stdout and b"runtime_error" in logs.stdout
    for action in ("pause", "resume", "stop"):
        assert cli(worker, action, session).returncode == 0
    assert cli(worker, "rm", session).returncode == 0
    assert session not in cli(worker, "ls").stdout.decode()
    missing = cli(worker, "exec", session, "--", "true")
    assert missing.returncode == 125 and b"unknown_session" in missing.stderr


def test_a_killed_worker_leaves_no_session_behind(tmp_path, connect, cgroup_parents, slowdown):
    survivors = own_processes()
    records = tmp_path / "w.sock.sessions"  # beside its socket, as its file cache
    dead = WorkerProcess(tmp_path, "--slots", "2")
    launchers: list[int] = []
    try:
        with Client(dead.socket_path) as client:
            idle = client.session_create()
            client.session_exec(idle, sh("echo x > /work/x"))
            paused = client.session_create()
            client.session_pause(paused)
            busy = client.session_create()
            connect(dead).send({"type": "session_exec", "id": "e1", "session": busy,
                                "job": {"cmd": ["sleep", "1302"], "limits": {"wall_time": "60s"}}})
            assert wait_until(lambda: sleeping("1302"), 20 * slowdown), "the exec never started"
            assert sorted(path.stem for path in records.iterdir()) == sorted([idle, paused, busy])
            # The worker and its launchers die at once: nothing of theirs cleans up.
            launchers += dead.launchers()
            dead.process.send_signal(signal.SIGKILL)
            for pid in launchers:
                os.kill(pid, signal.SIGKILL)
            dead.process.wait()
    finally:
        dead.stop()
    assert wait_until(lambda: not sleeping("1302"), 20 * slowdown), "an exec outlived its worker"
    assert wait_until(lambda: reaped_orphans(survivors), 20 * slowdown), "processes outlived the worker"
    again = WorkerProcess(tmp_path, "--slots", "2")  # on the same socket: its launchers read the records
    try:
        with Client(again.socket_path) as client:
            assert client.session_list() == []
        left = [name for parent in cgroup_parents for name in os.listdir(parent)
                if name.startswith("job-") and int(name.split("-")[1]) in launchers]
        assert left == []
        assert list(records.iterdir()) == []
    finally:
        assert again.stop() == 0


def test_a_record_cleans_up_where_the_creators_pid_runs_again(tmp_path, cgroup_parents):
    """A dead launcher's cgroups are found by the pid in their names; once that pid runs
    again (here: this test's own), only the session's record says they are garbage."""
    directories = [os.path.join(parent, f"job-{os.getpid()}-1-abandoned") for parent in cgroup_parents]
    for directory in directories:
        os.mkdir(directory)
    gone = subprocess.Popen(["true"])
    gone.wait()
    records = tmp_path / "w.sock.sessions"
    records.mkdir()
    (records / "s-0123456789abcdef.json").write_text(json.dumps(
        {"launcher": [gone.pid, 1], "init": None, "cgroups": directories}))
    worker = WorkerProcess(tmp_path, "--slots", "1")
    try:
        assert not [directory for directory in directories if os.path.exists(directory)]
        assert list(records.iterdir()) == []
    finally:
        assert worker.stop() == 0
