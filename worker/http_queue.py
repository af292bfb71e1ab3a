"""The HTTP front door forwarding to a Redis stream (``sandbox serve --http ... --redis
URL --stream S --http-forward``): the same endpoints and documents as worker/http.py,
but a job, a judge or a file given here goes to the queue (docs/queue.md) for whichever
worker of the stream takes it, so one HTTP address fronts a fleet. Reads (a job's state,
a judge's tests, a file's size) come from Redis too, so any number of such doors may
stand behind one load balancer: none holds anything a request needs.

A job is checked here as the queue's workers will check it (``job_from_wire``) but not
admitted: whether its image is in a store is for the worker that takes it to say (its
outcome, ``invalid_job``). A callback is delivered by the door that took the job, once
its outcome is in; a door that stops before that loses the callback, not the outcome.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import msgpack
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from sandbox.models import Job
from worker.http import as_error, query_flag, server_sent
from worker.http_wire import job_request, judge_to_wire, result_to_json
from worker.judging import judge_from_wire
from worker.protocol import ProtocolError, event_message, file_id, job_from_wire, job_id, result_from_wire
from worker.queue_client import AsyncQueueClient
from worker.queue_schema import BLOB_TOO_BIG, ID_CONFLICT, QueueError, QueueFull

if TYPE_CHECKING:
    from worker.http import HttpFrontDoor


class QueueRoutes:
    """The handlers of the jobs, judges and files endpoints, on the queue."""

    def __init__(self, door: HttpFrontDoor, client: AsyncQueueClient, max_file: int) -> None:
        self.door = door
        self.client = client
        self.max_file = max_file

    # -- jobs ----------------------------------------------------------------------------

    async def submit_job(self, request: Request) -> Response:
        identifier, job, callback = await self._prepare(await self.door.body(request))
        await self._queue(identifier, job)
        if callback is not None:
            self.door.spawn(self._call_back, identifier, callback)
        if query_flag(request, "wait"):
            return JSONResponse(await self._ended(identifier))
        return JSONResponse({"id": identifier, "state": "queued"}, status_code=202,
                            headers={"Location": f"/v1/jobs/{identifier}"})

    async def submit_batch(self, request: Request) -> Response:
        """Every job is checked before the first is queued; they are then queued in
        order. A queue full part way stops the batch: the error says which were queued
        (the queue has no all-or-nothing across jobs; resubmitting the batch under the
        same ids queues the rest and never runs one twice)."""
        body = await self.door.body(request)
        if not isinstance(body, list) or not body:
            raise ProtocolError("bad_message", "the body must be a non-empty list of jobs")
        prepared = [await self._prepare(item, f"[{index}].") for index, item in enumerate(body)]
        ids = [identifier for identifier, _, _ in prepared]
        for index, identifier in enumerate(ids):
            if identifier in ids[:index]:
                raise ProtocolError("bad_message", f"id {identifier!r} is given twice", field=f"[{index}].id")
        for index, (identifier, job, callback) in enumerate(prepared):
            try:
                await self._queue(identifier, job, f"[{index}].")
            except ProtocolError as exc:
                if index and exc.code == "busy":
                    raise ProtocolError("busy", f"{exc.message} (queued before: {ids[:index]})",
                                        field=f"[{index}]") from None
                raise
            if callback is not None:
                self.door.spawn(self._call_back, identifier, callback)
        return JSONResponse({"ids": ids}, status_code=202)

    async def get_job(self, request: Request) -> Response:
        identifier = request.path_params["id"]
        state, outcome = await self.client.state(identifier)
        if state == "unknown":
            raise ProtocolError("unknown_id", f"no job with id {identifier!r}", field="id")
        return JSONResponse(_document(identifier, state, outcome))

    async def cancel_job(self, request: Request) -> Response:
        return await self._cancel(request, "job", self.get_job)

    async def _cancel(self, request: Request, kind: str, read: Callable[[Request], Awaitable[Response]]) -> Response:
        """The queue's cancel; a job (or judge) whose outcome was in already is read back."""
        identifier = request.path_params["id"]
        answer = await self.client.cancel(identifier)
        if answer == "unknown":
            raise ProtocolError("unknown_id", f"no {kind} with id {identifier!r}", field="id")
        if answer == "finished":
            return await read(request)
        return JSONResponse({"id": identifier, "state": "cancelled"})

    async def _prepare(self, body: Any, where: str = "") -> tuple[str, Job, str | None]:
        self.door.accepting()
        given_id, wire, callback = job_request(body, where)
        try:
            identifier = uuid.uuid4().hex if given_id is None else job_id({"id": given_id})
            job = job_from_wire(wire)
            if callback is not None:
                await self.door.callbacks.check(callback)
        except ProtocolError as exc:
            field_name = None if exc.field is None else f"{where}{exc.field}"
            raise ProtocolError(exc.code, exc.message, field=field_name) from None
        return identifier, job, callback

    async def _queue(self, identifier: str, job: Job, where: str = "") -> None:
        with _refusals(where):
            await self.client.submit(job, identifier)

    async def _ended(self, identifier: str) -> dict[str, Any]:
        """The document of a job (or judge) once it ended; one that produced no result
        is answered as the worker's own door answers an invalid job."""
        document = _document(identifier, "finished", await self.client.outcome(identifier))
        if document["state"] == "failed":
            raise as_error(document["error"])
        return document

    async def _call_back(self, identifier: str, url: str) -> None:
        outcome = await self.client.outcome(identifier)
        document = _document(identifier, "finished", outcome)
        await self.door.callbacks.deliver(url, json.dumps(document).encode(), identifier)

    # -- judges --------------------------------------------------------------------------

    async def submit_judge(self, request: Request) -> Response:
        self.door.accepting()
        body = await self.door.body(request)
        given = body.get("id") if isinstance(body, dict) else None
        identifier = uuid.uuid4().hex if given is None else job_id({"id": given})
        checked = judge_from_wire(judge_to_wire(body, identifier), identifier)
        problem = {name: {"file_id": data} if isinstance(data, str) else data
                   for name, data in checked.package.items()}
        submission = checked.submission
        with _refusals():
            await self.client.submit_judge(
                problem, submission.lang, submission.source, compile_options=submission.compile_options,
                args=submission.args, stop_on_failure=checked.stop_on_failure, parallel=checked.parallel,
                judge_id=identifier, image=submission.image, interpreter=submission.interpreter)
        if query_flag(request, "wait"):
            document = await self._ended(identifier)
            # (a judge cancelled has no report: its tests so far, as the door's own judges)
            tests = document["report"]["tests"] if "report" in document else await self.client.tests(identifier)
            return JSONResponse({**document, "tests": tests})
        return JSONResponse({"id": identifier, "state": "queued"}, status_code=202,
                            headers={"Location": f"/v1/judge/{identifier}"})

    async def get_judge(self, request: Request) -> Response:
        identifier = request.path_params["id"]
        state, outcome = await self.client.state(identifier)
        if state == "unknown":
            raise ProtocolError("unknown_id", f"no judge with id {identifier!r}", field="id")
        return JSONResponse({**_document(identifier, state, outcome), "tests": await self.client.tests(identifier)})

    async def cancel_judge(self, request: Request) -> Response:
        return await self._cancel(request, "judge", self.get_judge)

    async def judge_events(self, request: Request) -> Response:
        """Server-sent events as the worker's own door sends them: each test, then the
        final event. A judge judged again (its worker died) sends its tests again."""
        identifier = request.path_params["id"]
        if (await self.client.state(identifier))[0] == "unknown":
            raise ProtocolError("unknown_id", f"no judge with id {identifier!r}", field="id")
        send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
        following = trio.CancelScope()

        async def follow() -> None:
            with following, send:
                try:
                    report = await self.client.report(identifier, on_test=lambda test: send.send_nowait(
                        event_message(identifier, "test_finished", test=test)))
                    send.send_nowait(event_message(identifier, "judged", report=report))
                except QueueError as exc:
                    if exc.code == "cancelled":
                        send.send_nowait(event_message(identifier, "cancelled"))
                    else:
                        send.send_nowait(ProtocolError(exc.code, exc.message, field=exc.field).to_message(identifier))

        self.door.spawn(follow)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for message in receive:
                    yield server_sent(message)
            finally:
                following.cancel()  # (the client went away: stop following for it)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    # -- files ---------------------------------------------------------------------------

    async def put_file(self, request: Request) -> Response:
        """The body is one file, kept in Redis for every worker of the stream
        (``put_file`` of docs/queue.md), bounded by ``max_file``: the whole body is held
        here on its way, as Redis takes a value in one piece."""
        self.door.accepting()
        if query_flag(request, "tree"):
            raise ProtocolError("bad_message", "a tree is a worker's own: put it through that worker's socket or "
                                "its own HTTP door, not the queue", field="tree")
        data = await self.door.raw_body(request, self.max_file)
        try:
            identifier = await self.client.put_file(data)
        except QueueError as exc:
            if exc.code == BLOB_TOO_BIG:
                raise ProtocolError("frame_too_large", exc.message) from None
            raise
        expected = request.query_params.get("file_id")
        if expected is not None and file_id({"file_id": expected}) != identifier:
            raise ProtocolError("digest_mismatch", f"the bytes put have id {identifier}, not {expected}",
                                field="file_id")
        return JSONResponse({"file_id": identifier, "size": len(data)}, status_code=201,
                            headers={"Location": f"/v1/files/{identifier}"})

    async def get_file(self, request: Request) -> Response:
        identifier = file_id({"file_id": request.path_params["id"]})
        size = await self.client.file_size(identifier)
        if size is None:
            raise ProtocolError("unknown_file", f"the queue has no file {identifier}", field="file_id")
        return JSONResponse({"file_id": identifier, "size": size})

    async def delete_file(self, request: Request) -> Response:
        identifier = file_id({"file_id": request.path_params["id"]})
        if not await self.client.delete_file(identifier):
            raise ProtocolError("unknown_file", f"the queue has no file {identifier}", field="file_id")
        return JSONResponse({"file_id": identifier, "removed": True})

    async def file_cache(self, request: Request) -> Response:
        raise ProtocolError("not_found", "the queue keeps no list of its files: GET /v1/files/{id} for one")


