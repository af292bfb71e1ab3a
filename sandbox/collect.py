"""Files out, the supervisor's side: read what the sandbox init opened for a job's
collect list (``native/collect.c``) into ``Result.files`` and ``file_errors``.

The init opens each path (it can read the job's files whatever their modes; this
process's host user cannot) once every process of the job is dead, and hands the open
fds over on the job channel. Each fd is judged by its size before a byte is read - a
sparse 1 TiB file is refused without reading it - then read at most one byte past that
size, and a file whose size or mtime moved, or that gave more than its size, is refused
as changed. Nothing of the job runs any more by then, so "changed" means a file system
playing tricks, not a race that a retry would win.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from dataclasses import dataclass, field

from sandbox.linux.readiness import readable
from sandbox.models import Collect
from sandbox.outcome import Outcome

# A message from the init: up to 64 records with an fd each (collect.c's BATCH_FDS),
# each record at most a 4 KiB path and a short reason.
_MAX_MESSAGE = 1 << 16
_MAX_FDS = 64
# What a collected file costs a result beside its bytes: its name and the encoding's
# framing of the two (a msgpack map entry: a few bytes; kept generous).
ENTRY_OVERHEAD = 64
COLLECT_TIMEOUT_S = 30.0  # for the init to send a job's files, once it reported the exit


@dataclass
class Collected:
    """What becomes ``Result.files`` and ``Result.file_errors``."""

    files: dict[str, bytes] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def not_collected(entries: list[Collect], why: str) -> Collected:
    """Every entry refused for one reason (the job was killed, the sandbox never started it)."""
    return Collected(errors={entry.path: f"not_collected: {why}" for entry in entries})


def collect_after(channel: socket.socket, entries: list[Collect], outcome: Outcome, room: int | None) -> Collected:
    """A job's files, from its init (on its job channel) - which sends them only after a
    program exit it reported itself; a job the supervisor killed, or that never started,
    has none. ``room``: what the result may hold in all, its output included."""
    if outcome.kill_reason is not None:
        return not_collected(entries, f"the job was killed ({outcome.kill_reason.value})")
    if outcome.exited is None or outcome.setup_error:
        return not_collected(entries, "the program never ran to its end")
    if room is not None:
        room -= len(outcome.stdout.data) + len(outcome.stderr.data)
    # (an init stuck past the timeout is killed with the sandbox's retirement, after this)
    return receive(channel, entries, room=room, timeout_s=COLLECT_TIMEOUT_S)


def receive(channel: socket.socket, entries: list[Collect], *, room: int | None, timeout_s: float) -> Collected:
    """Read the init's messages until its "done" (or EOF, or ``timeout_s``: the entries
    it said nothing about are then refused), each file within its entry's cap and, with
    ``room``, within that many bytes in all (a worker's result must fit its frame)."""
    collected = Collected()
    remaining = [entry.max_bytes for entry in entries]  # a directory's total, left
    answered: set[int] = set()
    deadline = time.monotonic() + timeout_s
    done = False
    while not done:
        left = deadline - time.monotonic()
        if left <= 0 or not readable(channel, left):
            break
        data, fds, _, _ = socket.recv_fds(channel, _MAX_MESSAGE, _MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        try:
            if not data:
                break
            fields = data.split(b"\0")[:-1]
            position = 0
            taken = 0
            while position < len(fields):
                kind = fields[position]
                if kind == b"d":
                    done = True
                    break
                index, raw_path = int(fields[position + 1]), fields[position + 2]
                path = raw_path.decode("utf-8", "replace")
                answered.add(index)
                if kind == b"e":
                    collected.errors[path] = fields[position + 3].decode("utf-8", "replace")
                    position += 4
                    continue
                fd = fds[taken]
                taken += 1
                position += 3
                if not _utf8(raw_path):  # a result's keys are text, on every wire
                    collected.errors[path] = "bad_name: not UTF-8"
                    continue
                content, error = read_capped(fd, remaining[index], room)
                if content is None:
                    collected.errors[path] = error
                else:
                    collected.files[path] = content
                    if entries[index].directory:
                        remaining[index] -= len(content)
                    if room is not None:
                        room -= len(content) + len(path) + ENTRY_OVERHEAD
        finally:
            for fd in fds:
                os.close(fd)
    if not done:
        for index, entry in enumerate(entries):
            if index not in answered:
                collected.errors[entry.path] = "not_collected: the sandbox ended before it collected this path"
    return collected


def read_capped(fd: int, cap: int, room: int | None) -> tuple[bytes | None, str]:
    """The regular file's bytes if its size is within ``cap`` (and ``room``) and it did
    not change while read; else None and the reason."""
    before = os.fstat(fd)
    if not stat.S_ISREG(before.st_mode):
        return None, "not_regular: not a regular file"
    size = before.st_size
    if size > cap:
        return None, f"too_large: {size} bytes over {cap}"
    if room is not None and size > room:
        return None, f"too_large: {size} bytes over the {max(room, 0)} left in the result's frame"
    pieces = []
    got = 0
    while got <= size:
        piece = os.pread(fd, min(size + 1 - got, 1 << 20), got)
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    after = os.fstat(fd)
    if got != size or after.st_size != size or after.st_mtime_ns != before.st_mtime_ns:
        return None, f"changed: {size} bytes when opened, {got} read, {after.st_size} after"
    return b"".join(pieces), ""


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
