"""Trees without a sandbox: what a job may mount and where, the wire form of its mounts,
the rules a tree's tar must follow, and the cache's bookkeeping of trees."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.errors import JobError
from sandbox.models import MAX_FILES, MAX_MOUNTS, Blob, InputFile, Job, Mount
from worker.client import tree_tar
from worker.filecache import FileCache, tree_path
from worker.protocol import ProtocolError, file_id, job_from_wire, job_to_wire, put_chunk
from worker.trees import TreeError, unpack_tree

TREE = "tree:sha256:" + "a" * 64
OTHER = "tree:sha256:" + "b" * 64


def field_of(**job: object) -> str | None:
    with pytest.raises(JobError) as caught:
        Job(cmd=["true"], **job)  # type: ignore[arg-type]
    return caught.value.field


def test_a_mount_lies_in_the_writable_area_apart_from_other_mounts_and_input_files() -> None:
    assert Job(cmd=["true"], mounts=[Mount("/work/venv/", TREE)]).mounts[0].path == "/work/venv"
    assert field_of(mounts=[Mount("/opt/venv", TREE)]) == "mounts.0.path"
    assert field_of(mounts=[Mount("/work/a", TREE), Mount("/work/../etc", TREE)]) == "mounts.1.path"
    assert field_of(mounts=[Mount("/work", TREE)]) == "mounts.0.path"
    assert field_of(mounts=[Mount("/work/a", TREE), Mount("/work/a/b", OTHER)]) == "mounts.1.path"
    assert field_of(mounts=[Mount("/tmp/a", TREE), Mount("/tmp/a", TREE)]) == "mounts.1.path"
    assert field_of(files=[InputFile("/work/a/x", Blob(data=b""))], mounts=[Mount("/work/a", TREE)]) == "mounts.0.path"
    assert field_of(mounts=[Mount("/work/a", "sha256:" + "a" * 64)]) == "mounts.0.tree_id"
    assert field_of(mounts=[Mount("/work/a")]) == "mounts.0.tree_id"
    assert field_of(mounts=[Mount(f"/work/{i}", TREE) for i in range(MAX_MOUNTS + 1)]) == "mounts"
    files = [InputFile(f"/work/f{i}", Blob(data=b"")) for i in range(MAX_FILES)]
    assert field_of(files=files, mounts=[Mount("/work/t", TREE)]) == "mounts"  # one fd each, in one message


def test_mounts_on_the_wire() -> None:
    job = Job(cmd=["true"], mounts=[Mount("/work/venv", TREE)])
    wire = job_to_wire(job)
    assert wire["mounts"] == [{"path": "/work/venv", "tree_id": TREE}]
    assert job_from_wire(wire).mounts == job.mounts
    assert "mounts" not in job_to_wire(Job(cmd=["true"]))
    with pytest.raises(ValueError):
        job_to_wire(Job(cmd=["true"], mounts=[Mount("/work/a", host_dir="/srv/tree")]))
    for mounts, field in (([{"path": "/work/a", "host_dir": "/"}], "mounts.0"),
                          ([{"path": "/etc", "tree_id": TREE}], "mounts.0.path"),
                          ("x", "mounts")):
        with pytest.raises(ProtocolError) as caught:
            job_from_wire({"cmd": ["true"], "mounts": mounts})
        assert (caught.value.code, caught.value.field) == ("invalid_job", field)


def test_a_put_says_tree_and_del_file_takes_a_tree_id() -> None:
    chunk = put_chunk({"id": "u", "offset": 0, "data": b"", "last": True, "tree": True, "file_id": TREE})
    assert (chunk.tree, chunk.expected) == (True, TREE)
    assert file_id({"file_id": TREE}) == TREE
    with pytest.raises(ProtocolError):
        put_chunk({"id": "u", "offset": 0, "data": b"", "last": True, "tree": 1})
    with pytest.raises(ProtocolError):
        file_id({"file_id": "tree:sha256:xyz"})


def tar_of(*entries: tuple[str, bytes, str]) -> bytes:
    """(name, tar type, link target or content)"""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            data = extra.encode() if kind == tarfile.REGTYPE else b""
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = extra
            info.size, info.mode = len(data), 0o4777 if name.endswith(".sh") else 0o600
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpacked(tmp_path: Path, tar: bytes, max_bytes: int = 1 << 20, max_entries: int = 100) -> Path:
    (tmp_path / "t.tar").write_bytes(tar)
    unpack_tree(str(tmp_path / "t.tar"), str(tmp_path / "tree"), max_bytes, max_entries)
    return tmp_path / "tree"


def test_a_tree_keeps_files_directories_and_links_inside_it_with_modes_for_every_job(tmp_path: Path) -> None:
    tree = unpacked(tmp_path, tar_of(("d/a.txt", tarfile.REGTYPE, "a"), ("d/run.sh", tarfile.REGTYPE, "x"),
                                     ("d/e", tarfile.DIRTYPE, ""), ("d/e/up", tarfile.SYMTYPE, "../a.txt"),
                                     ("top", tarfile.SYMTYPE, "d/e/./../a.txt")))
    assert (tree / "d" / "e" / "up").read_text() == "a" and (tree / "top").read_text() == "a"
    assert stat.S_IMODE((tree / "d" / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tree / "d" / "run.sh").stat().st_mode) == 0o755  # executable kept, setuid not
    assert stat.S_IMODE((tree / "d" / "e").stat().st_mode) == 0o755


@pytest.mark.parametrize(("entries", "why"), [
    ([("/abs", tarfile.REGTYPE, "")], "an absolute path"),
    ([("a/../../b", tarfile.REGTYPE, "")], "'..'"),
    ([("d/l", tarfile.SYMTYPE, "../../x")], "out of the tree"),
    ([("l", tarfile.SYMTYPE, "/etc")], "not to a path in the tree"),
    ([("l", tarfile.SYMTYPE, "d"), ("l/x", tarfile.REGTYPE, "")], "its parent is a symlink"),
    ([("f", tarfile.REGTYPE, ""), ("h", tarfile.LNKTYPE, "f")], "not a regular file, directory or symlink"),
    ([("c", tarfile.CHRTYPE, "")], "not a regular file, directory or symlink"),
    ([("p", tarfile.FIFOTYPE, "")], "not a regular file, directory or symlink"),
    ([("f", tarfile.REGTYPE, ""), ("f", tarfile.REGTYPE, "")], "given twice"),
    ([("f", tarfile.REGTYPE, ""), ("f", tarfile.DIRTYPE, "")], "given twice"),
    ([(f"f{i}", tarfile.REGTYPE, "") for i in range(4)], "more than 3 entries"),
    ([("big", tarfile.REGTYPE, "x" * 11)], "more than 10 bytes"),
])
def test_a_tar_that_is_not_only_a_tree_is_refused(tmp_path: Path, entries: list[tuple[str, bytes, str]],
                                                  why: str) -> None:
    with pytest.raises(TreeError, match=why):
        unpacked(tmp_path, tar_of(*entries), max_bytes=10, max_entries=3)
    assert not any(path.is_symlink() and "etc" in os.readlink(path) for path in tmp_path.rglob("*"))


def test_a_directory_makes_the_same_tar_every_time(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f").write_text("f")
    (tmp_path / "d" / "l").symlink_to("sub/f")
    first = tree_tar(tmp_path / "d")
    os.utime(tmp_path / "d" / "sub" / "f", (1, 1))
    assert tree_tar(tmp_path / "d") == first
    assert tree_tar(first) == first


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[FileCache]:
    opened = FileCache(str(tmp_path / "c"), 1 << 20)
    yield opened
    opened.close()


def put_tree(cache: FileCache, tar: bytes) -> str:
    upload = cache.begin(tree=True)
    try:
        cache.reserve(upload, len(tar))
        upload.write(tar)
        return cache.commit(upload, None, cache.unpack(upload))
    except BaseException:
        cache.abort(upload)
        raise


def test_a_tree_counts_by_its_unpacked_size_and_is_removed_as_a_whole(cache: FileCache) -> None:
    tree_id = put_tree(cache, tar_of(("a", tarfile.REGTYPE, "12345"), ("b/c", tarfile.REGTYPE, "678")))
    assert tree_id.startswith("tree:sha256:")
    assert cache.snapshot()["bytes"] == 8 and cache.snapshot()["uploading"] == 0
    assert Path(tree_path(cache.directory, tree_id), "b", "c").read_text() == "678"
    assert os.listdir(Path(cache.directory, "partial")) == []
    assert cache.lease(Job(cmd=["true"], mounts=[Mount("/work/t", tree_id)])) == [tree_id]
    assert cache.delete(tree_id) is False
    cache.release([tree_id])
    assert not os.path.exists(tree_path(cache.directory, tree_id))


def test_a_bad_tree_leaves_nothing(cache: FileCache) -> None:
    with pytest.raises(ProtocolError) as caught:
        put_tree(cache, tar_of(("ok", tarfile.REGTYPE, "x"), ("/abs", tarfile.REGTYPE, "")))
    assert caught.value.code == "bad_tree"
    assert cache.snapshot()["bytes"] == cache.snapshot()["uploading"] == 0
    assert os.listdir(Path(cache.directory, "partial")) == os.listdir(Path(cache.directory, "trees")) == []
    with pytest.raises(ProtocolError) as unknown:
        cache.lease(Job(cmd=["true"], mounts=[Mount("/work/t", TREE)]))
    assert (unknown.value.code, unknown.value.field) == ("invalid_job", "mounts.0.tree_id")
