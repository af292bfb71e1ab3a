"""``sandbox serve``: the trio worker. Listens on a unix socket (0600) and/or TCP (only
with a token), speaks worker/protocol.py, and hands jobs to the pool; with ``--http``
also serves the HTTP+JSON front door (worker/http.py) to the same pool, and with a Redis
queue it also takes jobs from a stream (worker/queue_consumer.py) into the same pool.

Every connection has a bounded outgoing queue and a send deadline: a client that never
reads its results is disconnected (and its jobs cancelled) instead of growing the
worker's memory. The first message must be ``hello`` (with the token on TCP); a
connection that does not say it within ``hello_timeout_s`` is closed, so idle sockets
cost a file descriptor each and nothing more, up to ``max_connections``.
"""

from __future__ import annotations

import gc
import grp
import hmac
import ipaddress
import itertools
import os
import resource
import signal
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from sandbox.models import Group, Job, WarmSpec
from sandbox.profile_names import builtin_profiles
from worker.admission import admit
from worker.filecache import DEFAULT_CAPACITY, CacheInUse, FileCache, Upload
from worker.judging import PoolStages, judge_from_wire, run_judge
from worker.launcher_channel import LAUNCHER_MAX_FRAME
from worker.logs import log
from worker.metrics import Metrics
from worker.pool import Pool
from worker.protocol import (
    DEFAULT_MAX_FRAME,
    SESSION_ACTIONS,
    VERSION,
    FrameDecoder,
    ProtocolError,
    commit_reference,
    encode,
    event_message,
    file_id,
    group_from_wire,
    hello_message,
    job_from_wire,
    job_id,
    message_type,
    put_chunk,
    session_id,
    session_spec_from_wire,
    stop_grace,
)
from worker.queue_schema import QueueConfig
from worker.sessions import Sessions
from worker.socketclaim import SocketClaim
from worker.streams import send_now

if TYPE_CHECKING:
    from worker.queue_consumer import QueueConsumer

CAPABILITIES = [
    "submit", "group", "judge", "cancel", "status", "stats", "idempotent-ids", "output-stream", "progress-optional",
    "file-cache", "trees", "sessions", "session-commit", "binds", "volumes",
]
# Events a submitter may decline with "progress": false (its client waits for the outcome only).
PROGRESS_EVENTS = frozenset({"accepted", "started"})
# The largest request a worker may be told to take (--max-frame): a job travels on to its
# launcher with a few fields more, in a frame of at most LAUNCHER_MAX_FRAME.
MIN_MAX_FRAME, MAX_MAX_FRAME = 64 << 10, LAUNCHER_MAX_FRAME // 2
OUT_QUEUE = 1024
DISCARD_IDLE_S = 2.0  # the rest of a frame too large stops coming: close (``Server._discard``)
ROOM_PER_REQUEST = 8  # a request's replies: accepted, a final event, an error
MAX_UPLOADS = 64  # put_file uploads under way on one connection
QUEUE_ONLY_CACHES = 64  # workers with neither socket nor address one user may run at once (``_open_file_cache``)


@dataclass
class ServerConfig:
    socket_path: str | None = None
    socket_group: str | None = None  # a group whose members may connect too (socket 0660)
    tcp: tuple[str, int] | None = None
    token: str | None = None
    metrics: tuple[str, int] | None = None  # serve Prometheus metrics here (worker/metrics.py)
    http: tuple[str, int] | None = None  # the HTTP+JSON front door (worker/http.py)
    callback_secret: str | None = None  # signs job callbacks (default: the token)
    callback_attempts: int = 5
    callback_timeout_s: float = 10.0
    allow_private_callbacks: bool = False  # callbacks to loopback/private hosts (tests, trusted networks)
    slots: int = os.cpu_count() or 1  # jobs that may run at once
    launchers: int | None = None  # processes that run them (default: one per CPU; never more than slots)
    max_queue: int = 1024
    warm: int = 0  # sandboxes for the default profile on the host image, over all slots
    warm_for: list[WarmSpec] = field(default_factory=list)  # other kinds (sandbox serve --warm-for)
    retention_s: float = 300.0  # how long a finished job's record (and result) is kept for its id
    retention_bytes: int = 1 << 30  # and how many bytes of them are kept at most, the oldest forgotten first
    max_frame: int = DEFAULT_MAX_FRAME
    max_connections: int = 16384
    hello_timeout_s: float = 10.0
    send_timeout_s: float = 10.0
    grace_s: float = 30.0
    file_cache_dir: str | None = None  # default: beside the socket (SOCKET.files), else under $XDG_CACHE_HOME
    file_cache_size: int = DEFAULT_CAPACITY
    queue: QueueConfig | None = None  # also take jobs from this Redis stream
    http_forward: bool = False  # HTTP jobs, judges and files go to the queue, not this worker's pool
    allow_bind: list[str] = field(default_factory=list)  # host directories jobs may bind below (--allow-bind)


