"""Host binds and named volumes, end to end on the real kernel: a bind read-only by
default and writable on request, opened with no symlink followed, no host path in the
job's mount table for a read-only one; a volume kept between jobs, the job's own files
while it runs, one read-write user or many read-only ones at once; `sandbox volume`
listing, removing and pruning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import volumes
from sandbox.errors import JobError, VolumeBusy
from sandbox.models import Job, Limits, Mount, Status
from worker.client import Client, WorkerError

# What a job reports of a mount: what it read, a write's outcome, its own uid and the
# owner it sees on the mount's root, and the mount table's line for it.
PROBE = r"""
import errno, json, os, sys
where, host = sys.argv[1], sys.argv[2]
try:
    read = open(f"{where}/hello.txt").read()
except OSError as exc:
    read = errno.errorcode[exc.errno]
try:
    with open(f"{where}/from-job.txt", "w") as handle:
        handle.write("written inside\n")
    write = "written"
except OSError as exc:
    write = errno.errorcode[exc.errno]
mountinfo = open("/proc/self/mountinfo").read()
print(json.dumps({"read": read, "write": write, "uid": os.getuid(), "owner": os.stat(where).st_uid,
                  "leaks": host in mountinfo,
                  "line": [line for line in mountinfo.splitlines() if f" {where} " in line]}))
"""


# What a full volume may hold past its cap: its directory's own block, which the host's
# filesystem counts and the job's tmpfs layer does not.
DIRECTORY_BLOCK = 4096


def probe(runner, mount: Mount, host: str = "/nonexistent") -> dict:
    result = runner.run(Job(cmd=["python3", "-c", PROBE, mount.path, host], mounts=[mount], require_cgroups=True))
    assert result.status is Status.OK, result
    return json.loads(result.stdout)


@pytest.fixture(autouse=True)
def tidy(runner):
    """The sandboxes these tests ran cleaned up before the leak check looks."""
    yield
    runner.tidy()


@pytest.fixture
def volume_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The volumes' directory of this test; its volumes pruned after it (their files
    belong to job ids, which only a zygote can give back for removal)."""
    root = tmp_path / "volumes"
    monkeypatch.setenv("SANDBOX_VOLUMES", str(root))
    yield root
    pruned = cli("volume", "prune", env={"SANDBOX_VOLUMES": str(root)})
    assert pruned.returncode == 0, pruned.stderr


def host_dir(tmp_path: Path, mode: int = 0o755) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    (directory / "hello.txt").write_text("from the host\n")
    directory.chmod(mode)
    return directory


def test_a_bind_is_read_only_by_default_and_shows_no_host_path(runner, tmp_path):
    directory = host_dir(tmp_path)
    report = probe(runner, Mount("/work/data", bind=str(directory)), str(tmp_path))
    assert report["read"] == "from the host\n"
    assert report["write"] == "EROFS"
    assert not report["leaks"], report["line"]
    assert not (directory / "from-job.txt").exists()


def test_a_read_write_bind_writes_reach_the_host(runner, tmp_path):
    # The job is a user of its own, not the directory's owner: the directory lets it in.
    directory = host_dir(tmp_path, 0o777)
    report = probe(runner, Mount("/work/data", bind=str(directory), writable=True))
    assert report["read"] == "from the host\n"
    assert report["write"] == "written"
    assert (directory / "from-job.txt").read_text() == "written inside\n"
    assert "nosuid" in report["line"][0] and "nodev" in report["line"][0]


@pytest.mark.parametrize("how", ["the directory", "a component"])
def test_a_bind_through_a_symlink_is_refused(runner, tmp_path, how):
    directory = host_dir(tmp_path)
    (tmp_path / "link").symlink_to(directory if how == "the directory" else tmp_path)
    source = tmp_path / "link" if how == "the directory" else tmp_path / "link" / "data"
    with pytest.raises(JobError, match="symlink") as caught:
        runner.run(Job(cmd=["true"], mounts=[Mount("/work/data", bind=str(source))]))
    assert caught.value.field == "mounts.0.bind"


def test_a_volume_outlives_its_jobs_and_is_each_writers_own(runner, volume_root):
    first = runner.run(Job(cmd=["sh", "-c", "id -u; mkdir -p /work/cache/sub && echo kept > /work/cache/sub/f"],
                           mounts=[Mount("/work/cache", volume="cache")], require_cgroups=True))
    assert first.status is Status.OK, first
    second = runner.run(Job(cmd=["sh", "-c", "cat /work/cache/sub/f && stat -c %u /work/cache/sub/f && "
                                             "echo more >> /work/cache/sub/f && rm -r /work/cache/sub"],
                            mounts=[Mount("/work/cache", volume="cache")], require_cgroups=True))
    assert second.status is Status.OK, second
    kept, owner = second.stdout.decode().split()
    assert kept == "kept"
    assert owner == "1000"  # the job's own uid: the files were given to the second job's id
    assert (volume_root / "cache").is_dir() and not (volume_root / "cache" / "sub").exists()


