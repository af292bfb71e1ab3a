"""The file cache's bookkeeping on a plain directory: what is evicted, what is kept for
the jobs that hold it, and that a failed put leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.errors import JobError
from sandbox.models import Blob, InputFile, Job
from worker.filecache import FileCache, cached_path
from worker.protocol import ProtocolError, job_from_wire, job_to_wire, put_chunk

Opener = Callable[[int], FileCache]


@pytest.fixture
def open_cache(tmp_path: Path) -> Iterator[Opener]:
    """open_cache(capacity) -> a cache in tmp_path/c, closed after the test."""
    opened: list[FileCache] = []

    def _open(capacity: int) -> FileCache:
        opened.append(FileCache(str(tmp_path / "c"), capacity))
        return opened[-1]

    yield _open
    for cache in opened:
        cache.close()


def put(cache: FileCache, data: bytes, expected: str | None = None) -> str:
    return cache.store(data, expected)


def using(*file_ids: str) -> Job:
    return Job(cmd=["true"], files=[InputFile(f"/work/{i}", Blob(file_id=f)) for i, f in enumerate(file_ids)])


def stored(cache: FileCache) -> set[str]:
    return {"sha256:" + name for name in os.listdir(Path(cache.directory) / "files")}


def test_a_put_is_stored_under_its_sha256(open_cache: Opener) -> None:
    cache = open_cache(100)
    file_id = put(cache, b"hello")
    assert file_id == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert Path(cached_path(cache.directory, file_id)).read_bytes() == b"hello"
    assert put(cache, b"hello") == file_id and cache.snapshot()["bytes"] == 5  # once
    assert os.listdir(Path(cache.directory) / "partial") == []


def test_eviction_is_least_recently_used_and_skips_leased_files(open_cache: Opener) -> None:
    cache = open_cache(30)
    a, b, _c = put(cache, b"a" * 10), put(cache, b"b" * 10), put(cache, b"c" * 10)
    leased = cache.lease(using(a))  # a: leased, and the most recently used
    cache.release(cache.lease(using(b)))  # used by a job that ended: order now c, a, b
    d = put(cache, b"d" * 10)
    assert stored(cache) == {a, b, d} and cache.evictions == 1
    e = put(cache, b"e" * 10)  # a is still the least recently used, and still leased: b goes
    assert stored(cache) == {a, d, e} and cache.evictions == 2
    cache.release(leased)
    put(cache, b"f" * 10)
    assert stored(cache) == {d, e, "sha256:" + hashlib.sha256(b"f" * 10).hexdigest()}
    assert cache.snapshot()["bytes"] == 30  # what was evicted no longer counts


def test_a_put_that_cannot_fit_stores_and_evicts_nothing(open_cache: Opener) -> None:
    cache = open_cache(30)
    a, b = put(cache, b"a" * 10), put(cache, b"b" * 10)
    cache.lease(using(a))
    with pytest.raises(ProtocolError) as caught:
        put(cache, b"x" * 21)  # 30 - 10 leased < 21
    assert caught.value.code == "cache_full"
    assert stored(cache) == {a, b} and cache.evictions == 0
    assert cache.snapshot()["uploading"] == 0 and os.listdir(Path(cache.directory) / "partial") == []
    put(cache, b"x" * 20)  # b goes
    assert b not in stored(cache)
    with pytest.raises(ProtocolError, match="more than the whole cache"):
        put(cache, b"y" * 31)


def test_a_digest_other_than_the_one_expected_keeps_nothing(open_cache: Opener) -> None:
    cache = open_cache(100)
    with pytest.raises(ProtocolError) as caught:
        put(cache, b"abc", "sha256:" + "0" * 64)
    assert (caught.value.code, caught.value.field) == ("digest_mismatch", "file_id")
    assert stored(cache) == set() and os.listdir(Path(cache.directory) / "partial") == []


def test_a_leased_file_deleted_goes_with_its_last_lease(open_cache: Opener) -> None:
    cache = open_cache(100)
    a = put(cache, b"a")
    first, second = cache.lease(using(a)), cache.lease(using(a))
    assert cache.delete(a) is False
    with pytest.raises(ProtocolError) as caught:
        cache.lease(using(a))
    assert (caught.value.code, caught.value.field) == ("invalid_job", "files[0].file_id")
    cache.release(first)
    assert a in stored(cache)
    cache.release(second)
    assert stored(cache) == set() and cache.entries == 0 and cache.snapshot()["bytes"] == 0
    with pytest.raises(ProtocolError):
        cache.delete(a)


def test_the_cache_starts_empty_and_private(tmp_path: Path, open_cache: Opener) -> None:
    directory = tmp_path / "c"
    first = open_cache(100)
    put(first, b"kept?")
    first.close()
    os.chmod(directory, 0o755)
    (directory / "partial" / "x").write_bytes(b"left over")
    cache = open_cache(100)
    assert stored(cache) == set() and os.listdir(directory / "partial") == []
    assert directory.stat().st_mode & 0o777 == 0o700


def test_a_second_cache_on_the_same_directory_is_refused(open_cache: Opener) -> None:
    open_cache(100)
    with pytest.raises(ValueError, match="another worker"):
        open_cache(100)


def test_a_file_id_travels_on_the_wire_and_is_checked_in_the_model() -> None:
    job = using("sha256:" + "a" * 64)
    assert job_from_wire(job_to_wire(job)) == job
    with pytest.raises(JobError):
        Blob(file_id="sha256:ABC")
    with pytest.raises(JobError):
        Blob(data=b"", file_id="sha256:" + "a" * 64)
    with pytest.raises(JobError) as caught:
        Job(cmd=["true"], stdin=Blob(file_id="sha256:" + "a" * 64))
    assert caught.value.field == "stdin"
    with pytest.raises(ProtocolError) as wire:
        job_from_wire({"cmd": ["true"], "files": [{"path": "/work/a", "data": b"", "file_id": "sha256:" + "a" * 64}]})
    assert wire.value.field == "files[0]"


@pytest.mark.parametrize("change, field", [
    ({"offset": -1}, "offset"), ({"offset": True}, "offset"), ({"data": "text"}, "data"),
    ({"last": 1}, "last"), ({"file_id": "md5:00"}, "file_id"), ({"id": ""}, "id"),
])
def test_a_malformed_put_file_names_its_field(change: dict[str, object], field: str) -> None:
    message = {"type": "put_file", "id": "u", "offset": 0, "data": b"", "last": True, **change}
    with pytest.raises(ProtocolError) as caught:
        put_chunk(message)
    assert (caught.value.code, caught.value.field) == ("bad_message", field)
