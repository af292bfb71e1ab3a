"""Files across the workers of a queue: a producer puts a file once (``sandbox_put_blob``,
worker/queue_schema.py) under its content's id, jobs and judge packages name it
(``{"file_id": ...}``, as on a worker's socket), and whichever worker takes such a job
fetches it once into its own file cache (worker/filecache.py), where later jobs find it.

The id is the SHA-256 of the bytes, which Redis cannot compute: the worker checks it as
the file enters its cache (``FileCache.store`` with the expected id), so a blob written
under a wrong name fails the jobs that name it - never feeds them other bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import trio
from coredis.exceptions import ResponseError

from sandbox.models import FILE_ID_PREFIX, Job
from worker.filecache import FileCache, cached_path
from worker.protocol import ProtocolError
from worker.queue_schema import BLOB_TOO_BIG, QueueError, QueueKeys

FetchBlob = Callable[[str], Awaitable[bytes | None]]  # a blob's key -> its bytes (None: not there)
PutBlob = Callable[[list[str], list[str | bytes | int]], Awaitable[object]]  # keys, args -> the call's answer


def blob_id(data: bytes) -> str:
    return FILE_ID_PREFIX + hashlib.sha256(data).hexdigest()


async def put_blob(call: PutBlob, keys: QueueKeys, data: bytes, ttl_s: int) -> str:
    """Keep ``data`` for the jobs of any worker of the stream (its time renewed if kept
    already) and return its id; QueueError ``blob_too_big`` beyond the workers' bound."""
    file_id = blob_id(data)
    try:
        await call([keys.blob(file_id), keys.config], [data, ttl_s])
    except ResponseError as exc:
        if str(exc).startswith(BLOB_TOO_BIG):
            raise QueueError(BLOB_TOO_BIG, str(exc).removeprefix(BLOB_TOO_BIG).strip()) from None
        raise
    return file_id


def named_files(job: Job) -> list[tuple[str, str]]:
    """The cached files a job names, each with its field (for the error of one missing)."""
    named = [(item.content.file_id, f"files[{index}].file_id")
             for index, item in enumerate(job.files) if item.content.file_id is not None]
    if job.stdin is not None and job.stdin.file_id is not None:
        named.append((job.stdin.file_id, "stdin.file_id"))
    return named


async def fetch_blobs(fetch: FetchBlob, keys: QueueKeys, cache: FileCache,
                      named: list[tuple[str, str]]) -> list[str]:
    """Bring the files ``named`` that the cache lacks from the stream's blobs into it,
    and lease every one (``cache.release`` them once the job holds its own leases): none
    is evicted before the job that needs it is queued. invalid_job, naming the field,
    for a file the queue does not have, or whose bytes are not its id's."""
    leased: list[str] = []
    try:
        for file_id, field in named:
            if not cache.holds(file_id):
                data = await fetch(keys.blob(file_id))
                if data is None:
                    raise ProtocolError("invalid_job", f"the queue has no file {file_id} (never put, or expired)",
                                        field=field)
                try:
                    await trio.to_thread.run_sync(cache.store, data, file_id)
                except ProtocolError as exc:  # its bytes are not its id's, or the cache is full
                    raise ProtocolError("invalid_job", f"{file_id}: {exc.message}", field=field) from None
            leased += cache.lease_ids([(file_id, field)])
    except BaseException:
        cache.release(leased)
        raise
    return leased


def read_cached(cache: FileCache, file_id: str) -> bytes:
    """A cached file's bytes (blocking: run in a thread), to put it for other workers."""
    with open(cached_path(cache.directory, file_id), "rb") as handle:
        return handle.read()
