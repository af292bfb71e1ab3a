"""Files out: what a job names in ``collect`` is read out of its sandbox once every
process of the job is dead - a file, a directory's tree - on the host image and on an
image's overlay root, in a cold sandbox and a warm one the worker handed the job to,
through the runner, the worker and the command line. (The attacks are in
tests/hostile/test_collect.py.)"""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest
from test_warm import import_image
from test_worker import run_directly
from workerutil import SANDBOX_CLI

from sandbox.models import Collect, Job, Limits, Result, Status
from sandbox.runner import Runner
from worker.client import Client

pytestmark = pytest.mark.cgroup

# A file, a directory with a subdirectory, and (in it) a symlink, which is refused.
WRITE_TREE = """
printf 'binary\\000out' > /work/a.out
mkdir -p /work/out/sub
echo one > /work/out/x.txt
echo two > /work/out/sub/y.txt
ln -s /etc/passwd /work/out/link
"""
TREE = [Collect("/work/a.out"), Collect("/work/out/")]


def run_collecting(runner: Runner, script: str, collect: list[Collect], image: str = "host", **limits: object) -> Result:
    job = Job(cmd=["sh", "-c", script], image=image, collect=collect, limits=Limits(**limits),  # type: ignore[arg-type]
              require_cgroups=True)
    try:
        return runner.run(job)
    finally:
        runner.tidy()


def assert_tree(result: Result) -> None:
    assert result.status is Status.OK, result
    assert result.files == {"/work/a.out": b"binary\0out", "/work/out/x.txt": b"one\n", "/work/out/sub/y.txt": b"two\n"}
    assert result.file_errors == {"/work/out/link": "not_regular: symlink"}


def test_a_file_and_a_directory_are_collected(runner):
    assert_tree(run_collecting(runner, WRITE_TREE, TREE))


def test_a_job_that_names_nothing_gets_nothing(runner):
    result = run_collecting(runner, WRITE_TREE, [])
    assert result.status is Status.OK and result.files == {} and result.file_errors == {}


def test_the_whole_writable_area_and_missing_paths(runner):
    result = run_collecting(runner, "echo t > /tmp/t; echo w > /work/w",
                            [Collect("/work/"), Collect("/tmp/"), Collect("/work/none"), Collect("/work/gone/")])
    assert result.files == {"/work/w": b"w\n", "/tmp/t": b"t\n"}
    assert result.file_errors == {"/work/none": "missing", "/work/gone/": "missing"}


def test_files_of_mode_000_are_collected(runner):
    # The job's files belong to its own id; the supervisor's host user could not read
    # them. The sandbox init can (CAP_DAC_READ_SEARCH over the job's ids).
    script = ("echo secret > /work/locked; chmod 000 /work/locked; mkdir -p /work/shut/in; "
              "echo deep > /work/shut/in/f; chmod 000 /work/shut/in/f /work/shut/in /work/shut")
    result = run_collecting(runner, script, [Collect("/work/locked"), Collect("/work/shut/")])
    assert result.status is Status.OK, result
    assert result.files == {"/work/locked": b"secret\n", "/work/shut/in/f": b"deep\n"}, result.file_errors
    assert result.file_errors == {}


def test_caps_on_a_file_and_on_a_directory_total(runner):
    script = "head -c 1000 /dev/zero > /work/big; mkdir /work/d; head -c 600 /dev/zero > /work/d/a; " \
             "head -c 600 /dev/zero > /work/d/b"
    result = run_collecting(runner, script, [Collect("/work/big", max=999), Collect("/work/d/", max=1000)])
    assert result.file_errors["/work/big"] == "too_large: 1000 bytes over 999"
    # One of the two fits the directory's 1000 bytes, the other is refused.
    assert len([path for path in result.files if path.startswith("/work/d/")]) == 1
    refused = [reason for path, reason in result.file_errors.items() if path.startswith("/work/d/")]
    assert refused == ["too_large: 600 bytes over 400"], result.file_errors


def test_a_directory_named_as_a_file_and_the_other_way_round(runner):
    result = run_collecting(runner, "mkdir /work/d; echo > /work/f", [Collect("/work/d"), Collect("/work/f/")])
    assert result.file_errors == {"/work/d": "not_regular: directory", "/work/f/": "not_directory: regular file"}


