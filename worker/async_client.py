"""The worker's client for trio programs, ``AsyncClient``: the blocking ``Client``'s
requests and answers (``worker.client``), over a trio stream. Apart from the blocking
client so that a program that only submits - ``sandbox submit`` once per test of a
judge - does not load trio::

    async with await AsyncClient.connect("/run/sandbox/worker.sock") as c:
        result = await c.run(Job(cmd=["true"]))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from sandbox.models import Group, Job, Pipe, Result
from worker.client import (
    Mailbox,
    OutputHandler,
    WorkerError,
    group_message,
    hello_message,
    new_id,
    put_messages,
    submit_message,
    tree_tar,
)
from worker.protocol import REPLY_MAX_FRAME, FrameDecoder, encode

Answer = TypeVar("Answer")


class AsyncClient:
    """``worker.client.Client``, for trio programs: ``async with await AsyncClient.connect(path) as c``."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(REPLY_MAX_FRAME)
        self._mail = Mailbox()
        self._lock = trio.Lock()  # one reader at a time; the others find their events queued
        self._send_lock = trio.Lock()
        self.hello: dict[str, Any] = {}

    @classmethod
    async def connect(cls, path: str | None = None, *, tcp: tuple[str, int] | None = None,
                      token: str | None = None) -> AsyncClient:
        stream: trio.abc.Stream
        if tcp is not None:
            stream = await trio.open_tcp_stream(*tcp)
        else:
            stream = await trio.open_unix_socket(str(path))
        client = cls(stream)
        await client._send(hello_message(token))
        client.hello = await client._next_other()
        return client

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stream.aclose()

    async def submit(self, job: Job, job_id: str | None = None, *, stream: bool = False) -> str:
        job_id = job_id or new_id()
        await self._send(submit_message(job, job_id, stream, self.hello))
        return job_id

    async def wait(self, job_id: str, on_output: OutputHandler | None = None) -> Result:
        return await self._until(lambda: self._mail.final(job_id, on_output))

    async def run(self, job: Job, job_id: str | None = None, *, on_output: OutputHandler | None = None) -> Result:
        """As ``Client.run``."""
        return await self.wait(await self.submit(job, job_id, stream=on_output is not None), on_output)

    async def group(self, jobs: list[Job], pipes: list[Pipe], group_id: str | None = None) -> list[Result]:
        """As ``Client.group``."""
        group_id = group_id or new_id()
        await self._send(group_message(Group(jobs, pipes), group_id, self.hello))
        return await self._until(lambda: self._mail.final_group(group_id))

    async def cancel(self, job_id: str) -> None:
        await self._send({"type": "cancel", "id": job_id})

    async def put_file(self, source: bytes | str | os.PathLike[str]) -> str:
        """As ``Client.put_file`` (a path is read in this task, a chunk at a time)."""
        return await self._upload(source, tree=False)

    async def put_tree(self, source: bytes | str | os.PathLike[str]) -> str:
        """As ``Client.put_tree``."""
        return await self._upload(await trio.to_thread.run_sync(tree_tar, source), tree=True)

    async def _upload(self, source: bytes | str | os.PathLike[str], tree: bool) -> str:
        """Put a file (or a tree's tar) and wait for the id the worker stored it under."""
        upload = new_id()
        for message in put_messages(source, upload, int(self.hello["max_frame"]), tree=tree):
            await self._send(message)
        return await self._until(lambda: self._mail.stored(upload))

    async def del_file(self, file_id: str) -> bool:
        """As ``Client.del_file``."""
        await self._send({"type": "del_file", "file_id": file_id})
        return bool((await self._next_other())["removed"])

    async def stats(self) -> dict[str, Any]:
        await self._send({"type": "stats"})
        return await self._next_other()

    async def _send(self, message: dict[str, Any]) -> None:
        """Send, reading meanwhile unless another task is reading: as ``Client._send``,
        a lone task submitting many jobs before it waits would otherwise deadlock."""
        async with self._send_lock:
            broken = False
            async with trio.open_nursery() as nursery:
                if not self._lock.locked():
                    nursery.start_soon(self._receive_while_sending)
                try:
                    await self._stream.send_all(encode(message))
                except trio.BrokenResourceError:
                    broken = True  # the worker closed mid-send: it may have said why first
                nursery.cancel_scope.cancel()
            if broken:
                async with self._lock:
                    while True:  # what it said before, then why it closed
                        await self._receive()

    async def _until(self, found: Callable[[], Answer | None]) -> Answer:
        """Read the connection (one task at a time: the others find their events sorted
        into the mailbox) until ``found`` has what the caller waits for, and return it."""
        async with self._lock:
            while (answer := found()) is None:
                await self._receive()
        return answer

    async def _receive_while_sending(self) -> None:
        async with self._lock:
            try:
                while True:
                    await self._receive()
            except (WorkerError, ConnectionError):
                pass  # the worker closed the connection: the next read says why, to whoever reads

    async def _receive(self) -> None:
        try:
            data = await self._stream.receive_some(1 << 16)
        except trio.BrokenResourceError:
            data = b""  # as in ``Client._receive``
        if not data:
            raise self._mail.closed()
        for message in self._decoder.feed(data):
            self._mail.put(message)

    async def _next_other(self) -> dict[str, Any]:
        async with self._lock:
            while not self._mail.other:
                await self._receive()
            message = self._mail.other.popleft()
        if message.get("type") == "error":
            raise WorkerError(message)
        return message


__all__ = ["AsyncClient"]
