"""The worker's file cache end to end: files put once (in chunks when larger than a frame),
read by jobs by id, evicted least recently used but never while a job holds them."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import trio
from test_cleanup import wait_until
from workerutil import SANDBOX_CLI, Raw, WorkerProcess

from sandbox.models import Blob, InputFile, Job, Limits, Status
from worker.async_client import AsyncClient
from worker.client import Client, WorkerError
from worker.protocol import job_to_wire

MIB = 1 << 20


def reader(*file_ids: str, cmd: list[str] | None = None, **limits: object) -> Job:
    """A job with each cached file at /work/fN, printing their sha256sums."""
    files = [InputFile(f"/work/f{index}", Blob(file_id=file_id)) for index, file_id in enumerate(file_ids)]
    command = cmd or ["sha256sum", *(f"/work/f{index}" for index in range(len(file_ids)))]
    return Job(cmd=command, files=files, limits=Limits(**limits))  # type: ignore[arg-type]


def digest_in(file_id: str) -> str:
    return file_id.removeprefix("sha256:")


def cache_dir(worker: WorkerProcess) -> Path:
    return Path(f"{worker.socket_path}.files")


def holding(raw: Raw, job_id: str, *file_ids: str) -> None:
    """Submit a job that holds ``file_ids`` and runs until cancelled; return once it runs."""
    raw.send({"type": "submit", "id": job_id, "job": job_to_wire(reader(*file_ids, cmd=["sleep", "120"]))})
    raw.until(lambda m: m.get("id") == job_id and m.get("event") == "started")


def cancel(raw: Raw, job_id: str) -> None:
    """Cancel the job and wait for its end (its leases end before its final event)."""
    raw.send({"type": "cancel", "id": job_id})
    final = raw.until(lambda m: m.get("id") == job_id and m.get("event") in ("cancelled", "finished"))
    assert final["event"] == "cancelled", final


def missing(client: Client, file_id: str) -> bool:
    """The worker refuses a job naming ``file_id`` (it does not have the file)."""
    with pytest.raises(WorkerError) as caught:
        client.run(reader(file_id))
    assert caught.value.code == "invalid_job"
    return caught.value.field == "files[0].file_id"


def test_a_file_put_once_is_read_by_jobs_by_id(worker):
    data = os.urandom(300_000)
    with Client(worker.socket_path) as client:
        file_id = client.put_file(data)
        assert file_id == "sha256:" + hashlib.sha256(data).hexdigest()
        for _ in range(2):
            result = client.run(reader(file_id, file_id))
            assert result.status is Status.OK, result
            assert result.stdout.decode().split()[::2] == [digest_in(file_id)] * 2
        mode = client.run(Job(cmd=["stat", "-c", "%a", "/work/x"], files=[
            InputFile("/work/x", Blob(file_id=file_id), mode=0o700)]))
        assert mode.stdout == b"700\n"
        assert client.put_file(data) == file_id  # the same bytes: the same file, stored once
        assert client.stats()["file_cache"]["entries"] == 1
    assert stat_mode(cache_dir(worker)) == 0o700


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_an_id_never_put_is_invalid_job_naming_its_entry(worker):
    never = "sha256:" + "0" * 64
    with Client(worker.socket_path) as client:
        job = Job(cmd=["true"], files=[InputFile("/work/a", Blob(data=b"a")), InputFile("/work/b", Blob(file_id=never))])
        with pytest.raises(WorkerError) as caught:
            client.run(job)
        assert (caught.value.code, caught.value.field) == ("invalid_job", "files[1].file_id")
        assert never in str(caught.value)
        assert missing(client, never)


def test_a_malformed_id_is_invalid_job(worker, connect):
    raw = connect(worker)
    raw.send({"type": "submit", "id": "j", "job": {"cmd": ["true"], "files": [
        {"path": "/work/a", "file_id": "sha256:xyz"}]}})
    reply = raw.next()
    assert (reply["code"], reply["field"]) == ("invalid_job", "files[0].file_id"), reply


def test_eviction_takes_the_least_recently_used_file_no_job_holds(start_worker, connect):
    worker = start_worker("--slots", "2", "--file-cache-size", "3M")
    raw = connect(worker)

    def stored(file_id: str) -> bool:
        return (cache_dir(worker) / "files" / digest_in(file_id)).exists()

    with Client(worker.socket_path) as client:
        first, second = client.put_file(os.urandom(MIB)), client.put_file(os.urandom(MIB))
        holding(raw, "hold", first)  # leased by a running job (and used: second is the LRU now)
        third = client.put_file(os.urandom(MIB))  # the cache is full
        assert client.run(reader(second)).status is Status.OK  # used: first (leased), third, second
        fourth = client.put_file(os.urandom(MIB))  # evicts one: not first, leased, but the LRU of the rest
        stats = client.stats()["file_cache"]
        assert (stats["evictions"], stats["bytes"], stats["entries"]) == (1, 3 * MIB, 3), stats
        assert not stored(third) and missing(client, third)
        assert all(stored(kept) for kept in (first, second, fourth))

        # What no job holds is less than this needs: refused, and nothing evicted for it.
        with pytest.raises(WorkerError) as caught:
            client.put_file(os.urandom(2 * MIB + MIB // 2))
        assert caught.value.code == "cache_full"
        assert client.stats()["file_cache"] == stats
        assert os.listdir(cache_dir(worker) / "partial") == []

        cancel(raw, "hold")  # the lease ends with the job
        big = client.put_file(os.urandom(2 * MIB + MIB // 2))
        assert client.stats()["file_cache"]["evictions"] == 4
        assert client.run(reader(big)).stdout.split()[0].decode() == digest_in(big)
        assert missing(client, first)


def test_a_file_larger_than_a_frame_is_put_in_chunks(start_worker, connect):
    worker = start_worker("--slots", "1", "--max-frame", "64K")
    data = os.urandom(5 * MIB + 12345)
    with Client(worker.socket_path) as client:
        assert client.hello["max_frame"] == 64 << 10
        file_id = client.put_file(data)
        assert file_id == "sha256:" + hashlib.sha256(data).hexdigest()
        result = client.run(reader(file_id))
        assert result.stdout.split()[0].decode() == digest_in(file_id), result
    # A chunk out of order is refused, and the upload with it.
    raw = connect(worker)
    raw.send({"type": "put_file", "id": "u", "offset": 0, "data": b"abc", "last": False})
    raw.send({"type": "put_file", "id": "u", "offset": 5, "data": b"def", "last": False})
    reply = raw.next()
    assert (reply["code"], reply["field"], reply["id"]) == ("bad_message", "offset", "u"), reply
    raw.send({"type": "put_file", "id": "u", "offset": 6, "data": b"ghi", "last": True})  # dropped: it failed
    raw.send({"type": "ping", "seq": 1})
    assert raw.next() == {"type": "pong", "seq": 1}
    assert os.listdir(cache_dir(worker) / "partial") == []


def test_a_put_whose_bytes_are_not_the_id_given_stores_nothing(worker, connect):
    raw = connect(worker)
    raw.send({"type": "put_file", "id": "u", "offset": 0, "data": b"abc", "last": True,
              "file_id": "sha256:" + hashlib.sha256(b"abd").hexdigest()})
    reply = raw.next()
    assert (reply["code"], reply["field"]) == ("digest_mismatch", "file_id"), reply
    assert os.listdir(cache_dir(worker) / "files") == os.listdir(cache_dir(worker) / "partial") == []
    raw.send({"type": "put_file", "id": "u", "offset": 0, "data": b"abc", "last": True})
    assert raw.next()["file_id"] == "sha256:" + hashlib.sha256(b"abc").hexdigest()


def test_an_upload_whose_client_goes_away_leaves_no_partial_file(worker, connect):
    raw = connect(worker)
    raw.send({"type": "put_file", "id": "u", "offset": 0, "data": os.urandom(MIB), "last": False})
    raw.send({"type": "ping"})
    assert raw.next()["type"] == "pong"  # the chunk was taken (requests are handled in order)
    partial = cache_dir(worker) / "partial"
    assert [(partial / name).stat().st_size for name in os.listdir(partial)] == [MIB]
    with Client(worker.socket_path) as client:
        assert client.stats()["file_cache"]["uploading"] == MIB
        raw.close()
        assert wait_until(lambda: client.stats()["file_cache"]["uploading"] == 0)
        assert os.listdir(partial) == []
        assert client.stats()["file_cache"]["entries"] == 0


def test_del_file_removes_a_file_at_once_or_when_its_last_job_ends(worker, connect):
    raw = connect(worker)
    with Client(worker.socket_path) as client:
        free, held = client.put_file(b"free"), client.put_file(b"held")
        assert client.del_file(free) is True
        assert not (cache_dir(worker) / "files" / digest_in(free)).exists()
        assert missing(client, free)
        with pytest.raises(WorkerError) as caught:
            client.del_file(free)
        assert (caught.value.code, caught.value.field) == ("unknown_file", "file_id")

        holding(raw, "hold", held)
        assert client.del_file(held) is False  # it goes when the job holding it ends
        assert (cache_dir(worker) / "files" / digest_in(held)).exists()
        assert missing(client, held)  # no new job may use it
        cancel(raw, "hold")
        assert not (cache_dir(worker) / "files" / digest_in(held)).exists()
        assert client.stats()["file_cache"]["entries"] == 0


def test_the_file_cache_starts_empty_and_is_the_workers_alone(start_worker, tmp_path):
    directory = tmp_path / "cache"
    (directory / "partial").mkdir(parents=True)
    (directory / "partial" / "0").write_bytes(b"an upload a dead worker left")
    worker = start_worker("--file-cache-dir", str(directory))
    assert os.listdir(directory / "partial") == []
    assert stat_mode(directory) == 0o700
    second = subprocess.run([*SANDBOX_CLI, "serve", "--socket", str(tmp_path / "other.sock"),
                             "--file-cache-dir", str(directory)], capture_output=True, text=True, timeout=60)
    assert second.returncode == 125 and "another worker uses the file cache" in second.stderr, second.stderr
    with Client(worker.socket_path) as client:
        assert client.stats()["file_cache"]["entries"] == 0


def test_the_trio_client_puts_and_deletes_and_the_metrics_count_the_cache(start_worker):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = start_worker("--slots", "1", "--metrics", f"127.0.0.1:{port}")

    def samples() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("sandbox_file_cache")}

    async def put_and_use() -> tuple[str, bytes]:
        async with await AsyncClient.connect(worker.socket_path) as client:
            file_id = await client.put_file(b"x" * 1000)
            return file_id, (await client.run(reader(file_id, cmd=["wc", "-c", "/work/f0"]))).stdout

    file_id, stdout = trio.run(put_and_use)
    assert stdout == b"1000 /work/f0\n"
    assert samples() == {"sandbox_file_cache_bytes": 1000, "sandbox_file_cache_files": 1,
                         "sandbox_file_cache_evictions": 0}

    async def delete() -> bool:
        async with await AsyncClient.connect(worker.socket_path) as client:
            return await client.del_file(file_id)

    assert trio.run(delete) is True
    assert samples()["sandbox_file_cache_files"] == 0


BIG = 500 * MIB
BIG_JOBS = 50


def test_a_big_input_put_once_serves_many_jobs(start_worker, tmp_path):
    """One put of a big input, then jobs that each get a copy of it in their sandbox: the
    size of each copy and its last bytes, read inside the sandbox, prove it."""
    worker = start_worker("--slots", "2", "--file-cache-size", "1G")
    source = tmp_path / "big"
    with open(source, "wb") as handle:
        for _ in range(BIG // MIB):
            handle.write(os.urandom(MIB))
    tail = _tail(source, 32)
    started = time.monotonic()
    with Client(worker.socket_path) as client:
        file_id = client.put_file(source)
        rss_after_put = worker.rss_bytes()
        job = reader(file_id, cmd=["sh", "-c", "wc -c < /work/f0; tail -c 32 /work/f0 | od -An -v -tx1"],
                     disk=BIG + 64 * MIB, memory=BIG + 256 * MIB)
        ids = [client.submit(job) for _ in range(BIG_JOBS)]
        for job_id in ids:
            result = client.wait(job_id)
            assert result.status is Status.OK, result
            size, *dump = result.stdout.split()
            assert int(size) == BIG and bytes.fromhex(b"".join(dump).decode()) == tail
    elapsed = time.monotonic() - started
    assert rss_after_put < 200 * MIB, rss_after_put  # the file never sat in the worker's memory
    print(f"{BIG_JOBS} jobs with {BIG >> 20} MiB each: {elapsed:.1f} s")


def _tail(path: Path, count: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-count, os.SEEK_END)
        return handle.read()


def test_collected_files_kept_in_the_cache_are_named_by_id(worker) -> None:
    """A collect entry with cache: the worker keeps the file (a directory's files each)
    and the result names it by id instead of carrying it; a later job reads it by id."""
    from sandbox.models import Collect

    writes = "printf 'built once' > /work/a.out; mkdir /work/out; echo x > /work/out/x; echo y > /work/out/y"
    job = Job(cmd=["sh", "-c", writes], collect=[Collect("/work/a.out", cache=True), Collect("/work/out/", cache=True)])
    with Client(worker.socket_path) as client:
        result = client.run(job)
        assert result.status is Status.OK, result
        assert result.files == {} and set(result.file_ids) == {"/work/a.out", "/work/out/x", "/work/out/y"}
        assert result.file_ids["/work/a.out"] == "sha256:" + hashlib.sha256(b"built once").hexdigest()
        used = client.run(reader(result.file_ids["/work/a.out"], cmd=["cat", "/work/f0"]))
        assert used.stdout == b"built once"
        plain = client.run(Job(cmd=["sh", "-c", writes], collect=[Collect("/work/a.out")]))
        assert (plain.files, plain.file_ids) == ({"/work/a.out": b"built once"}, {})