class Connection:
    _ids = itertools.count(1)

    def __init__(self, stream: trio.abc.Stream, authenticated: bool) -> None:
        self.number = next(self._ids)
        self.stream = stream
        self.authenticated = authenticated
        self.hello_done = False
        # put_file uploads under way, by the client's name for them; None: one that failed,
        # whose chunks still coming are dropped (its error was sent once).
        self.uploads: dict[str, Upload | None] = {}
        # Messages, or the unsent end of one that ``deliver`` sent in part.
        self.outbox_send, self.outbox = trio.open_memory_channel[dict[str, Any] | bytes](OUT_QUEUE)
        self.scope = trio.CancelScope()
        self.nursery: trio.Nursery | None = None  # where its judges run (``_handle``)
        self.judges: dict[str, PoolStages] = {}  # its judges in progress, by id
        self._drained = trio.Event()
        # Messages handed to the writer and not sent yet (queued, or in its hands: a
        # channel gives a message straight to a waiting writer, so the channel's buffer
        # can be empty while one is still to go out). Only at 0 may ``deliver`` send itself.
        self.unsent = 0

    async def room(self) -> None:
        """Wait while the outbox has no room for the replies of one more request (a
        few). The reader calls it before each request: a client that sends faster than
        it reads is slowed down (its requests wait in its socket), not cut off; one
        that does not read at all is cut off by the writer's timeout. Only a nearly
        full outbox stops the reading: a client may send a burst of requests before it
        reads any reply, as long as their replies fit."""
        while self.outbox_send.statistics().current_buffer_used >= OUT_QUEUE - ROOM_PER_REQUEST:
            self._drained = trio.Event()
            await self._drained.wait()

    def sent(self) -> None:
        """The writer has taken a message out of the outbox."""
        self._drained.set()

    def deliver_outcome(self, message: dict[str, Any]) -> None:
        """``deliver`` for a job submitted with "progress": false - every event but
        accepted and started. A client that only waits for results is then woken once
        per job instead of three times (CPU per warm job through the worker: -0.12 ms)."""
        if message.get("event") not in PROGRESS_EVENTS:
            self.deliver(message)

    def deliver(self, message: dict[str, Any]) -> None:
        """Queue a message; a client too slow to keep a bounded queue drained is cut off.
        Streamed output is best effort: it is dropped while the queue is half full (the
        offsets show the gap; the result holds all of it), never a reason to cut off."""
        if message.get("event") == "output" and self.outbox_send.statistics().current_buffer_used >= OUT_QUEUE // 2:
            return
        pending: dict[str, Any] | bytes = message
        if not self.unsent and isinstance(self.stream, trio.SocketStream):
            try:
                pending = send_now(self.stream, encode(message))
            except OSError:
                return  # the client is gone; the reader sees it and ends the connection
            if not pending:
                return
        try:
            self.outbox_send.send_nowait(pending)
            self.unsent += 1
        except trio.WouldBlock:
            self.scope.cancel()
        except trio.ClosedResourceError:
            pass  # the connection is closing; its jobs are being cancelled


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        # Configuration errors are raised here, before trio runs: a clear message, not a
        # traceback out of a nursery.
        if config.slots < 1:
            raise ValueError("--slots must be at least 1")
        warm = WarmSpec.merged([WarmSpec(config.warm), *config.warm_for])
        unknown = sorted({spec.profile for spec in warm} - set(builtin_profiles()))
        if unknown:
            raise ValueError(f"warm sandboxes for profiles that do not exist: {', '.join(unknown)}")
        if config.tcp and not config.token:
            raise ValueError("TCP needs a token (--token-file)")
        if not config.socket_path and not config.tcp and not config.http and not config.queue:
            raise ValueError("nothing to listen on: give --socket, --tcp, --http and/or --redis")
        if config.http_forward and not (config.http and config.queue):
            raise ValueError("--http-forward needs --http and --redis (the stream the HTTP door forwards to)")
        if config.http and not config.token and not _loopback(config.http[0]):
            raise ValueError("--http on an address other hosts can reach needs a token (--token-file)")
        if config.callback_attempts < 1:
            raise ValueError("--callback-attempts must be at least 1")
        if not MIN_MAX_FRAME <= config.max_frame <= MAX_MAX_FRAME:
            raise ValueError(f"--max-frame must be from {MIN_MAX_FRAME >> 10}K to {MAX_MAX_FRAME >> 20}M")
        self.socket_gid = None if config.socket_group is None else _group_id(config.socket_group)
        # Last: a worker refused for its configuration takes no socket path, and its
        # file cache is the one of the socket it claimed.
        self.claim = None if config.socket_path is None else SocketClaim(config.socket_path)
        try:
            self.cache = _open_file_cache(config)
        except (ValueError, OSError) as exc:
            if self.claim is not None:
                self.claim.release()
            raise ValueError(f"file cache: {exc}") from None
        self.pool = Pool(config.slots, config.max_queue, warm, retention_s=config.retention_s,
                         max_kept_bytes=config.retention_bytes, cache=self.cache,
                         launchers=config.launchers, allow_bind=config.allow_bind,
                         sessions_dir=_sessions_dir(self.cache))
        self.metrics = Metrics(self.pool, self.cache) if config.metrics or config.http else None
        if self.metrics is not None:
            self.pool.on_finished = self.metrics.observe
        self.sessions = Sessions(self.pool)
        self.queue = None if config.queue is None else _consumer(config, self.pool, self.metrics)
        self.connections: set[Connection] = set()
        self._connection_closed = trio.Event()
        self.stopping = False

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the launchers and the signal handling first, then bind: once the socket
        exists, the worker is ready and SIGTERM is handled."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.pool.run)
                nursery.start_soon(self.sessions.expire)
                if self.queue is not None:
                    nursery.start_soon(self.queue.run)
                accept_scope = trio.CancelScope()
                await nursery.start(self._signals, accept_scope, nursery.cancel_scope)
                if self.metrics is not None and self.config.metrics is not None:
                    await nursery.start(self.metrics.serve, *self.config.metrics)
                if self.config.http is not None:
                    # Loaded only here: a worker without --http imports no HTTP stack.
                    from worker.http import HttpFrontDoor

                    await nursery.start(HttpFrontDoor(self).serve, *self.config.http)
                listeners = await self._listeners()

                async def accept() -> None:
                    # Connections live in the outer nursery: to stop accepting must not
                    # also cut off the clients whose jobs are finishing.
                    with accept_scope:
                        await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

                if listeners:  # (a worker of a queue alone has none)
                    nursery.start_soon(accept)
                # What start-up loaded (trio, the codecs, the engine's modules) lives as
                # long as the worker: the collector's full passes, which hold the event
                # loop - every job's supervision and reply - need not walk it.
                gc.freeze()
                log("listening", socket=self.config.socket_path, tcp=self.config.tcp, http=self.config.http,
                    metrics=self.config.metrics, slots=self.config.slots,
                    stream=self.config.queue and ",".join(self.config.queue.streams))
                task_status.started()
        finally:
            self.cache.close()
            if self.claim is not None:
                self.claim.release()
            log("stopped")

    async def _listeners(self) -> list[trio.abc.Listener[Any]]:
        """TCP first, the Unix socket last: clients (and the tests) take an accepting Unix
        socket as the sign that every listener is up."""
        listeners: list[trio.abc.Listener[Any]] = []
        if self.config.tcp:
            host, port = self.config.tcp
            listeners.extend(await trio.open_tcp_listeners(port, host=host))
        if self.claim is not None:
            path = self.claim.path
            self.claim.clear_stale()
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o177)  # created 0600: only the worker's user may connect
            try:
                await sock.bind(path)
            finally:
                os.umask(old_umask)
            self.claim.bound()
            if self.socket_gid is not None:
                # Group first, then the mode: at no moment may another group connect.
                os.chown(path, -1, self.socket_gid)
                os.chmod(path, 0o660)
            sock.listen(512)
            listeners.append(trio.SocketListener(sock))
        return listeners

    async def _signals(
        self,
        accept_scope: trio.CancelScope,
        everything: trio.CancelScope,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """SIGTERM/SIGINT: stop accepting (and taking from the queue), let running jobs -
        and the queue's jobs held - finish up to the grace deadline, then cancel what is
        left (a queue's job left unfinished stays pending in Redis, for another worker)."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                log("stopping", signal=signal.Signals(signum).name, running=self.pool.running)
                self.stopping = True
                accept_scope.cancel()
                if self.queue is not None:
                    self.queue.stop()
                for record in list(self.pool.records.values()):
                    if record.state.value == "queued" and record.owner is not self.queue:
                        await self.pool.cancel(record.id)
                with trio.move_on_after(self.config.grace_s):
                    if self.queue is not None:
                        await self.queue.drained()
                    await self.pool.wait_idle()
                # Let every client receive what is queued for it, then close.
                for connection in list(self.connections):
                    connection.outbox_send.close()
                with trio.move_on_after(self.config.send_timeout_s):
                    while self.connections:
                        await self._connection_closed.wait()
                        self._connection_closed = trio.Event()
                everything.cancel()
                return

    async def _handle(self, stream: trio.abc.Stream) -> None:
        is_unix = isinstance(stream, trio.SocketStream) and stream.socket.family == socket.AF_UNIX
        connection = Connection(stream, authenticated=is_unix)
        if len(self.connections) >= self.config.max_connections or self.stopping:
            refusal = ProtocolError("busy", "the worker is stopping" if self.stopping else "too many connections")
            with trio.move_on_after(1):
                try:
                    await stream.send_all(encode(refusal.to_message()))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # gone already (a readiness probe connects and leaves): nothing to tell it
            await stream.aclose()
            return
        self.connections.add(connection)
        try:
            with connection.scope:
                async with trio.open_nursery() as nursery:
                    connection.nursery = nursery
                    nursery.start_soon(self._writer, connection)
                    try:
                        await self._reader(connection)
                    finally:
                        connection.outbox_send.close()  # the writer flushes what is queued, then ends
                        with trio.CancelScope(shield=True):  # its judges end with it, before the nursery
                            for stages in list(connection.judges.values()):
                                await stages.cancel()
        except Exception as exc:  # a fault in one of its tasks (a judge, a session's answer): its end alone
            log("connection_error", connection=connection.number, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.connections.discard(connection)
            self._connection_closed.set()
            for upload in connection.uploads.values():
                if upload is not None:
                    self.cache.abort(upload)  # no partial file outlives its connection
            with trio.CancelScope(shield=True):
                await self.pool.drop_owner(connection)
                await stream.aclose()

    async def _writer(self, connection: Connection) -> None:
        try:
            async for message in connection.outbox:
                connection.sent()
                with trio.move_on_after(self.config.send_timeout_s) as deadline:
                    await connection.stream.send_all(message if isinstance(message, bytes) else encode(message))
                connection.unsent -= 1
                if deadline.cancelled_caught:
                    log("client_not_reading", connection=connection.number)
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client is gone
        # The outbox was closed and drained (the reader ended, or the worker is stopping),
        # or the client stopped reading: either way this connection is over.
        connection.scope.cancel()

    async def _reader(self, connection: Connection) -> None:
        decoder = FrameDecoder(self.config.max_frame)
        with trio.move_on_after(self.config.hello_timeout_s) as hello_deadline:
            while not connection.hello_done:
                if not await self._read_once(connection, decoder):
                    return
        if hello_deadline.cancelled_caught:
            connection.deliver(ProtocolError("timeout", "no hello within the time allowed").to_message())
            return
        while await self._read_once(connection, decoder):
            pass

    async def _read_once(self, connection: Connection, decoder: FrameDecoder) -> bool:
        """Read and dispatch one chunk; False when the connection should end."""
        try:
            data = await connection.stream.receive_some(1 << 16)
        except trio.BrokenResourceError:
            return False
        if not data:
            return False
        for item in decoder.feed_items(data):
            await connection.room()
            if isinstance(item, ProtocolError):
                connection.deliver(item.to_message())
                if item.code == "frame_too_large":
                    log("frame_too_large", connection=connection.number, message=item.message)
                    await self._discard(connection, decoder.oversized_rest)
                if item.fatal:
                    return False
                continue
            reply_id = item.get("id") if isinstance(item.get("id"), str) else None
            try:
                await self._dispatch(connection, item)
            except ProtocolError as exc:
                connection.deliver(exc.to_message(reply_id))
                if exc.fatal:
                    return False
            except Exception as exc:  # a fault of the worker's: this connection's end, never the worker's
                log("connection_error", connection=connection.number, error=f"{type(exc).__name__}: {exc}")
                connection.deliver(ProtocolError("internal_error", type(exc).__name__).to_message(reply_id))
                return False
        return True

    async def _discard(self, connection: Connection, rest: int) -> None:
        """Read and drop the rest of a frame that was too large, so that its sender
        finishes sending and reads the error (closed with unread data, a socket resets
        the connection, and the client sees only that). While it keeps coming, for
        ``send_timeout_s`` at most: a client that trickles a huge frame, or sent only its
        header, is closed all the same."""
        with trio.move_on_after(self.config.send_timeout_s):
            while rest > 0:
                data: bytes | bytearray = b""
                with trio.move_on_after(DISCARD_IDLE_S):
                    try:
                        data = await connection.stream.receive_some(min(rest, 1 << 20))
                    except trio.BrokenResourceError:
                        return
                if not data:
                    return  # the client closed, or sends no more
                rest -= len(data)

    async def _dispatch(self, connection: Connection, message: dict[str, Any]) -> None:
        if not connection.hello_done:
            if message.get("type") != "hello":
                raise ProtocolError("hello_required", "the first message must be hello", fatal=True)
            self._hello(connection, message)
            return
        kind = message_type(message)
        if kind == "hello":
            raise ProtocolError("bad_message", "hello was already said")
        if kind in ("submit", "group"):
            if self.stopping:
                raise ProtocolError("busy", "the worker is shutting down")
            identifier = job_id(message)
            work: Job | Group
            if kind == "submit":
                work = job_from_wire(message.get("job"))
                members = [work]
            else:
                work = group_from_wire(message.get("jobs"), message.get("pipes"))
                members = work.jobs
            if not self.pool.knows(identifier):
                for index, job in enumerate(members):  # (a known id's was admitted; its image may be gone since)
                    admit(job, field_prefix="" if kind == "submit" else f"jobs.{index}.")
            stream, progress = _flag(message, "stream", False), _flag(message, "progress", True)
            if stream and kind == "group":
                raise ProtocolError("bad_message", "a group's output is not streamed", field="stream")
            deliver = connection.deliver if progress else connection.deliver_outcome
            self.pool.submit(identifier, work, connection, deliver, stream)
        elif kind == "judge":
            self._judge(connection, message)
        elif kind == "cancel":
            identifier = job_id(message)
            if identifier in connection.judges:
                await connection.judges[identifier].cancel()
            else:
                await self.pool.cancel(identifier)
        elif kind == "status":
            record = self.pool.state(job_id(message))
            connection.deliver({"type": "status", "id": record.id, "state": record.state.value})
        elif kind == "ping":
            connection.deliver({"type": "pong", "seq": message.get("seq")})
        elif kind == "stats":
            connection.deliver({"type": "stats", **self.pool.snapshot(), "connections": len(self.connections),
                                "file_cache": self.cache.snapshot()})
        elif kind == "put_file":
            await self._put_file(connection, message)
        elif kind == "del_file":
            identifier = file_id(message)
            removed = self.cache.delete(identifier)
            connection.deliver({"type": "file_deleted", "file_id": identifier, "removed": removed})
        elif kind == "session_exec":
            if self.stopping:
                raise ProtocolError("busy", "the worker is shutting down")
            identifier, job = job_id(message), job_from_wire(message.get("job"))
            session = session_id(message)
            stream, progress = _flag(message, "stream", False), _flag(message, "progress", True)
            self.sessions.submit_exec(identifier, session, job, connection,
                                      connection.deliver if progress else connection.deliver_outcome, stream)
        elif kind == "session_list":
            connection.deliver({"type": "sessions", "sessions": self.sessions.listing()})
        elif kind.startswith("session_"):
            self._session_request(connection, kind, message)

    def _session_request(self, connection: Connection, kind: str, message: dict[str, Any]) -> None:
        """session_create, or an action on one session: answered ``session`` with the
        request's id (create and stop take a while: they run beside the connection's
        other requests), or an error with that id."""
        identifier = job_id(message)
        if kind == "session_create":
            if self.stopping:
                raise ProtocolError("busy", "the worker is shutting down")
            spec = session_spec_from_wire(message)
        else:
            session, action = session_id(message), SESSION_ACTIONS[kind]
            grace = stop_grace(message) if action == "stop" else 0.0
            reference = commit_reference(message) if action == "commit" else ""
            if action == "logs":
                connection.deliver({"type": "session", "id": identifier, **self.sessions.get(session).to_wire(),
                                    "logs": self.sessions.logs(session)})
                return

        async def answer() -> None:
            try:
                if kind == "session_create":
                    reply = (await self.sessions.create(spec)).to_wire()
                    log("session_created", session=reply["session"], image=spec.image, profile=spec.profile)
                else:
                    reply = await self.sessions.control(session, action, grace, reference)
                connection.deliver({"type": "session", "id": identifier, **reply})
            except ProtocolError as exc:
                connection.deliver(exc.to_message(identifier))

        assert connection.nursery is not None  # set before the reader starts
        connection.nursery.start_soon(answer)

    async def _put_file(self, connection: Connection, message: dict[str, Any]) -> None:
        """Take one chunk of an upload: its bytes go to the upload's file (in a thread: a
        chunk is up to a frame, and the event loop must not wait for the disk), and the
        last one makes it a cached file, answered ``file`` with its id. A chunk that fails
        ends its upload (one error, with the upload's id); the chunks of it still coming
        are dropped up to its last."""
        chunk = put_chunk(message)
        uploads = connection.uploads
        if chunk.upload not in uploads:
            if chunk.offset:
                raise ProtocolError("bad_message", "an upload starts at offset 0", field="offset")
            if len(uploads) >= MAX_UPLOADS:
                raise ProtocolError("busy", f"{MAX_UPLOADS} uploads under way on this connection")
            try:
                uploads[chunk.upload] = self.cache.begin(chunk.tree)
            except OSError as exc:
                raise ProtocolError("cache_error", f"cannot store the file: {exc.strerror}") from None
        upload = uploads[chunk.upload]
        if upload is None:
            if chunk.last:
                del uploads[chunk.upload]
            return
        try:
            if chunk.offset != upload.size:
                raise ProtocolError("bad_message", f"this upload's next chunk starts at {upload.size}", field="offset")
            self.cache.reserve(upload, len(chunk.data))
            try:
                await trio.to_thread.run_sync(upload.write, chunk.data)
                if not chunk.last:
                    return
                unpacked = await trio.to_thread.run_sync(self.cache.unpack, upload) if upload.tree else 0
                identifier = self.cache.commit(upload, chunk.expected, unpacked)
            except OSError as exc:
                raise ProtocolError("cache_error", f"cannot store the file: {exc.strerror}") from None
        except BaseException:  # (a cancel too: the connection is ending)
            self.cache.abort(upload)
            uploads[chunk.upload] = None
            if chunk.last:
                del uploads[chunk.upload]
            raise
        del uploads[chunk.upload]
        size = unpacked if upload.tree else upload.size
        connection.deliver({"type": "file", "id": chunk.upload, "file_id": identifier, "size": size})

    def _judge(self, connection: Connection, message: dict[str, Any]) -> None:
        """Start judging on this connection (worker/judging.py); its events follow."""
        if self.stopping:
            raise ProtocolError("busy", "the worker is shutting down")
        identifier = job_id(message)
        if identifier in connection.judges:
            raise ProtocolError("id_conflict", f"judge {identifier!r} is in progress", field="id")
        request = judge_from_wire(message, identifier)
        stages = PoolStages(self.pool, connection, trio.lowlevel.current_trio_token())
        connection.judges[identifier] = stages

        async def judging() -> None:
            try:
                await run_judge(request, stages, connection.deliver)
            finally:
                connection.judges.pop(identifier, None)

        assert connection.nursery is not None  # set before the reader starts
        connection.deliver(event_message(identifier, "accepted"))
        connection.nursery.start_soon(judging)

    def _hello(self, connection: Connection, message: dict[str, Any]) -> None:
        if message.get("version") != VERSION:
            raise ProtocolError("version", f"this worker speaks protocol version {VERSION}", fatal=True)
        if not connection.authenticated:
            token = message.get("token")
            expected = self.config.token or ""
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), expected.encode()):
                raise ProtocolError("unauthorized", "a valid token is required on TCP", fatal=True)
            connection.authenticated = True
        connection.hello_done = True
        connection.deliver(hello_message(CAPABILITIES, self.config.max_frame))


def _loopback(host: str) -> bool:
    """Only this machine can reach ``host``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _consumer(config: ServerConfig, pool: Pool, metrics: Metrics | None) -> QueueConsumer:
    """The queue's consumer, imported only by a worker that has a queue: the Redis
    client stays out of the others. A queued job is held to the size a socket's
    request is (``--max-frame``)."""
    from worker.queue_consumer import QueueConsumer

    assert config.queue is not None
    return QueueConsumer(config.queue, pool, max_job_bytes=config.max_frame,
                         on_outage=None if metrics is None else metrics.redis_outage,
                         on_take=None if metrics is None else metrics.queue_take)


def _group_id(name: str) -> int:
    """The group's id, if this process may give a file to it (root, or a member)."""
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"--socket-group: no group named {name!r}") from None
    if os.geteuid() != 0 and gid not in (os.getegid(), *os.getgroups()):
        raise ValueError(f"--socket-group: this user is not a member of {name!r}")
    return gid


