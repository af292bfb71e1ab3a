"""The blocking Python client of the worker, ``Client`` (``worker.async_client`` has
the same for trio programs), and what both build their requests with.

Both speak worker/protocol.py, take the same Job model as ``sandbox run`` and return the
same Result. Events of other jobs that arrive while waiting for one are kept, so several
jobs can be in flight on one connection (pipelining)::

    with Client("/run/sandbox/worker.sock") as c:
        result = c.run(Job(cmd=["python3", "-c", "print(1)"], limits=Limits(memory="256M")))

A file many jobs read goes to the worker once (``put_file``, in chunks that fit its
frames) and each job names it by id::

        tests = c.put_file("big-input.txt")
        job = Job(cmd=["wc", "-c", "in.txt"], files=[InputFile("/work/in.txt", Blob(file_id=tests))])
"""

from __future__ import annotations

import dataclasses
import io
import os
import select
import socket
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sandbox.errors import JobError
from sandbox.models import (
    DEFAULT_STOP_GRACE_S,
    FILE_ID_PREFIX,
    TREE_ID_PREFIX,
    Blob,
    Group,
    Job,
    Pipe,
    Result,
    SessionSpec,
)
from worker.protocol import (
    REPLY_MAX_FRAME,
    VERSION,
    FrameDecoder,
    ProtocolError,
    encode,
    group_to_wire,
    job_to_wire,
    result_from_wire,
    session_spec_to_wire,
)

_FINAL_EVENTS = ("finished", "cancelled")
# Room in a put_file frame for everything but the chunk's bytes.
_PUT_OVERHEAD = 4096
MAX_CHUNK = 8 << 20  # larger chunks save little, and each is a frame held in the worker's memory


def new_id() -> str:
    """A fresh id for a job, group, upload or request: 128 random bits in hex, as a
    uuid4's (``uuid`` itself loads ``platform`` and its regular expressions, a cost every
    one-job ``sandbox submit`` would pay)."""
    return os.urandom(16).hex()