def test_what_the_job_leaves_running_is_dead_before_collection(runner):
    # A background process would go on writing; the init kills it before it looks.
    script = "(while :; do echo x >> /work/grows; done) & sleep 0.2; exit 0"
    first = run_collecting(runner, script, [Collect("/work/grows")])
    assert first.status is Status.OK, first
    content = first.files["/work/grows"]
    assert content and set(content.split(b"\n")) <= {b"x", b""}


def test_a_killed_job_collects_nothing(runner):
    result = run_collecting(runner, "echo x > /work/f; sleep 30", [Collect("/work/f")], wall_time="300ms")
    assert result.status is Status.WALL_TIME_LIMIT
    assert result.files == {} and result.file_errors == {"/work/f": "not_collected: the job was killed (wall)"}


@pytest.mark.kernel
def test_collected_from_an_image_root(image_store):
    import_image(image_store, "collect:1", "one")
    runner = Runner()
    try:
        script = WRITE_TREE + "chmod 000 /work/a.out; echo up > /work/out/upper; cp /version /work/out/version"
        result = run_collecting(runner, script, TREE, image="collect:1")
    finally:
        runner.close()
    assert result.status is Status.OK, result
    assert result.files == {"/work/a.out": b"binary\0out", "/work/out/x.txt": b"one\n", "/work/out/sub/y.txt": b"two\n",
                            "/work/out/upper": b"up\n", "/work/out/version": b"one\n"}
    assert result.file_errors == {"/work/out/link": "not_regular: symlink"}


def test_through_the_worker_cold_and_handed_over(start_worker):
    worker = start_worker("--slots", "1", "--warm", "1")
    job = Job(cmd=["sh", "-c", WRITE_TREE], collect=TREE)
    with Client(worker.socket_path) as client:
        assert_tree(run_directly(client, job))
        cold = client.run(Job(cmd=["sh", "-c", WRITE_TREE], collect=TREE, limits=Limits(memory="300M")))
    assert_tree(cold)


def test_the_command_line_writes_beneath_collect_to_and_prints_base64(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    done = subprocess.run(
        [*SANDBOX_CLI, "run", "--collect", "/work/a.out", "--collect", "/work/out/:1M", "--collect-to", str(target),
         "--json", "--", "sh", "-c", WRITE_TREE],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {path: base64.b64decode(content) for path, content in data["files"].items()} == {
        "/work/a.out": b"binary\0out", "/work/out/x.txt": b"one\n", "/work/out/sub/y.txt": b"two\n"}
    assert data["file_errors"] == {"/work/out/link": "not_regular: symlink"}
    assert (target / "work" / "a.out").read_bytes() == b"binary\0out"
    assert (target / "work" / "out" / "sub" / "y.txt").read_bytes() == b"two\n"
    assert sorted(os.listdir(target / "work" / "out")) == ["sub", "x.txt"]


def test_submit_collects_through_the_worker_to_a_directory(start_worker, tmp_path):
    worker = start_worker("--slots", "1")
    done = subprocess.run(
        [*SANDBOX_CLI, "submit", "--socket", worker.socket_path, "--collect", "/work/out/", "--collect-to",
         str(tmp_path), "--", "sh", "-c", WRITE_TREE],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "sandbox: not collected: /work/out/link: not_regular: symlink" in done.stderr
    assert (tmp_path / "work" / "out" / "x.txt").read_bytes() == b"one\n"
    assert not (tmp_path / "work" / "a.out").exists()


def test_collect_to_never_follows_a_symlink_already_there(tmp_path):
    target = tmp_path / "out"
    outside = tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (target / "work").symlink_to(outside)
    done = subprocess.run(
        [*SANDBOX_CLI, "run", "--collect", "/work/a.out", "--collect-to", str(target), "--", "sh", "-c", WRITE_TREE],
        capture_output=True, text=True, timeout=120,
    )
    assert "sandbox: not written: /work/a.out" in done.stderr, done.stderr
    assert list(outside.iterdir()) == []


def test_collect_to_needs_an_existing_directory(tmp_path):
    done = subprocess.run(
        [*SANDBOX_CLI, "run", "--collect", "/work/a", "--collect-to", str(tmp_path / "none"), "--", "true"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 125 and "--collect-to: cannot open the directory" in done.stderr, done.stderr


def test_a_path_outside_the_writable_area_is_the_flags_error(tmp_path):
    done = subprocess.run([*SANDBOX_CLI, "run", "--collect", "/etc/passwd", "--", "true"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 125 and done.stderr.startswith("sandbox: --collect: "), done.stderr
