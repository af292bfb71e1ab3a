"""The worker's file cache: a file put once (``put_file``), named by its content, used by
many jobs (a ``files`` entry with a ``file_id``) without travelling in each job's frame.

The directory is the worker's own (it holds an flock on ``lock`` while it runs)::

    lock
    partial/      uploads under way, one file each; trees being unpacked
    files/<hex>   complete files, named by the SHA-256 of their bytes
    trees/<hex>   unpacked trees (a ``put_file`` with ``tree``), named by the SHA-256
                  of the tar they came as: mounted read-only into jobs, never written

A tree is an entry like a file - one LRU order, one capacity, the same leases - that
counts by its unpacked size (its regular files' bytes; worker/trees.py bounds its
entries). Its id has a prefix of its own (``tree:sha256:``), so the same bytes put as a
file and as a tree are two entries that can never be taken for each other.

It starts empty: whatever a previous run left is removed, uploads under way and complete
files alike. A client must be ready for an id to be gone at any time (evicted), and a
restart is one more such time; nothing has to be trusted of a run that may have died
with a file renamed in before its bytes reached the disk.

Bounded by size: the complete files and the bytes of the uploads under way together
never exceed ``capacity``. Room is made by removing the least recently used files (put,
or leased by a job) that no queued or running job holds a lease on; an upload that finds
no room fails (``cache_full``), keeps nothing and evicts nothing. The trio process keeps
only this bookkeeping: bytes go from the connection straight into the upload's file
(``Upload.write``, which the server runs in a thread), and a launcher opens a job's
cached files itself (``cached_path``), so no file passes through a job's frame or the
worker's memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import shutil
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from sandbox.models import FILE_ID_PREFIX, TREE_ID_PREFIX, Group, Job, check_file_id, check_tree_id
from worker.protocol import ProtocolError
from worker.trees import TreeError, unpack_tree

DEFAULT_CAPACITY = 1 << 30


# Where the worker's judges write their packages (worker/judging.py): emptied at start with
# the rest, so a worker killed mid-judge leaves nothing behind once it runs again.
JUDGES_DIR = "judges"


def cached_path(directory: str, file_id: str) -> str:
    """Where the cache in ``directory`` keeps the file of ``file_id`` (a checked id: hex
    digits only, so the path stays in the directory)."""
    return os.path.join(directory, "files", check_file_id(file_id, "file_id").removeprefix(FILE_ID_PREFIX))


def tree_path(directory: str, tree_id: str) -> str:
    """Where the cache in ``directory`` keeps the tree of ``tree_id`` (checked as
    ``cached_path`` checks a file id)."""
    return os.path.join(directory, "trees", check_tree_id(tree_id, "tree_id").removeprefix(TREE_ID_PREFIX))


@dataclass
class Entry:
    size: int
    leases: int = 0  # queued or running jobs that will read it
    deleted: bool = False  # del_file came while it was leased: removed with its last lease


class Upload:
    """One ``put_file`` under way: its bytes so far in a file of ``partial/``, hashed as
    they come."""

    def __init__(self, path: str, tree: bool = False) -> None:
        self.path = path
        self.tree = tree  # a tar to unpack as a tree (``FileCache.unpack``)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.size = 0  # bytes received
        self.counted = 0  # of them, those the cache counts as under way (none once kept or discarded)
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        """Append a chunk. Blocking: the server runs it in a thread (hashlib and the
        write release the GIL for chunks this large)."""
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    @property
    def file_id(self) -> str:
        """The id it is kept under: a file's, or a tree's."""
        return (TREE_ID_PREFIX if self.tree else FILE_ID_PREFIX) + self._hash.hexdigest()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def unpacked(self) -> str:
        """Where a tree's tar is unpacked before it is kept (beside its tar)."""
        return self.path + ".tree"

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        shutil.rmtree(self.unpacked, ignore_errors=True)


class CacheInUse(ValueError):
    """Another running worker holds the cache directory's lock."""


