"""Faults under load: a launcher or the whole worker SIGKILLed while jobs run.

In-flight jobs of a killed launcher end as internal_error, never a verdict blamed on the
program; later jobs are fine; nothing of the dead is left behind. A killed worker's
launchers see EOF on their channel, kill their sandboxes and exit; a restarted worker
reaps the dead one's cgroups and takes over its socket path.

Uninterruptible sleep: an unprivileged user cannot put a process into an unkillable D
state here (no FUSE device, no NFS, no hung block device inside a user namespace). The
killable variant - a vfork parent waiting for a stopped child - is the hostile case
``vfork_child_stops``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from test_cleanup import sleeping, wait_until
from workerutil import Raw, WorkerProcess, exited

from sandbox.models import Job
from worker.client import Client
from worker.protocol import job_to_wire

# Each in-flight job holds 32 MiB of tmpfs and a process tree when it is killed.
HEAVY = "head -c 32M /dev/zero > /work/ballast; sleep {marker} & sleep {marker}"


def _job_cgroups(parents: list[str]) -> list[str]:
    return [name for parent in parents for name in os.listdir(parent) if name.startswith("job-")]


def _submit_heavy(raw: Raw, ids: list[str], marker: str) -> None:
    for job_id in ids:
        raw.send({"type": "submit", "id": job_id, "job": job_to_wire(Job(cmd=["sh", "-c", HEAVY.format(marker=marker)]))})


def test_sigkill_launchers_mid_load(start_worker, connect, cgroup_parents):
    worker = start_worker("--slots", "2")
    raw = connect(worker)
    _submit_heavy(raw, ["a", "b"], "1011")
    assert wait_until(lambda: len(sleeping("1011")) == 4), "both jobs running"
    queued = [f"later-{n}" for n in range(6)]
    for job_id in queued:
        raw.send({"type": "submit", "id": job_id, "job": job_to_wire(Job(cmd=["echo", job_id]))})
    for pid in worker.launchers():
        os.kill(pid, signal.SIGKILL)
    finals = {}
    while len(finals) < 2 + len(queued):
        message = raw.until(lambda m: m.get("event") == "finished")
        finals[message["id"]] = message["result"]
    for job_id in ("a", "b"):
        assert finals[job_id]["status"] == "internal_error" and "died" in finals[job_id]["error"], finals[job_id]
    for job_id in queued:
        assert finals[job_id]["status"] == "ok" and finals[job_id]["stdout"] == f"{job_id}\n".encode()
    assert wait_until(lambda: not sleeping("1011"))
    assert wait_until(lambda: not _job_cgroups(cgroup_parents)), _job_cgroups(cgroup_parents)


def test_sigkill_worker_mid_load_then_restart(tmp_path: Path, cgroup_parents):
    first = WorkerProcess(tmp_path, "--slots", "2")
    try:
        raw = Raw(first.socket_path)
        _submit_heavy(raw, ["a", "b", "queued-1", "queued-2"], "1012")
        assert wait_until(lambda: len(sleeping("1012")) == 4), "two jobs running"
        launchers = first.launchers()
        first.process.kill()
    finally:
        first.stop()
        raw.close()
    # Orphaned launchers notice EOF, kill their sandboxes and exit; nothing keeps running.
    assert wait_until(lambda: all(exited(pid) for pid in launchers)), "launchers outlived the worker"
    assert wait_until(lambda: not sleeping("1012")), "sandboxes outlived the worker"
    second = WorkerProcess(tmp_path, "--slots", "2")  # same socket path: the stale socket is replaced
    try:
        with Client(second.socket_path) as client:
            result = client.run(Job(cmd=["echo", "restarted"]))
        assert result.stdout == b"restarted\n", result
        assert wait_until(lambda: not _job_cgroups(cgroup_parents)), _job_cgroups(cgroup_parents)
    finally:
        assert second.stop() == 0, second.log_path.read_text()
