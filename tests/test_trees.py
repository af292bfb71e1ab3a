"""Trees end to end: a directory put once into the worker's cache as a tar, unpacked
there once, and mounted read-only by id into any number of jobs - the same inodes in
every job, never a copy, no host path in a job's mount table - evicted and leased like
files; hostile tars refused with nothing kept."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from imagebuild import busybox_entries, layer_tar, oci_layout
from test_file_cache import cache_dir, cancel
from test_images_registry import cli

from sandbox.models import Job, Mount, Pipe, Status
from worker.client import Client, WorkerError, tree_tar
from worker.protocol import job_to_wire

MIB = 1 << 20
MODULES = 300

# What each job reports of the tree: its module's answer, the inode of every file it
# reads (the same in every job, and the cache's own), the symlink's content, a write's
# error, and whether its mount table names the cache.
PROBE = r"""
import errno, json, os, sys
sys.path.insert(0, "/work/venv")
import pkg
cache = sys.argv[1]
inodes = {name: os.stat(f"/work/venv/pkg/{name}").st_ino for name in sorted(os.listdir("/work/venv/pkg"))}
try:
    open("/work/venv/pkg/new.py", "w")
    write = "written"
except OSError as exc:
    write = errno.errorcode[exc.errno]
mountinfo = open("/proc/self/mountinfo").read()
print(json.dumps({"answer": pkg.answer(), "inodes": inodes, "link": open("/work/venv/latest").read(),
                  "write": write, "leaks": cache in mountinfo or "/trees/" in mountinfo,
                  "line": [line for line in mountinfo.splitlines() if " /work/venv " in line]}))