def accepting(path: str) -> bool:
    """True once a worker accepts connections on the unix socket ``path`` (the socket
    file exists a moment before the worker listens, so only a connection tells)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
            return True
        except OSError:
            return False


# on_output(stream, offset, data): "stdout" or "stderr", the piece's position in it, bytes.
OutputHandler = Callable[[str, int, bytes], None]


class WorkerError(Exception):
    """An error reply from the worker (``code`` is the protocol's error code)."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply.get('code')}: {reply.get('message')}")
        self.code = reply.get("code")
        self.field = reply.get("field")
        self.reply = reply


class Mailbox:
    """Sorts incoming messages: per-job events, and everything else in arrival order."""

    def __init__(self) -> None:
        self.events: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self.other: deque[dict[str, Any]] = deque()

    def closed(self) -> Exception:
        """What to raise once the worker closed the connection: the error it closed it
        with (a frame too large, say: the last message before the close), unless someone
        took it already, else a ConnectionError. A caller waiting for a job's result
        gets the reason too."""
        if self.other and self.other[-1].get("type") == "error":
            return WorkerError(self.other[-1])
        return ConnectionError("the worker closed the connection")

    def put(self, message: dict[str, Any]) -> None:
        """Messages about an id (a job's events, an upload's ``file``, errors about
        either) are kept by their id, the rest in arrival order."""
        if message.get("type") in ("event", "file", "session") or (message.get("type") == "error" and "id" in message):
            self.events[message["id"]].append(message)
        else:
            self.other.append(message)

    def answer(self, request: str) -> dict[str, Any] | None:
        """The worker's answer to a session request, once it has arrived."""
        queue = self.events.get(request)
        if not queue:
            return None
        message = queue.popleft()
        del self.events[request]
        if message["type"] == "error":
            raise WorkerError(message)
        return message

    def stored(self, upload: str) -> str | None:
        """The file id of a finished upload, once the worker's answer has arrived."""
        queue = self.events.get(upload)
        if not queue:
            return None
        message = queue.popleft()
        del self.events[upload]
        if message["type"] == "error":
            raise WorkerError(message)
        return str(message["file_id"])

    def final(self, job_id: str, on_output: OutputHandler | None = None) -> Result | None:
        """The job's result once its final event (or an error about it) has arrived;
        streamed output on the way goes to ``on_output``. One outcome per call: an id
        submitted again is answered again, and that answer waits for the next call."""
        message = self.final_event(job_id, on_output)
        return None if message is None else result_from_wire(message["result"])

    def final_group(self, group_id: str) -> list[Result] | None:
        """A group's results, in member order, once its final event has arrived."""
        message = self.final_event(group_id, None)
        return None if message is None else [result_from_wire(result) for result in message["results"]]

    def final_event(self, job_id: str, on_output: OutputHandler | None) -> dict[str, Any] | None:
        """The final event of the job (or group) once it has arrived (``final``)."""
        queue = self.events[job_id]
        while queue:
            message = queue.popleft()
            if message["type"] == "error":
                raise WorkerError(message)
            if message["event"] == "output":
                if on_output is not None:
                    on_output(message["stream"], message["offset"], message["data"])
                continue
            if message["event"] in _FINAL_EVENTS:
                if not queue:
                    del self.events[job_id]
                if "result" not in message and "results" not in message:
                    raise WorkerError({"code": "cancelled", "message": f"job {job_id} was cancelled"})
                return message
        return None


def hello_message(token: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "hello", "version": VERSION}
    if token is not None:
        message["token"] = token
    return message


def with_file_contents(job: Job) -> Job:
    """The job with its host files (a ``Blob(path=...)`` stdin or input file) read into
    bytes: the worker runs jobs on another side of a socket, maybe another host."""

    def read(blob: Blob) -> Blob:
        if blob.path is None:
            return blob  # its bytes, or the id of a file the worker caches
        try:
            with open(str(blob.path), "rb") as handle:
                return Blob(data=handle.read())
        except OSError as exc:
            raise JobError(f"cannot read {blob.path}: {exc.strerror}", field="files") from exc

    return dataclasses.replace(
        job, stdin=None if job.stdin is None else read(job.stdin),
        files=[dataclasses.replace(f, content=read(f.content)) for f in job.files],
    )


def submit_message(job: Job, job_id: str, stream: bool, hello: dict[str, Any]) -> dict[str, Any]:
    """The submit message. Neither client shows "accepted" or "started" to its caller, so
    it declines them where the worker lets it (capability "progress-optional")."""
    message: dict[str, Any] = {"type": "submit", "id": job_id, "job": job_to_wire(with_file_contents(job))}
    if stream:
        message["stream"] = True
    if "progress-optional" in hello.get("capabilities", ()):
        message["progress"] = False
    return message


def session_exec_message(session: str, job: Job, exec_id: str, stream: bool, hello: dict[str, Any]) -> dict[str, Any]:
    """The session_exec request: a submit's, naming the session."""
    return {**submit_message(job, exec_id, stream, hello), "type": "session_exec", "session": session}


# A problem package for ``Client.judge``: each file's bytes, or {"file_id": ID} for one put before.
Package = Mapping[str, bytes | dict[str, str]]


def judge_message(judge_id: str, problem: Package, lang: str, source: bytes,
                  compile_options: Sequence[str], args: Sequence[str], stop_on_failure: bool,
                  parallel: int, image: str | None = None,
                  interpreter: Sequence[str] | None = None) -> dict[str, Any]:
    submission: dict[str, Any] = {"lang": lang, "source": source, "compile_options": list(compile_options),
                                  "args": list(args)}
    if image is not None:  # (sent only when set: a worker that predates it takes the rest)
        submission["image"] = image
    if interpreter is not None:  # (the same)
        submission["interpreter"] = list(interpreter)
    return {"type": "judge", "id": judge_id, "problem": problem, "stop_on_failure": stop_on_failure,
            "parallel": parallel, "submission": submission}


def group_message(group: Group, group_id: str, hello: dict[str, Any]) -> dict[str, Any]:
    """The group request (as ``submit_message``: its progress events declined where possible)."""
    members = Group([with_file_contents(job) for job in group.jobs], group.pipes)
    message: dict[str, Any] = {"type": "group", "id": group_id, **group_to_wire(members)}
    if "progress-optional" in hello.get("capabilities", ()):
        message["progress"] = False
    return message


def _chunks(source: bytes | str | os.PathLike[str], size: int) -> Iterator[tuple[bytes, bool]]:
    """The bytes to put, ``size`` at a time, each with whether it is the last; never
    more of a file in memory than two chunks: a path is read as it is sent. At least one
    chunk (an empty file is put too)."""
    if isinstance(source, bytes):
        starts = range(0, max(len(source), 1), size)
        yield from ((source[start:start + size], start == starts[-1]) for start in starts)
        return
    with open(source, "rb") as handle:
        chunk = handle.read(size)
        while following := handle.read(size):
            yield chunk, False
            chunk = following
        yield chunk, True


def put_messages(source: bytes | str | os.PathLike[str], upload: str, max_frame: int,
                 tree: bool = False) -> Iterator[dict[str, Any]]:
    """The put_file frames of one upload, sized to the worker's frame limit; the last one
    names the id of the bytes sent (the worker checks it: a file that changed while it
    was read is refused, never stored under an id other than the one hashed here). A
    tree's (``tree``: ``source`` is its tar) says so on its first frame."""
    import hashlib  # here, for uploads only: loading OpenSSL weighs on a one-job ``sandbox submit``

    digest = hashlib.sha256()
    offset = 0
    for chunk, last in _chunks(source, min(MAX_CHUNK, max_frame - _PUT_OVERHEAD)):
        digest.update(chunk)
        message: dict[str, Any] = {"type": "put_file", "id": upload, "offset": offset, "data": chunk, "last": last}
        if tree and not offset:
            message["tree"] = True
        if last:
            message["file_id"] = (TREE_ID_PREFIX if tree else FILE_ID_PREFIX) + digest.hexdigest()
        yield message
        offset += len(chunk)


def tree_tar(source: bytes | str | os.PathLike[str]) -> bytes:
    """A tree to put: a directory, made a tar here (its entries sorted, so the same tree
    gives the same tar and id; owners and times left out, which a tree does not keep), or
    the bytes of a tar already made."""
    if isinstance(source, bytes):
        return source
    import tarfile  # only for trees, as hashlib above

    def plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        root = os.fspath(source)
        for directory, subdirectories, names in os.walk(root):
            subdirectories.sort()
            for name in sorted(subdirectories + names):
                path = os.path.join(directory, name)
                archive.add(path, os.path.relpath(path, root), recursive=False, filter=plain)
    return buffer.getvalue()


class Client:
    """Blocking client over a unix socket (``path``) or TCP (``tcp=(host, port)``, token)."""

    def __init__(self, path: str | None = None, *, tcp: tuple[str, int] | None = None,
                 token: str | None = None, timeout: float | None = None) -> None:
        if tcp is not None:
            self._sock = socket.create_connection(tcp, timeout=timeout)
        else:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._sock.connect(str(path))  # blocking: waits for room in a full backlog
            except BaseException:
                self._sock.close()  # no socket left open by a worker that is not there
                raise
            self._sock.settimeout(timeout)
        self._decoder = FrameDecoder(REPLY_MAX_FRAME)
        self._mail = Mailbox()
        self._poller = select.poll()
        self._poller.register(self._sock, select.POLLIN | select.POLLOUT)
        try:
            self._send(hello_message(token))
            self.hello = self._next_other()
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def submit(self, job: Job, job_id: str | None = None, *, stream: bool = False) -> str:
        """Submit; with ``stream``, the worker sends the output as it comes (``wait``'s
        ``on_output`` gets it)."""
        job_id = job_id or new_id()
        self._send(submit_message(job, job_id, stream, self.hello))
        return job_id

    def wait(self, job_id: str, on_output: OutputHandler | None = None) -> Result:
        while (result := self._mail.final(job_id, on_output)) is None:
            self._receive()
        return result

    def run(self, job: Job, job_id: str | None = None, *, on_output: OutputHandler | None = None) -> Result:
        """Submit and wait. ``on_output(stream, offset, data)`` is called with the job's
        output as it comes ("stdout"/"stderr", the piece's position in that stream; best
        effort: a gap in the offsets is output dropped on the way, the Result has it all)."""
        return self.wait(self.submit(job, job_id, stream=on_output is not None), on_output)

    def group(self, jobs: list[Job], pipes: list[Pipe], group_id: str | None = None) -> list[Result]:
        """Run a group (``Runner.run_group``) and wait: a Result per member, in order.
        Raises JobError for a group malformed as a whole, WorkerError for what the worker
        refuses (``invalid_job`` naming ``jobs.N.<field>`` for a member)."""
        group_id = group_id or new_id()
        self._send(group_message(Group(jobs, pipes), group_id, self.hello))
        while (results := self._mail.final_group(group_id)) is None:
            self._receive()
        return results

    def cancel(self, job_id: str) -> None:
        self._send({"type": "cancel", "id": job_id})

    def judge(self, problem: Package, lang: str, source: bytes, *, compile_options: Sequence[str] = (),
              args: Sequence[str] = (), stop_on_failure: bool = False, parallel: int = 1,
              judge_id: str | None = None, on_test: Callable[[dict[str, Any]], None] | None = None,
              image: str | None = None, interpreter: Sequence[str] | None = None) -> dict[str, Any]:
        """Judge ``source`` against a problem package (``judge.problem.read_package``
        gives one from a directory; a big file may be ``{"file_id": put_file(...)}``
        instead of its bytes) in the worker: compiled once, every test a job there,
        ``parallel`` of them at once, on ``image`` (default: the language image), with
        ``interpreter`` in the interpreter mode (python3; these modules imported ahead).
        ``on_test`` hears each test's report as it is decided; the whole report (the
        shape of ``sandbox judge --json``) is returned."""
        judge_id = judge_id or new_id()
        self._send(judge_message(judge_id, problem, lang, source, compile_options, args, stop_on_failure, parallel,
                                 image, interpreter))
        queue = self._mail.events[judge_id]
        while True:
            while not queue:
                self._receive()
            message = queue.popleft()
            if message["type"] == "error":
                del self._mail.events[judge_id]
                raise WorkerError(message)
            if message["event"] == "test_finished" and on_test is not None:
                on_test(message["test"])
            elif message["event"] in ("judged", "cancelled"):
                del self._mail.events[judge_id]
                if message["event"] == "cancelled":
                    raise WorkerError({"code": "cancelled", "message": f"judge {judge_id} was cancelled"})
                report: dict[str, Any] = message["report"]
                return report


    def put_file(self, source: bytes | str | os.PathLike[str]) -> str:
        """Store bytes, or the file at a path, in the worker's file cache; its id
        (``sha256:`` and the hex digest), for ``Blob(file_id=...)`` in any number of jobs.
        Sent in chunks that fit the worker's frames, whatever the size; raises
        WorkerError ``cache_full`` if the worker's cache has no room for it."""
        return self._upload(source, tree=False)

    def put_tree(self, source: bytes | str | os.PathLike[str]) -> str:
        """Store a directory tree in the worker's cache, once, for any number of jobs to
        mount read-only (``Mount(path, tree_id)``): a directory (made a tar here:
        ``tree_tar``) or a tar's bytes. Its id (``tree:sha256:`` and the tar's digest).
        Raises WorkerError ``bad_tree`` for a tar that is not only a tree, ``cache_full``
        as ``put_file``."""
        return self._upload(tree_tar(source), tree=True)

    def _upload(self, source: bytes | str | os.PathLike[str], tree: bool) -> str:
        """Put a file (or a tree's tar) and wait for the id the worker stored it under."""
        upload = new_id()
        for message in put_messages(source, upload, int(self.hello["max_frame"]), tree=tree):
            self._send(message)
        while (stored := self._mail.stored(upload)) is None:
            self._receive()
        return stored

    def del_file(self, file_id: str) -> bool:
        """Remove a cached file (or tree, by its tree id): True if removed now, False if it
        goes as the last job queued or running with it ends. Raises WorkerError
        ``unknown_file`` for an id the worker does not have."""
        self._send({"type": "del_file", "file_id": file_id})
        return bool(self._next_other()["removed"])

    def ping(self) -> dict[str, Any]:
        self._send({"type": "ping"})
        return self._next_other()

    # Sessions: sandboxes that live between commands (docs/protocol.md "Sessions").

    def session_create(self, spec: SessionSpec | None = None) -> str:
        """Make a session (on the host image, the default profile and limits, unless
        ``spec`` says); its id, for the other session calls, from any connection."""
        wire = session_spec_to_wire(spec or SessionSpec())
        return str(self._session_request({"type": "session_create", **wire})["session"])

    def session_exec(self, session: str, job: Job, exec_id: str | None = None, *,
                     on_output: OutputHandler | None = None) -> Result:
        """Run ``job`` in the session (its image and profile are the session's) and wait:
        the Result a job has. Raises WorkerError ``unknown_session``, ``session_paused``."""
        exec_id = exec_id or new_id()
        self._send(session_exec_message(session, job, exec_id, on_output is not None, self.hello))
        return self.wait(exec_id, on_output)

    def session_pause(self, session: str) -> dict[str, Any]:
        return self._session_request({"type": "session_pause", "session": session})

    def session_resume(self, session: str) -> dict[str, Any]:
        return self._session_request({"type": "session_resume", "session": session})

    def session_stop(self, session: str, grace_s: float = DEFAULT_STOP_GRACE_S) -> dict[str, Any]:
        """SIGTERM to the exec under way, SIGKILL ``grace_s`` later; ``stopped`` says
        whether one ran. The session and its files stay."""
        return self._session_request({"type": "session_stop", "session": session, "grace": grace_s})

    def session_delete(self, session: str) -> dict[str, Any]:
        return self._session_request({"type": "session_delete", "session": session})

    def session_commit(self, session: str, reference: str) -> dict[str, Any]:
        """Store the session's root (an image session's: its image plus what its execs
        changed) as the image ``reference`` (name:tag), between execs; the listing, with
        the new image's ``reference`` and ``image_id``. Raises WorkerError
        ``session_error`` (a host-image session; an exec running), ``invalid_job``."""
        return self._session_request({"type": "session_commit", "session": session, "reference": reference})

    def session_list(self) -> list[dict[str, Any]]:
        self._send({"type": "session_list"})
        sessions: list[dict[str, Any]] = self._next_other()["sessions"]
        return sessions

    def session_logs(self, session: str) -> list[dict[str, Any]]:
        """The session's recent execs: id, cmd, status, exit_code and the end of each output."""
        logs: list[dict[str, Any]] = self._session_request({"type": "session_logs", "session": session})["logs"]
        return logs

    def _session_request(self, message: dict[str, Any]) -> dict[str, Any]:
        request = new_id()
        self._send({**message, "id": request})
        while (answer := self._mail.answer(request)) is None:
            self._receive()
        return answer

    def stats(self) -> dict[str, Any]:
        self._send({"type": "stats"})
        return self._next_other()

    def _send(self, message: dict[str, Any]) -> None:
        """Send, taking in what the worker sends meanwhile. A client blocked in a send
        while the worker waits for it to read deadlocks once both directions' buffers
        are full - as they are when many jobs are submitted before the first wait."""
        pending = memoryview(encode(message))
        timeout = self._sock.gettimeout()
        while pending:
            ready = self._poller.poll(None if timeout is None else timeout * 1000)
            if not ready:
                raise TimeoutError("timed out sending to the worker")
            events = ready[0][1]
            if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._receive()
            if events & select.POLLOUT:
                try:
                    pending = pending[self._sock.send(pending, socket.MSG_DONTWAIT):]
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    while True:  # the worker closed mid-send: read what it said before, then why it closed
                        self._receive()

    def _receive(self) -> None:
        try:
            data = self._sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""  # the worker closed before it read all we sent; what it said came before this
        if not data:
            raise self._mail.closed()
        for message in self._decoder.feed(data):
            self._mail.put(message)

    def _next_other(self) -> dict[str, Any]:
        while not self._mail.other:
            self._receive()
        message = self._mail.other.popleft()
        if message.get("type") == "error":
            raise WorkerError(message)
        return message


__all__ = ["Client", "ProtocolError", "WorkerError"]