class FileCache:
    """The bookkeeping of one worker's cache in ``directory``: entries in least recently
    used order, their leases, and the bytes uploads under way hold."""

    def __init__(self, directory: str, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity <= 0:
            raise ValueError("--file-cache-size must be more than 0")
        self.directory = directory
        self.capacity = capacity
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)  # (makedirs leaves an existing directory's mode as it was)
        self._lock_fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise CacheInUse(f"another worker uses the file cache {directory} (it holds its lock)") from None
        for part in ("partial", "files", "trees", JUDGES_DIR):
            shutil.rmtree(os.path.join(directory, part), ignore_errors=True)
            os.mkdir(os.path.join(directory, part), 0o700)
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # file id -> entry, least recently used first
        self._stored = 0  # the entries' bytes: counted as they come and go, not summed per upload chunk
        self._uploading = 0  # bytes held by uploads under way
        self._names = itertools.count()
        self.evictions = 0

    def close(self) -> None:
        """Give up the directory (its lock); the worker is stopping."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    @property
    def stored_bytes(self) -> int:
        return self._stored

    @property
    def entries(self) -> int:
        return len(self._entries)

    def snapshot(self) -> dict[str, int]:
        return {"bytes": self.stored_bytes, "entries": self.entries, "capacity": self.capacity,
                "uploading": self._uploading, "evictions": self.evictions}

    def size_of(self, file_id: str) -> int | None:
        """The size a file (or tree) counts in the cache; None if a job could not use it
        now (never put, evicted or deleted). Reading it is no use: the LRU order stays."""
        entry = self._entries.get(file_id)
        return None if entry is None or entry.deleted else entry.size

    def begin(self, tree: bool = False) -> Upload:
        return Upload(os.path.join(self.directory, "partial", str(next(self._names))), tree)

    def reserve(self, upload: Upload, size: int) -> None:
        """Count ``size`` more bytes of ``upload`` against the capacity, evicting what
        must go; cache_full (and nothing evicted) if the files leased leave no room."""
        self._make_room(upload.size + size, size)
        self._uploading += size
        upload.size += size
        upload.counted += size

    def _make_room(self, wanted: int, size: int) -> None:
        """Evict least recently used unleased entries until ``size`` more bytes fit (of
        ``wanted``, the whole of what is being stored, for the error)."""
        excess = self.stored_bytes + self._uploading + size - self.capacity
        if excess > 0:
            evictable = [(file_id, entry) for file_id, entry in self._entries.items() if not entry.leases]
            if sum(entry.size for _, entry in evictable) < excess:
                why = ("more than the whole cache" if wanted > self.capacity
                       else "the rest is held by queued or running jobs and uploads under way")
                raise ProtocolError("cache_full", f"no room for {wanted} bytes in the file cache of "
                                                  f"{self.capacity} bytes: {why}")
            for file_id, entry in evictable:
                if excess <= 0:
                    break
                self._remove(file_id)
                self.evictions += 1
                excess -= entry.size

    def abort(self, upload: Upload) -> None:
        """Forget an upload that failed or whose connection ended: no partial file stays."""
        self._uploading -= upload.counted
        upload.counted = 0
        upload.discard()

    def unpack(self, upload: Upload) -> int:
        """Unpack a tree's complete tar beside it (worker/trees.py); its unpacked size.
        A tar that is not a tree is bad_tree, naming the entry, and the caller aborts the
        upload (which removes what was unpacked). Blocking: the server runs it in a
        thread; the tar's bytes stay counted meanwhile."""
        upload.close()
        try:
            return unpack_tree(upload.path, upload.unpacked, self.capacity).bytes
        except TreeError as exc:
            raise ProtocolError("bad_tree", f"the tar is not a tree the worker keeps: {exc}") from None

    def commit(self, upload: Upload, expected: str | None, unpacked_size: int = 0) -> str:
        """The upload is complete (a tree's unpacked, of ``unpacked_size``): keep it under
        its id and return that id. One other than ``expected`` (if given) is
        digest_mismatch, and the caller aborts it; so is cache_full, for a tree whose
        unpacked size finds no room where its tar did."""
        file_id = upload.file_id
        if expected is not None and expected != file_id:
            raise ProtocolError("digest_mismatch", f"the bytes put have id {file_id}, not {expected}",
                                field="file_id")
        upload.close()
        entry = self._entries.get(file_id)
        size = unpacked_size if upload.tree else upload.size
        self._uploading -= upload.counted
        counted, upload.counted = upload.counted, 0
        if entry is None and upload.tree:
            try:
                self._make_room(size, size)
            except ProtocolError:
                self._uploading += counted  # (still the upload's until the caller aborts it)
                upload.counted = counted
                raise
        if entry is not None:  # the same bytes again: keep the file (or tree) there is
            upload.discard()
            entry.deleted = False
        else:
            # (an OSError: the caller aborts)
            if upload.tree:
                os.rename(upload.unpacked, tree_path(self.directory, file_id))
                upload.discard()  # the tar
            else:
                os.rename(upload.path, cached_path(self.directory, file_id))
            self._entries[file_id] = Entry(size)
            self._stored += size
        self._entries.move_to_end(file_id)
        return file_id

    def store(self, data: bytes, expected: str | None = None) -> str:
        """Keep ``data`` (a file a job collected, ``Collect.cache``) as if it were put in
        one chunk; its id. cache_full (or digest_mismatch with ``expected``), and nothing
        kept, if it does not fit. Blocking: the pool runs it in a thread, as the server
        runs an upload's writes."""
        upload = self.begin()
        try:
            self.reserve(upload, len(data))
            upload.write(data)
            return self.commit(upload, expected)
        except BaseException:
            self.abort(upload)
            raise

    def holds(self, file_id: str) -> bool:
        """Whether a job submitted now could use the file (or tree)."""
        entry = self._entries.get(file_id)
        return entry is not None and not entry.deleted

    def lease(self, work: Job | Group) -> list[str]:
        """Hold the job's (or every group member's) cached files until ``release``: none
        of them is evicted or removed while the job is queued or running. A file the cache
        does not have is the job's error, naming its entry."""
        named = []
        members = work.jobs if isinstance(work, Group) else [work]
        for member, job in enumerate(members):
            prefix = f"jobs.{member}." if isinstance(work, Group) else ""
            named += [(item.content.file_id, f"{prefix}files[{index}].file_id")
                      for index, item in enumerate(job.files) if item.content.file_id is not None]
            named += [(entry.tree_id, f"{prefix}mounts.{index}.tree_id")
                      for index, entry in enumerate(job.mounts) if entry.tree_id is not None]
        return self.lease_ids(named)

    def lease_ids(self, named: list[tuple[str, str]]) -> list[str]:
        """``lease`` for file (and tree) ids as a request names them, each with its field
        (for the error of one the cache does not have)."""
        file_ids = []
        for file_id, field in named:
            entry = self._entries.get(file_id)
            if entry is None or entry.deleted:
                kind = "tree" if file_id.startswith(TREE_ID_PREFIX) else "file"
                raise ProtocolError("invalid_job",
                                    f"the worker has no {kind} {file_id} (never put, evicted or deleted)", field=field)
            file_ids.append(file_id)
        for file_id in file_ids:
            self._entries[file_id].leases += 1
            self._entries.move_to_end(file_id)
        return file_ids

    def release(self, file_ids: Sequence[str]) -> None:
        for file_id in file_ids:
            entry = self._entries[file_id]
            entry.leases -= 1
            if entry.deleted and not entry.leases:
                self._remove(file_id)

    def delete(self, file_id: str) -> bool:
        """Remove a file (or a tree): at once (True), or - leased by jobs queued or
        running - as the last of them ends (False); either way no job submitted from now
        on can use it. (The id was checked by the protocol.)"""
        entry = self._entries.get(file_id)
        if entry is None or entry.deleted:
            raise ProtocolError("unknown_file", f"the worker has no file {file_id}", field="file_id")
        if entry.leases:
            entry.deleted = True
            return False
        self._remove(file_id)
        return True

    def _remove(self, file_id: str) -> None:
        self._stored -= self._entries.pop(file_id).size
        if file_id.startswith(TREE_ID_PREFIX):
            # (No job mounts it any more: a lease ended. Jobs' overlays hold their own
            # references to its directories, so one still ending reads on unharmed.)
            shutil.rmtree(tree_path(self.directory, file_id), ignore_errors=True)
            return
        with contextlib.suppress(FileNotFoundError):  # (removed by hand: it is gone all the same)
            os.unlink(cached_path(self.directory, file_id))
