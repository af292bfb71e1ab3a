"""The HTTP+JSON front door of the worker (``sandbox serve --http HOST:PORT``), for
judges that will not write msgpack framing: a starlette app served by hypercorn's trio
worker inside the worker's own trio process, so jobs submitted here go to the same pool,
through the same validation (``job_from_wire``, ``admit``) and the same queue as socket
jobs, and share their id space. Files put here go to the same file cache as the socket's
``put_file`` (the body streamed into it, never held whole), so either door's jobs and
judges may name them. docs/http.md documents every endpoint; the OpenAPI
document is ``worker/openapi.py``.

HTTP jobs belong to no connection: a client that goes away does not cancel them (there
is DELETE for that), and their results are kept ``--retention`` seconds for GET, as any
finished job's. Judges submitted here are kept as long once they end, with every event
they produced, so that a poll or an event stream that starts late misses nothing.

This module, hypercorn, starlette and the callbacks' httpx are imported only by a worker
that serves HTTP.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sandbox.errors import SandboxError
from sandbox.images.errors import ImageError
from sandbox.languages import image_present, image_reference, load_preset, preset_names
from sandbox.models import Job, Result
from worker.admission import admit
from worker.callbacks import Callbacks
from worker.http_wire import (
    error_json,
    exec_request,
    job_request,
    judge_to_wire,
    result_to_json,
    session_logs_to_json,
    session_request,
    status_of,
)
from worker.judging import PoolStages, judge_from_wire, run_judge
from worker.logs import log
from worker.openapi import DOCUMENT
from worker.pool import JobRecord
from worker.protocol import (
    ProtocolError,
    commit_reference,
    file_id,
    job_from_wire,
    job_id,
    session_id,
    session_spec_from_wire,
    stop_grace,
)

if TYPE_CHECKING:
    from worker.http_queue import QueueRoutes
    from worker.queue_client import AsyncQueueClient
    from worker.server import Server

RETRY_AFTER_S = 1  # what a 503 (queue full) tells the client to wait
UPLOAD_BATCH = 1 << 20  # bytes of an upload's body gathered for one write (one thread hop)
_FINAL_JOB_EVENTS = ("finished", "cancelled")
_FINAL_JUDGE_EVENTS = ("judged", "cancelled")

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class _Waiter:
    """A job's end, for the requests waiting for it (``?wait=true``)."""

    done: trio.Event = field(default_factory=trio.Event)
    error: dict[str, Any] | None = None  # the job was rejected by its slot (invalid_job)


@dataclass
class HttpJudge:
    """A judge submitted over HTTP: its events in order, the final one last."""

    id: str
    stages: PoolStages
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)
    finished_at: float | None = None

    def hear(self, message: dict[str, Any]) -> None:
        self.events.append(message)
        if message.get("type") == "error" or message.get("event") in _FINAL_JUDGE_EVENTS:
            self.finished_at = time.monotonic()
        changed, self.changed = self.changed, trio.Event()
        changed.set()

    @property
    def state(self) -> str:
        if self.finished_at is None:
            return "running"
        final = self.events[-1]
        return "failed" if final.get("type") == "error" else str(final["event"])

    def document(self) -> dict[str, Any]:
        tests = [event["test"] for event in self.events if event.get("event") == "test_finished"]
        data: dict[str, Any] = {"id": self.id, "state": self.state, "tests": tests}
        if self.finished_at is not None:
            final = self.events[-1]
            if final.get("type") == "error":
                data["error"] = {key: value for key, value in final.items() if key not in ("type", "id")}
            elif "report" in final:
                data["report"] = final["report"]
        return data