def test_a_read_only_volume_is_read_only(runner, volume_root):
    runner.run(Job(cmd=["sh", "-c", "echo v1 > /work/v/version"], mounts=[Mount("/work/v", volume="ro")]))
    result = runner.run(Job(cmd=["sh", "-c", "cat /work/v/version; echo x > /work/v/version"],
                            mounts=[Mount("/work/v", volume="ro", writable=False)]))
    assert result.status is Status.RUNTIME_ERROR
    assert result.stdout == b"v1\n" and b"Read-only" in result.stderr


def test_a_read_write_volume_has_one_user_at_a_time(runner, volume_root):
    """A running job holds its volume: a second read-write or read-only user is refused
    while it runs, and taken once it ended; read-only users share."""
    started = threading.Event()
    cancel_r, cancel_w = os.pipe()
    outcome = {}

    def hold() -> None:
        outcome["result"] = runner.run(Job(cmd=["sleep", "60"], mounts=[Mount("/work/v", volume="shared")]),
                                       cancel_fd=cancel_r, on_started=started.set)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert started.wait(60)
        for writable in (True, False):
            with pytest.raises(VolumeBusy) as caught:
                runner.run(Job(cmd=["true"], mounts=[Mount("/work/v", volume="shared", writable=writable)]))
            assert caught.value.code == "volume_busy" and caught.value.field == "mounts.0.volume"
        assert volumes.in_use(volume_root, "shared")
    finally:
        os.write(cancel_w, b"x")
        holder.join()
        os.close(cancel_r)
        os.close(cancel_w)
    assert outcome["result"].status is Status.CANCELLED
    assert not volumes.in_use(volume_root, "shared")
    # Read-only users share: one holds it while another runs.
    shared = volumes.lock(volume_root, "shared", writable=False)
    try:
        result = runner.run(Job(cmd=["ls", "/work/v"], mounts=[Mount("/work/v", volume="shared", writable=False)]))
        assert result.status is Status.OK, result
        with pytest.raises(VolumeBusy):
            runner.run(Job(cmd=["true"], mounts=[Mount("/work/v", volume="shared")]))
    finally:
        os.close(shared)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_volume_ls_rm_and_prune_through_the_cli(volume_root):
    env = {"SANDBOX_VOLUMES": str(volume_root)}
    for name in ("keep", "gone", "pruned"):
        made = cli("run", "--volume", f"{name}:/work/v", "--", "sh", "-c", "mkdir -p /work/v/d && "
                   "echo data > /work/v/d/f && chmod 500 /work/v/d", env=env)
        assert made.returncode == 0, made.stderr
    listed = cli("volume", "ls", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [entry["name"] for entry in json.loads(listed.stdout)] == ["gone", "keep", "pruned"]
    assert all(entry["size_bytes"] > 0 and not entry["in_use"] for entry in json.loads(listed.stdout))
    # rm: the job's files (its id's, a directory it made unwritable) go too.
    removed = cli("volume", "rm", "gone", env=env)
    assert removed.returncode == 0, removed.stderr
    assert not (volume_root / "gone").exists()
    missing = cli("volume", "rm", "gone", env=env)
    assert missing.returncode == 125 and "no volume named gone" in missing.stderr
    # prune: every volume no job uses; one in use stays.
    held = volumes.lock(volume_root, "keep", writable=False)
    try:
        pruned = cli("volume", "prune", env=env)
    finally:
        os.close(held)
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.split() == ["pruned"]
    assert sorted(path.name for path in volume_root.iterdir() if not path.name.startswith(".")) == ["keep"]


def test_through_the_worker_a_bind_is_allowed_only_below_allow_bind(start_worker, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    directory = host_dir(allowed)
    (tmp_path / "other").mkdir()
    worker = start_worker("--slots", "2", "--allow-bind", str(allowed))
    with Client(worker.socket_path) as client:
        result = client.run(Job(cmd=["cat", "/work/d/hello.txt"], mounts=[Mount("/work/d", bind=str(directory))]))
        assert result.status is Status.OK, result
        assert result.stdout == b"from the host\n"
        for outside in (tmp_path / "other", tmp_path, Path(str(allowed) + "-sibling")):
            with pytest.raises(WorkerError) as caught:
                client.run(Job(cmd=["true"], mounts=[Mount("/work/d", bind=str(outside))]))
            assert (caught.value.code, caught.value.field) == ("bind_not_allowed", "mounts.0.bind")
        # Below an allowed directory, but through a symlink there: refused as the CLI refuses it.
        (allowed / "link").symlink_to(tmp_path / "other")
        with pytest.raises(WorkerError) as caught:
            client.run(Job(cmd=["true"], mounts=[Mount("/work/d", bind=str(allowed / "link"))]))
        assert caught.value.code == "invalid_job" and "symlink" in str(caught.value)


def test_through_the_worker_a_volume_held_read_write_is_busy(start_worker, tmp_path, volume_root):
    """A job holds its read-write volume while it runs, whichever door the next job
    comes through: volume_busy until it ends, then the next job has it. The holder
    waits on a FIFO the test writes, bound read-write: a bind of the directory itself,
    where the FIFO is the host's (an overlay's FIFO would be a pipe of its own)."""
    control = tmp_path / "control"
    control.mkdir()
    os.mkfifo(control / "go", 0o666)
    worker = start_worker("--slots", "2", "--allow-bind", str(control))
    holder = Job(cmd=["sh", "-c", "echo held > /work/v/mark; echo ready; read line < /work/ctl/go"],
                 mounts=[Mount("/work/v", volume="jobs"), Mount("/work/ctl", bind=str(control), writable=True)])
    ready = threading.Event()
    outcome = {}

    def hold() -> None:
        with Client(worker.socket_path) as client:
            outcome["result"] = client.run(holder, on_output=lambda stream, offset, data: ready.set())

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert ready.wait(60)
        with Client(worker.socket_path) as client:
            with pytest.raises(WorkerError) as caught:
                client.run(Job(cmd=["true"], mounts=[Mount("/work/v", volume="jobs")]))
            assert (caught.value.code, caught.value.field) == ("volume_busy", "mounts.0.volume")
            with open(control / "go", "w") as fifo:
                fifo.write("go\n")
            thread.join()
            assert outcome["result"].status is Status.OK, outcome["result"]
            after = client.run(Job(cmd=["cat", "/work/v/mark"], mounts=[Mount("/work/v", volume="jobs")]))
            assert after.status is Status.OK and after.stdout == b"held\n", after
    finally:
        if thread.is_alive():
            with open(control / "go", "w") as fifo:
                fifo.write("go\n")
            thread.join()


def test_a_volume_cap_is_enospc_inside_and_the_host_holds_at_most_the_cap(runner, volume_root):
    cap = 1 << 20
    write = ("import errno, sys\ntry:\n    with open(sys.argv[1], 'wb') as f:\n        for _ in range(64):\n"
             "            f.write(bytes(64 << 10))\n            f.flush()\n    print('written')\n"
             "except OSError as exc:\n    print(errno.errorcode[exc.errno])\n")
    first = runner.run(Job(cmd=["python3", "-c", write, "/work/v/first"],
                           mounts=[Mount("/work/v", volume="capped", size="1M")]))
    assert first.status is Status.OK and first.stdout == b"ENOSPC\n", first
    second = runner.run(Job(cmd=["sh", "-c", "grep -c ' /work/v ' /proc/self/mountinfo; "
                                             f"grep -c '{volume_root}' /proc/self/mountinfo; "
                                             "python3 -c \"$0\" /work/v/second", write],
                            mounts=[Mount("/work/v", volume="capped", size=cap)]))
    assert second.stdout == b"1\n0\nENOSPC\n", second  # mounted, naming no host path; still full
    [volume] = volumes.list_volumes(volume_root)
    assert cap // 2 < volume.size_bytes <= cap + DIRECTORY_BLOCK, volume
    assert (volume_root / "capped" / "first").stat().st_size > cap // 2


def test_a_jobs_removals_opaque_directories_and_renames_reach_its_volume(runner, volume_root):
    make = ("mkdir -p keep gone dir/sub && echo a > keep/a && echo x > gone/x && echo y > dir/sub/y && "
            "echo old > f && ln -s keep/a link")
    change = ("rm -r gone && rm -r dir && mkdir dir && echo z > dir/z && mv f g && echo changed > keep/a && "
              "rm link && echo plain > link")
    for script in (make, change):
        result = runner.run(Job(cmd=["sh", "-c", f"cd /work/v && {script}"], mounts=[Mount("/work/v", volume="m")]))
        assert result.status is Status.OK, result
    on_host = volume_root / "m"
    found = sorted(str(path.relative_to(on_host)) for path in on_host.rglob("*"))
    assert found == ["dir", "dir/z", "g", "keep", "keep/a", "link"]
    assert (on_host / "keep" / "a").read_text() == "changed\n" and (on_host / "g").read_text() == "old\n"
    assert not (on_host / "link").is_symlink() and (on_host / "link").read_text() == "plain\n"


def test_a_volume_layer_counts_against_the_jobs_memory(runner, volume_root):
    """The layer's tmpfs pages are charged to the job that writes them: a volume's cap
    is no way around the memory limit."""
    result = runner.run(Job(cmd=["sh", "-c", "head -c 200M /dev/zero > /work/v/big"],
                            mounts=[Mount("/work/v", volume="big", size="1G")], limits=Limits(memory="64M"),
                            require_cgroups=True))
    assert result.status is Status.MEMORY_LIMIT, result


def test_a_group_naming_one_volume_twice_read_write_never_runs(runner, volume_root):
    """Its members are started together: the second is refused, and the first, already
    given a layer, runs nothing and changes nothing; the volume is free afterwards."""
    writer = Job(cmd=["sh", "-c", "echo x > /work/v/x"], mounts=[Mount("/work/v", volume="g")])
    with pytest.raises(VolumeBusy):
        runner.run_group([writer, writer], [])
    assert list((volume_root / "g").iterdir()) == [] and not volumes.in_use(volume_root, "g")
    [result] = runner.run_group([writer], [])
    assert result.status is Status.OK and (volume_root / "g" / "x").read_text() == "x\n"
