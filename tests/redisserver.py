"""A real redis-server for the queue tests: started as the test user on a free loopback
port, with its files in the test's directory, append-only and fsynced on every write (so
a restart loses nothing, as the queue's guarantees assume of a production Redis)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import coredis
import trio

START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always",
             "--logfile", str(self.directory / "redis.log"), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.process.poll() is None, (self.directory / "redis.log").read_text()
            try:
                if self.call(lambda redis: redis.ping()):
                    return
            except (coredis.exceptions.ConnectionError, coredis.exceptions.BusyLoadingError, OSError):
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def call(self, operation: Callable[[coredis.Redis[bytes]], Awaitable[Any]]) -> Any:
        """One operation on a connection of its own (blocking)."""

        async def main() -> Any:
            result: Any = None
            error: Exception | None = None
            async with coredis.Redis.from_url(self.url, connect_timeout=5, stream_timeout=10) as redis:
                try:
                    result = await operation(redis)
                except Exception as exc:  # raised as itself, not in the pool's exception group
                    error = exc
            if error is not None:
                raise error
            return result

        return trio.run(main)