class HttpFrontDoor:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.pool = server.pool
        config = server.config
        self.token = config.token
        self.max_body = config.max_frame
        assert server.metrics is not None  # a worker serving HTTP always keeps metrics (GET /metrics)
        self.metrics = server.metrics
        secret = config.callback_secret or config.token
        self.callbacks = Callbacks(
            None if secret is None else secret.encode(), config.callback_attempts, config.callback_timeout_s,
            config.allow_private_callbacks, self.metrics.count_callback,
        )
        self._waiters: dict[str, _Waiter] = {}
        self._callback_urls: dict[str, str] = {}
        self.judges: dict[str, HttpJudge] = {}
        self._finished_judges: deque[str] = deque()
        self._nursery: trio.Nursery | None = None
        # With --http-forward, jobs, judges and files go to the queue's first stream
        # (worker/http_queue.py) instead of this worker's pool and cache.
        self.forward: AsyncQueueClient | None = None
        routes: HttpFrontDoor | QueueRoutes = self
        if config.http_forward and config.queue is not None:
            from worker.http_queue import QueueRoutes
            from worker.queue_client import AsyncQueueClient

            self.forward = AsyncQueueClient(config.queue.url, config.queue.streams[0])
            routes = QueueRoutes(self, self.forward, config.queue.max_blob)
        self.app = Starlette(routes=[
            Route("/v1/health", self._public(self.health), methods=["GET"]),
            Route("/v1/openapi.json", self._guarded(self.openapi), methods=["GET"]),
            Route("/v1/jobs", self._guarded(routes.submit_job), methods=["POST"]),
            Route("/v1/jobs/batch", self._guarded(routes.submit_batch), methods=["POST"]),
            Route("/v1/jobs/{id}", self._guarded(routes.get_job), methods=["GET"]),
            Route("/v1/jobs/{id}", self._guarded(routes.cancel_job), methods=["DELETE"]),
            Route("/v1/judge", self._guarded(routes.submit_judge), methods=["POST"]),
            Route("/v1/judge/{id}", self._guarded(routes.get_judge), methods=["GET"]),
            Route("/v1/judge/{id}", self._guarded(routes.cancel_judge), methods=["DELETE"]),
            Route("/v1/judge/{id}/events", self._guarded(routes.judge_events), methods=["GET"]),
            Route("/v1/files", self._guarded(routes.put_file), methods=["POST"]),
            Route("/v1/files", self._guarded(routes.file_cache), methods=["GET"]),
            Route("/v1/files/{id}", self._guarded(routes.get_file), methods=["GET"]),
            Route("/v1/files/{id}", self._guarded(routes.delete_file), methods=["DELETE"]),
            Route("/v1/sessions", self._guarded(self.create_session), methods=["POST"]),
            Route("/v1/sessions", self._guarded(self.list_sessions), methods=["GET"]),
            Route("/v1/sessions/{session}", self._guarded(self.get_session), methods=["GET"]),
            Route("/v1/sessions/{session}", self._guarded(self.delete_session), methods=["DELETE"]),
            Route("/v1/sessions/{session}/exec", self._guarded(self.session_exec), methods=["POST"]),
            Route("/v1/sessions/{session}/{action}", self._guarded(self.session_action), methods=["POST"]),
            Route("/v1/languages", self._guarded(self.languages), methods=["GET"]),
            Route("/v1/stats", self._guarded(self.stats), methods=["GET"]),
            Route("/metrics", self._guarded(self.scrape), methods=["GET"]),
        ], exception_handlers={404: _no_route, 405: _no_route})

    async def serve(self, host: str, port: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (with the worker). Hypercorn's own logging is off: the
        worker's stderr is JSON lines (``worker.logs``), and errors are logged here."""
        config = HypercornConfig()
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 1.0
        config.include_server_header = False  # (no version for scanners)
        app: Any = self.app  # (starlette's and hypercorn's ASGI types differ in their names only)
        # The queue client a forwarding door holds opens a nursery of its own (its
        # connection pool's): entered before the door's nursery, so that it is left after
        # it - nurseries must close in the reverse order of their opening.
        async with contextlib.AsyncExitStack() as stack:
            if self.forward is not None:
                await stack.enter_async_context(self.forward)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery  # judges and callbacks run here
                await nursery.start(lambda task_status: hypercorn_serve(app, config, task_status=task_status))
                task_status.started()

    # -- plumbing: auth, errors, bodies --------------------------------------------------

    def _public(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ProtocolError as exc:
                return _error_response(exc)
            except Exception as exc:  # a fault of the worker's: answered, logged, never a crash
                log("http_error", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
                return _error_response(ProtocolError("internal_error", f"{type(exc).__name__}"))

        return endpoint

    def _guarded(self, handler: Handler) -> Handler:
        async def authorized(request: Request) -> Response:
            self._authorize(request)
            return await handler(request)

        return self._public(authorized)

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return  # a loopback-only front door without a token (sandbox serve refuses one elsewhere)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise ProtocolError("unauthorized", "a valid token is required: Authorization: Bearer TOKEN")

    async def body(self, request: Request) -> Any:
        """The request's JSON, read up to the worker's frame size (``raw_body``)."""
        body = await self.raw_body(request, self.max_body)
        try:
            return json.loads(body)
        except ValueError as exc:  # (UnicodeDecodeError is one)
            raise ProtocolError("bad_json", f"the body is not JSON: {exc}") from None
        except RecursionError:
            raise ProtocolError("bad_json", "the body nests too deeply") from None

    async def optional_body(self, request: Request) -> Any:
        """``body``, or None for a request without one (every field left to its default)."""
        body = await self.raw_body(request, self.max_body)
        if not body.strip():
            return None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ProtocolError("bad_json", f"the body is not JSON: {exc}") from None
        except RecursionError:
            raise ProtocolError("bad_json", "the body nests too deeply") from None

    async def raw_body(self, request: Request, limit: int) -> bytes:
        """The request's body, up to ``limit`` bytes: a larger body is read to its end
        and thrown away (for ``send_timeout_s`` at most, so the client gets to read the
        413 instead of a reset), then refused."""
        body = bytearray()
        too_large = False
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            too_large = True
        with trio.move_on_after(self.server.config.send_timeout_s):
            async for chunk in request.stream():
                if not too_large:
                    body += chunk
                    too_large = len(body) > limit
        if too_large:
            raise ProtocolError("frame_too_large", f"the body exceeds the limit of {limit} bytes")
        return bytes(body)

    def spawn(self, task: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a task for as long as the door serves (a judge, a callback, a judge's events
        followed). As for a request, a fault in it is logged and ends that task alone: no
        request's work may end the worker (and every job it runs)."""
        assert self._nursery is not None

        async def contained() -> None:
            try:
                await task(*args)
            except Exception as exc:  # a fault of the worker's: logged, never a crash
                log("http_task_error", task=getattr(task, "__qualname__", str(task)),
                    error=f"{type(exc).__name__}: {exc}")

        self._nursery.start_soon(contained)

    def accepting(self) -> None:
        if self.server.stopping:
            raise ProtocolError("busy", "the worker is shutting down")

    # -- jobs ----------------------------------------------------------------------------

    async def submit_job(self, request: Request) -> Response:
        identifier, job, callback = await self._prepare(await self.body(request))
        if self.pool.existing(identifier, job) is None and self.pool.room() < 1:
            self._busy()
        record = self._submit(identifier, job, callback)
        if query_flag(request, "wait"):
            await self._wait(record)
            return JSONResponse(self._job_document(record))
        return JSONResponse({"id": identifier, "state": record.state.value}, status_code=202,
                            headers={"Location": f"/v1/jobs/{identifier}"})

    async def submit_batch(self, request: Request) -> Response:
        """All or nothing: every job is checked (and the queue's room for the new ones)
        before the first is queued."""
        body = await self.body(request)
        if not isinstance(body, list) or not body:
            raise ProtocolError("bad_message", "the body must be a non-empty list of jobs")
        prepared = [await self._prepare(item, f"[{index}].") for index, item in enumerate(body)]
        seen: set[str] = set()
        new = 0
        for index, (identifier, job, _) in enumerate(prepared):
            if identifier in seen:
                raise ProtocolError("bad_message", f"id {identifier!r} is given twice", field=f"[{index}].id")
            seen.add(identifier)
            try:
                new += self.pool.existing(identifier, job) is None
            except ProtocolError as exc:
                raise ProtocolError(exc.code, exc.message, field=f"[{index}].id") from None
        if new > self.pool.room():
            self._busy()
        ids = [self._submit(identifier, job, callback).id for identifier, job, callback in prepared]
        return JSONResponse({"ids": ids}, status_code=202)

    async def get_job(self, request: Request) -> Response:
        return JSONResponse(self._job_document(self.pool.state(request.path_params["id"])))

    async def cancel_job(self, request: Request) -> Response:
        identifier = request.path_params["id"]
        await self.pool.cancel(identifier)
        return JSONResponse(self._job_document(self.pool.state(identifier)))

    async def _prepare(self, body: Any, where: str = "") -> tuple[str, Job, str | None]:
        """A job request checked as a socket submit is (and its callback target)."""
        self.accepting()
        given_id, wire, callback = job_request(body, where)
        try:
            identifier = uuid.uuid4().hex if given_id is None else job_id({"id": given_id})
            job = job_from_wire(wire)
            if not self.pool.knows(identifier):
                admit(job)
            if callback is not None:
                await self.callbacks.check(callback)
        except ProtocolError as exc:  # (fields keep the protocol's names: limits.memory, files.data)
            field_name = None if exc.field is None else f"{where}{exc.field}"
            raise ProtocolError(exc.code, exc.message, field=field_name) from None
        return identifier, job, callback

    def _submit(self, identifier: str, job: Job, callback: str | None) -> JobRecord:
        new = not self.pool.knows(identifier)
        record = self.pool.submit(identifier, job, self, self._hear)
        if new and callback is not None:
            self._callback_urls[identifier] = callback  # (a resubmitted id does not call back again)
        return record

    def _hear(self, message: dict[str, Any]) -> None:
        """Every event of every job submitted here; only the end matters."""
        identifier = message.get("id")
        if not isinstance(identifier, str):
            return
        rejected = message.get("type") == "error"
        if not rejected and message.get("event") not in _FINAL_JOB_EVENTS:
            return
        waiter = self._waiters.pop(identifier, None)
        if waiter is not None:
            waiter.error = message if rejected else None
            waiter.done.set()
        url = self._callback_urls.pop(identifier, None)
        if url is not None and self._nursery is not None:
            record = self.pool.records.get(identifier)
            document = self._job_document(record) if record is not None and not rejected else {
                "id": identifier, "state": "rejected", "error": error_json(as_error(message))}
            body = json.dumps(document).encode()
            self.spawn(self.callbacks.deliver, url, body, identifier)

    async def _wait(self, record: JobRecord) -> None:
        if record.done:
            return
        waiter = self._waiters.setdefault(record.id, _Waiter())
        await waiter.done.wait()
        if waiter.error is not None:
            raise as_error(waiter.error)

    @staticmethod
    def _job_document(record: JobRecord) -> dict[str, Any]:
        data: dict[str, Any] = {"id": record.id, "state": record.state.value}
        if record.done and isinstance(record.result, list):  # a group's (submitted through the socket)
            data["results"] = [result_to_json(result) for result in record.result]
        elif record.done and isinstance(record.result, Result):
            data["result"] = result_to_json(record.result)
        return data

    # -- sessions (always this worker's own, even with --http-forward) --------------------

    async def create_session(self, request: Request) -> Response:
        self.accepting()
        spec = session_spec_from_wire(session_request(await self.optional_body(request)))
        record = await self.server.sessions.create(spec)
        return JSONResponse(record.to_wire(), status_code=201, headers={"Location": f"/v1/sessions/{record.id}"})

    async def list_sessions(self, request: Request) -> Response:
        return JSONResponse({"sessions": self.server.sessions.listing()})

    async def get_session(self, request: Request) -> Response:
        session = self._session(request)
        return JSONResponse({**self.server.sessions.get(session).to_wire(),
                             "logs": session_logs_to_json(self.server.sessions.logs(session))})

    async def delete_session(self, request: Request) -> Response:
        return JSONResponse(await self.server.sessions.control(self._session(request), "delete"))

    async def session_action(self, request: Request) -> Response:
        """pause, resume, stop (a body {"grace": seconds} optional) or commit (a body
        {"reference": "name:tag"})."""
        action = request.path_params["action"]
        if action not in ("pause", "resume", "stop", "commit"):
            raise ProtocolError("not_found", f"no session action {action!r}: pause, resume, stop, commit or exec")
        body = await self.optional_body(request)
        if body is not None and not isinstance(body, dict):
            raise ProtocolError("bad_message", "the body must be an object: grace, or reference")
        grace = stop_grace(body or {}) if action == "stop" else 0.0
        reference = commit_reference(body or {}) if action == "commit" else ""
        return JSONResponse(await self.server.sessions.control(self._session(request), action, grace, reference))

    async def session_exec(self, request: Request) -> Response:
        """An exec, queued as a job is: answered as POST /v1/jobs is (it is a job there)."""
        self.accepting()
        session = self._session(request)
        given_id, wire = exec_request(await self.body(request))
        identifier = uuid.uuid4().hex if given_id is None else job_id({"id": given_id})
        job = job_from_wire(wire)
        if not self.pool.knows(identifier) and self.pool.room() < 1:
            self._busy()
        self.server.sessions.submit_exec(identifier, session, job, self, self._hear, stream=False)
        record = self.pool.state(identifier)
        if query_flag(request, "wait"):
            await self._wait(record)
            return JSONResponse(self._job_document(record))
        return JSONResponse({"id": identifier, "state": record.state.value}, status_code=202,
                            headers={"Location": f"/v1/jobs/{identifier}"})

    @staticmethod
    def _session(request: Request) -> str:
        return session_id({"session": request.path_params["session"]})

    def _busy(self) -> None:
        self.pool.stats.busy_rejections += 1
        raise ProtocolError("busy", f"queue full ({self.pool.max_queue} jobs waiting); retry later")

    # -- judges --------------------------------------------------------------------------

    async def submit_judge(self, request: Request) -> Response:
        self.accepting()
        body = await self.body(request)
        given = body.get("id") if isinstance(body, dict) else None
        identifier = uuid.uuid4().hex if given is None else job_id({"id": given})
        judge_request = judge_from_wire(judge_to_wire(body, identifier), identifier)
        self._expire_judges()
        if identifier in self.judges:
            raise ProtocolError("id_conflict", f"judge {identifier!r} exists; a new judge needs a new id", field="id")
        stages = PoolStages(self.pool, self, trio.lowlevel.current_trio_token())
        judge = self.judges[identifier] = HttpJudge(identifier, stages)

        async def judging() -> None:
            try:
                await run_judge(judge_request, stages, judge.hear)
            except Exception as exc:  # (logged by spawn) its waiters hear it ended
                judge.hear(ProtocolError("internal_error", type(exc).__name__).to_message(identifier))
                raise
            finally:
                self._finished_judges.append(identifier)

        self.spawn(judging)
        if query_flag(request, "wait"):
            while judge.finished_at is None:
                await judge.changed.wait()
            final = judge.events[-1]
            if final.get("type") == "error":
                raise as_error(final)
            return JSONResponse(judge.document())
        return JSONResponse({"id": identifier, "state": judge.state}, status_code=202,
                            headers={"Location": f"/v1/judge/{identifier}"})

    async def get_judge(self, request: Request) -> Response:
        return JSONResponse(self._judge(request).document())

    async def cancel_judge(self, request: Request) -> Response:
        judge = self._judge(request)
        if judge.finished_at is None:
            await judge.stages.cancel()
        return JSONResponse({"id": judge.id, "state": judge.state})

    async def judge_events(self, request: Request) -> Response:
        """Server-sent events: every event so far, then each as it comes, the final one
        (``judged``, ``cancelled`` or ``error``) last."""
        judge = self._judge(request)

        async def events() -> AsyncIterator[bytes]:
            sent = 0
            while True:
                while sent < len(judge.events):
                    yield server_sent(judge.events[sent])
                    sent += 1
                if judge.finished_at is not None:
                    return
                await judge.changed.wait()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    def _judge(self, request: Request) -> HttpJudge:
        self._expire_judges()
        identifier = request.path_params["id"]
        judge = self.judges.get(identifier)
        if judge is None:
            raise ProtocolError("unknown_id", f"no judge with id {identifier!r}", field="id")
        return judge

    def _expire_judges(self) -> None:
        """Forget judges that ended over ``--retention`` seconds ago, oldest first."""
        now = time.monotonic()
        while self._finished_judges:
            judge = self.judges.get(self._finished_judges[0])
            if judge is not None and now - (judge.finished_at or now) <= self.pool.retention_s:
                break
            self._finished_judges.popleft()
            if judge is not None:
                del self.judges[judge.id]

    # -- the file cache ------------------------------------------------------------------

    async def put_file(self, request: Request) -> Response:
        """The body is one file (a tar with ``?tree=true``) for the file cache, as a socket
        ``put_file`` upload is: bounded by the cache (``--file-cache-size``), not by
        ``--max-frame``. A refused upload keeps nothing; its answer comes after the rest of
        the body was read and thrown away (for ``send_timeout_s`` at most, as ``_body``
        does), so the client reads it instead of a reset."""
        chunks = request.stream()
        try:
            self.accepting()
            expected = request.query_params.get("file_id")
            declared = request.headers.get("content-length", "")
            identifier, size = await self._store(
                chunks, query_flag(request, "tree"), None if expected is None else file_id({"file_id": expected}),
                int(declared) if declared.isdigit() else None)
        except ProtocolError:
            with trio.move_on_after(self.server.config.send_timeout_s), contextlib.suppress(ClientDisconnect):
                async for _ in chunks:
                    pass
            raise
        return JSONResponse({"file_id": identifier, "size": size}, status_code=201,
                            headers={"Location": f"/v1/files/{identifier}"})

    async def _store(self, chunks: AsyncIterator[bytes], tree: bool, expected: str | None,
                     declared: int | None) -> tuple[str, int]:
        """Stream ``chunks`` into a new upload of the cache and keep it: (its id, its size -
        a tree's unpacked size). Each chunk is counted against the capacity as it comes
        (cache_full at the first that finds no room); the bytes reach the upload's file in
        a thread, ``UPLOAD_BATCH`` at a time, so the worker holds no more of the body."""
        cache = self.server.cache
        if declared is not None and declared > cache.capacity:
            raise ProtocolError("cache_full", f"no room for {declared} bytes in the file cache of "
                                              f"{cache.capacity} bytes: more than the whole cache")
        try:
            upload = cache.begin(tree)
        except OSError as exc:
            raise ProtocolError("cache_error", f"cannot store the file: {exc.strerror}") from None
        try:
            try:
                batch: list[bytes] = []
                gathered = 0
                async for chunk in chunks:
                    cache.reserve(upload, len(chunk))
                    batch.append(chunk)
                    gathered += len(chunk)
                    if gathered >= UPLOAD_BATCH:
                        await trio.to_thread.run_sync(upload.write, b"".join(batch))
                        batch, gathered = [], 0
                await trio.to_thread.run_sync(upload.write, b"".join(batch))
                unpacked = await trio.to_thread.run_sync(cache.unpack, upload) if tree else 0
                return cache.commit(upload, expected, unpacked), unpacked if tree else upload.size
            except OSError as exc:
                raise ProtocolError("cache_error", f"cannot store the file: {exc.strerror}") from None
            except ClientDisconnect:  # (nobody reads the answer; it keeps the log free of a client's doing)
                raise ProtocolError("bad_message", "the client went away before the body's end") from None
        except BaseException:  # (a cancel too: the worker is stopping)
            cache.abort(upload)
            raise

    async def file_cache(self, request: Request) -> Response:
        return JSONResponse(self.server.cache.snapshot())

    async def get_file(self, request: Request) -> Response:
        identifier = file_id({"file_id": request.path_params["id"]})
        size = self.server.cache.size_of(identifier)
        if size is None:
            raise ProtocolError("unknown_file", f"the worker has no file {identifier}", field="file_id")
        return JSONResponse({"file_id": identifier, "size": size})

    async def delete_file(self, request: Request) -> Response:
        identifier = file_id({"file_id": request.path_params["id"]})
        removed = self.server.cache.delete(identifier)
        return JSONResponse({"file_id": identifier, "removed": removed})

    # -- the rest ------------------------------------------------------------------------

    async def languages(self, request: Request) -> Response:
        image = image_reference()
        try:
            present = image_present()
        except (ImageError, SandboxError, OSError, ValueError):
            present = False  # an unreadable store: no language is usable
        return JSONResponse([
            {"name": name, "description": load_preset(name).description, "image": image, "present": present}
            for name in preset_names()
        ])

    async def stats(self, request: Request) -> Response:
        running = sum(judge.finished_at is None for judge in self.judges.values())
        return JSONResponse({**self.pool.snapshot(), "connections": len(self.server.connections),
                             "file_cache": self.server.cache.snapshot(), "judges_running": running})

    async def scrape(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(self.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    async def health(self, request: Request) -> Response:
        if self.server.stopping:
            return JSONResponse({"status": "stopping"}, status_code=503)
        return JSONResponse({"status": "ok", "slots": len(self.pool.slots)})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(DOCUMENT)


def query_flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() in ("true", "1", "yes")


def as_error(message: dict[str, Any]) -> ProtocolError:
    """A protocol ``error`` reply as the exception it was."""
    return ProtocolError(str(message.get("code")), str(message.get("message")), field=message.get("field"))


def _error_response(error: ProtocolError) -> Response:
    status = status_of(error)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_json(error), status_code=status, headers=headers)


async def _no_route(request: Request, exc: Exception) -> Response:
    """No such endpoint (404), or not with this method (405): JSON as every other error."""
    code = "method_not_allowed" if getattr(exc, "status_code", 404) == 405 else "not_found"
    return _error_response(ProtocolError(code, f"no endpoint {request.method} {request.url.path}"))


def server_sent(message: dict[str, Any]) -> bytes:
    """One event of the stream: its name, and its payload as JSON."""
    if message.get("type") == "error":
        name, payload = "error", {key: value for key, value in message.items() if key != "type"}
    else:
        name = str(message["event"])
        payload = {key: value for key, value in message.items() if key not in ("type", "event")}
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