def _open_file_cache(config: ServerConfig) -> FileCache:
    """The worker's own file cache: beside its socket (its claim keeps it one worker's),
    else under $XDG_CACHE_HOME - one per TCP or HTTP address, whose lock refuses a second
    worker there (it could not listen on that address anyway). A worker that only takes
    jobs from Redis has no address: it takes the first of a numbered series that no
    running worker holds, since several may serve one host, and the next to start there
    reuses (and empties) what one that died left."""
    if config.file_cache_dir is not None:
        return FileCache(config.file_cache_dir, config.file_cache_size)
    if config.socket_path is not None:
        return FileCache(f"{config.socket_path}.files", config.file_cache_size)
    base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "sandbox")
    address = config.tcp or config.http
    if address is not None:
        name = "worker" if config.tcp is not None else "worker-http"
        host, port = address
        return FileCache(os.path.join(base, f"{name}-{host}-{port}.files"), config.file_cache_size)
    for number in range(QUEUE_ONLY_CACHES):
        try:
            return FileCache(os.path.join(base, f"worker-queue-{number}.files"), config.file_cache_size)
        except CacheInUse:
            continue
    raise ValueError(f"{QUEUE_ONLY_CACHES} workers without a socket already run as this user: give --file-cache-dir")


def _sessions_dir(cache: FileCache) -> str:
    """Where the launchers keep a record of each session they hold, for the next ones to
    clean up after a crash (worker/launcher.py): beside the file cache, and like it one
    per socket or address; unlike it, kept across restarts."""
    return cache.directory.removesuffix(".files") + ".sessions"


def serve_forever(config: ServerConfig) -> None:
    # Every connection is a file descriptor: take what the hard limit allows, and keep
    # connections a few hundred below it for launchers, pipes and the listeners.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY:
        config.max_connections = min(config.max_connections, max(16, hard - 256))
    trio.run(Server(config).serve)


def _flag(message: dict[str, Any], name: str, default: bool) -> bool:
    """An optional true/false field of a request."""
    value = message.get(name, default)
    if not isinstance(value, bool):
        raise ProtocolError("bad_message", f"{name} must be true or false", field=name)
    return value