"""


def make_tree(root: Path) -> Path:
    """A package of MODULES modules and a symlink inside the tree."""
    package = root / "pkg"
    package.mkdir(parents=True)
    for index in range(MODULES):
        (package / f"m{index}.py").write_text(f"VALUE = {index}\n")
    (package / "__init__.py").write_text(
        "import importlib\n"
        f"def answer():\n    return sum(importlib.import_module(f'pkg.m{{i}}').VALUE for i in range({MODULES}))\n")
    (root / "latest").symlink_to("pkg/m7.py")
    return root


def probe(tree_id: str, cache: Path) -> Job:
    return Job(cmd=["python3", "-c", PROBE, str(cache)], mounts=[Mount("/work/venv", tree_id)])


def test_a_tree_put_once_is_mounted_read_only_into_many_jobs(start_worker, tmp_path):
    # Warm sandboxes too: a job with mounts takes one through its launcher (never the
    # worker's direct hand-over, which has no tree to give it).
    worker = start_worker("--slots", "2", "--warm", "2")
    cache = cache_dir(worker)
    with Client(worker.socket_path) as client:
        tree_id = client.put_tree(make_tree(tmp_path / "venv"))
        assert tree_id.startswith("tree:sha256:")
        assert client.put_tree(tree_tar(tmp_path / "venv")) == tree_id  # the same tar: the same tree, kept once
        on_host = cache / "trees" / tree_id.removeprefix("tree:sha256:")
        host_inodes = {path.name: path.stat().st_ino for path in sorted((on_host / "pkg").iterdir())}
        reports = []
        for _ in range(20):
            result = client.run(probe(tree_id, cache))
            assert result.status is Status.OK, result
            reports.append(json.loads(result.stdout))
        stats = client.stats()["file_cache"]
    first = reports[0]
    assert first["answer"] == sum(range(MODULES))
    assert first["link"] == "VALUE = 7\n"  # the symlink inside the tree, followed in the job
    assert first["write"] == "EROFS"
    assert not first["leaks"], first["line"]
    assert first["line"] and " ro," in first["line"][0] and "nosuid" in first["line"][0]
    # Not copied: every job reads the cache's own inodes.
    assert first["inodes"] == host_inodes
    # (Each job's mountinfo line has its own mount ids and device: the rest is the same.)
    assert all({**report, "line": None} == {**first, "line": None} for report in reports)
    assert (stats["entries"], stats["bytes"]) == (1, sum(path.stat().st_size for path in on_host.rglob("*.py")))


def test_two_jobs_mount_the_same_tree_at_once(worker, tmp_path):
    """A group's members run at once, each in a sandbox of its own: one sends what it
    reads of the tree, the other compares it with what it reads there itself."""
    with Client(worker.socket_path) as client:
        tree_id = client.put_tree(make_tree(tmp_path / "venv"))
        mounts = [Mount("/tmp/t", tree_id)]
        results = client.group(
            [Job(cmd=["cat", "/tmp/t/pkg/m42.py"], mounts=mounts),
             Job(cmd=["sh", "-c", "cat > /work/got && cmp /work/got /tmp/t/pkg/m42.py && cat /work/got"],
                 mounts=mounts)],
            [Pipe.of([0, "stdout"], [1, "stdin"])])
    assert [result.status for result in results] == [Status.OK, Status.OK], results
    assert results[1].stdout == b"VALUE = 42\n"


def test_a_tree_is_mounted_into_a_job_on_an_image(image_store, start_worker, tmp_path):
    """An image's init mounts it after its pivot into the image's root, on its overlay."""
    done = cli("import", str(oci_layout(image_store / "layout", [layer_tar(busybox_entries())])), "bb:1")
    assert done.returncode == 0, done.stderr
    worker = start_worker("--slots", "1")
    with Client(worker.socket_path) as client:
        tree_id = client.put_tree(make_tree(tmp_path / "venv"))
        result = client.run(Job(cmd=["sh", "-c", "cat /tmp/t/latest; touch /tmp/t/x; grep -c /trees/ /proc/self/mountinfo"],
                                image="bb:1", mounts=[Mount("/tmp/t/", tree_id)]))
    assert result.stdout == b"VALUE = 7\n0\n", result
    assert b"Read-only file system" in result.stderr


def tar_of(*entries: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for entry in entries:
            archive.addfile(entry, io.BytesIO(data) if entry.isreg() else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(("hostile", "why"), [
    (entry("/etc/evil"), "an absolute path"),
    (entry("a/../../evil"), "'..'"),
    (entry("out", tarfile.SYMTYPE, "../../etc/passwd"), "out of the tree"),
    (entry("abs", tarfile.SYMTYPE, "/etc/passwd"), "not to a path in the tree"),
    (entry("null", tarfile.CHRTYPE), "not a regular file, directory or symlink"),
    (entry("hard", tarfile.LNKTYPE, "ok"), "not a regular file, directory or symlink"),
])
def test_a_hostile_tar_is_refused_and_nothing_is_kept(worker, hostile, why):
    with Client(worker.socket_path) as client:
        with pytest.raises(WorkerError) as caught:
            client.put_tree(tar_of(entry("ok"), hostile))
        assert caught.value.code == "bad_tree"
        assert why in str(caught.value) and hostile.name in str(caught.value)
        stats = client.stats()["file_cache"]
        assert (stats["entries"], stats["bytes"], stats["uploading"]) == (0, 0, 0)
    cache = cache_dir(worker)
    assert os.listdir(cache / "trees") == [] and os.listdir(cache / "partial") == []


def test_a_tar_naming_a_path_the_kernel_takes_none_for_is_refused(worker):
    nul = entry("nul")
    nul.pax_headers = {"path": "a\x00b"}  # (a pax header carries the NUL a tar header cannot)
    with Client(worker.socket_path) as client:
        with pytest.raises(WorkerError) as caught:
            client.put_tree(tar_of(entry("ok"), nul))
        assert caught.value.code == "bad_tree" and "null byte" in str(caught.value)
        stats = client.stats()["file_cache"]
        assert (stats["entries"], stats["bytes"], stats["uploading"]) == (0, 0, 0)
        assert client.ping()["type"] == "pong"  # the worker goes on (the fixture wants it to stop with 0)


def test_an_unknown_tree_is_invalid_job_naming_the_mount(worker):
    with Client(worker.socket_path) as client, pytest.raises(WorkerError) as caught:
        client.run(Job(cmd=["true"], mounts=[Mount("/work/a", "tree:sha256:" + "0" * 64)]))
    assert (caught.value.code, caught.value.field) == ("invalid_job", "mounts.0.tree_id")


def test_a_tree_is_evicted_and_leased_like_a_file(start_worker, connect, tmp_path):
    worker = start_worker("--slots", "2", "--file-cache-size", "3M")
    raw = connect(worker)
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "blob").write_bytes(os.urandom(MIB))
    with Client(worker.socket_path) as client:
        tree_id = client.put_tree(tmp_path / "big")
        assert client.stats()["file_cache"]["bytes"] == MIB  # its unpacked size
        hold = Job(cmd=["sleep", "120"], mounts=[Mount("/work/big", tree_id)])
        raw.send({"type": "submit", "id": "hold", "job": job_to_wire(hold)})
        raw.until(lambda m: m.get("id") == "hold" and m.get("event") == "started")
        client.put_file(os.urandom(MIB))
        client.put_file(os.urandom(MIB))
        client.put_file(os.urandom(MIB))  # evicts a file: the tree is leased
        assert client.stats()["file_cache"]["evictions"] == 1
        assert client.del_file(tree_id) is False  # it goes when the job mounting it ends
        with pytest.raises(WorkerError) as caught:
            client.run(Job(cmd=["true"], mounts=[Mount("/work/big", tree_id)]))
        assert (caught.value.code, caught.value.field) == ("invalid_job", "mounts.0.tree_id")
        on_host = cache_dir(worker) / "trees" / tree_id.removeprefix("tree:sha256:")
        assert on_host.is_dir()
        cancel(raw, "hold")
        assert not on_host.exists()

        again = client.put_tree(tmp_path / "big")  # unleased now: evicted for room like a file
        assert again == tree_id
        for _ in range(3):
            client.put_file(os.urandom(MIB))
        with pytest.raises(WorkerError) as caught:
            client.run(Job(cmd=["true"], mounts=[Mount("/work/big", tree_id)]))
        assert caught.value.field == "mounts.0.tree_id"
        assert os.listdir(cache_dir(worker) / "trees") == []
