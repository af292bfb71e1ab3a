"""Helpers for tests that talk to a real worker process: start/stop it, and a raw
protocol connection for the tests that must send what no well-behaved client would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.client import accepting
from worker.protocol import FrameDecoder, encode

SANDBOX_CLI = [sys.executable, "-m", "sandbox.cli"]
START_TIMEOUT_S = 30.0  # on a development host; scaled by the machine's slowdown


class WorkerProcess:
    def __init__(self, directory: Path, *args: str, wrapper: Sequence[str] = (), socket: bool = True,
                 env: dict[str, str] | None = None) -> None:
        """``wrapper``: a command the worker runs under (``prlimit ...``); ``socket``
        False: no ``--socket`` (the caller waits for what it serves instead); ``env``:
        variables set for it beyond the test's own."""
        self.socket_path = str(directory / "w.sock")
        self.log_path = directory / "worker.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - the worker's stderr until stop() closes it
        listen = ["--socket", self.socket_path] if socket else []
        self.process = subprocess.Popen(
            [*wrapper, *SANDBOX_CLI, "serve", *listen, *args], stderr=self._log, env={**os.environ, **(env or {})}
        )
        # A worker starts its launchers and their zygotes first: seconds here, a minute
        # or more in an emulated guest, so the wait scales with the machine's slowdown.
        from conftest import measured_slowdown

        deadline = time.monotonic() + START_TIMEOUT_S * measured_slowdown()
        while socket and not accepting(self.socket_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()  # (never left behind by a test that failed here)
                self.process.wait()
                self._log.close()
                raise AssertionError(f"worker did not start listening: {self.log_path.read_text()}")
            time.sleep(0.01)

    def launchers(self) -> list[int]:
        """Pids of this worker's launcher processes."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.process.pid and b"worker.launcher" in cmdline:
                    pids.append(int(entry))
        return pids

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class Raw:
    """A protocol connection with no manners: send anything, read replies."""

    def __init__(self, path: str, hello: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.decoder = FrameDecoder(1 << 30)
        self.pending: list[dict[str, Any]] = []
        if hello:
            self.send({"type": "hello", "version": 1})
            assert self.next()["type"] == "hello"

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next(self) -> dict[str, Any]:
        while not self.pending:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                raise EOFError("worker closed the connection")
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def until(self, predicate) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        while True:
            message = self.next()
            if predicate(message):
                return message

    def closed_by_peer(self) -> bool:
        """True once the worker has closed its side (after any pending replies)."""
        try:
            while True:
                self.next()
        except EOFError:
            return True

    def close(self) -> None:
        self.sock.close()


def exited(pid: int) -> bool:
    """The process is a zombie, or gone: its files are closed. (An orphan of a test's
    worker may be re-parented to pytest, a subreaper, and stay a zombie until reaped.)"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