@contextmanager
def _refusals(where: str = "") -> Iterator[None]:
    """The queue's refusals of a submit as the door's errors: a full stream is busy (503),
    another job under a known id is id_conflict (409)."""
    try:
        yield
    except QueueFull as exc:
        raise ProtocolError("busy", f"the queue is full: {exc.message}") from None
    except QueueError as exc:
        if exc.code == ID_CONFLICT:
            raise ProtocolError("id_conflict", exc.message, field=f"{where}id") from None
        raise


def _document(identifier: str, state: str, outcome: bytes | None) -> dict[str, Any]:
    """A job's (or judge's) document from its state and outcome, in the shapes of the
    worker's own door: ``finished`` with ``result``, ``judged`` with ``report``,
    ``cancelled``, or ``failed`` with ``error`` (the job produced no result)."""
    if outcome is None:
        return {"id": identifier, "state": state}
    decoded = msgpack.unpackb(outcome, raw=False)
    if "result" in decoded:
        return {"id": identifier, "state": "finished", "result": result_to_json(result_from_wire(decoded["result"]))}
    if "report" in decoded:
        return {"id": identifier, "state": "judged", "report": decoded["report"]}
    error = decoded["error"]
    if error.get("code") == "cancelled":
        return {"id": identifier, "state": "cancelled"}
    return {"id": identifier, "state": "failed", "error": error}


