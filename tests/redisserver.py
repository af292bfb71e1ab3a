"""Real redis-servers for the queue tests: started as the test user on free loopback
ports, with their files in the test's directory, append-only and fsynced on every write
(so a restart loses nothing, as the queue's guarantees assume of a production Redis) -
alone, as a primary with a replica watched by a Sentinel, or as a three-primary Cluster."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio
from test_cleanup import wait_until
from workerutil import WorkerProcess

START_TIMEOUT_S = 20.0
# A port found free can be taken before redis-server binds it (by any process's outgoing
# connection, whose source ports come from the same range): a first start that finds its
# port taken picks new ones, this many times at most.
PORT_ATTEMPTS = 5


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` loopback ports free now, and distinct: each probe holds its port until
    all are picked."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class _PortTaken(Exception):
    pass


class RedisServer:
    def __init__(self, directory: Path, *options: str, cluster_bus: bool = False) -> None:
        """``options``: more of redis-server's flags (``--replicaof``, ``--cluster-enabled``);
        ``cluster_bus``: a port of its own for the cluster bus too."""
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        for attempt in range(PORT_ATTEMPTS):
            self.port, *bus = free_ports(2 if cluster_bus else 1)
            self.options = (*options, *(("--cluster-port", str(bus[0])) if bus else ()))
            self.url = f"redis://127.0.0.1:{self.port}/0"
            try:
                self.start(first=True)
                return
            except _PortTaken:
                if attempt + 1 == PORT_ATTEMPTS:
                    raise

    def start(self, first: bool = False) -> None:
        """Start it (again, on the same port, after ``stop``)."""
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always",
             "--logfile", str(log), "--daemonize", "no", *self.options],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                text = log.read_text()
                if first and "Address already in use" in text:
                    for made in self.directory.iterdir():  # (its log, a cluster's nodes.conf: all of this try)
                        if made.is_dir():
                            shutil.rmtree(made)
                        else:
                            made.unlink()
                    raise _PortTaken(text)
                raise AssertionError(text)
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


def wait_for(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``condition`` (a server's observable state) until it holds; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


class SentinelSetup:
    """A primary, its replica and one Sentinel watching them (a quorum of one: a test's
    ``failover()`` needs no vote), each in a directory of its own under ``directory``."""

    SERVICE = "queue"

    def __init__(self, directory: Path) -> None:
        self.servers: list[RedisServer] = []
        self.sentinel: subprocess.Popen[bytes] | None = None
        try:
            primary = self._server(directory / "a")
            self._server(directory / "b", "--replicaof", "127.0.0.1", str(primary.port))
            self.port = free_port()
            sentinel_dir = directory / "sentinel"
            sentinel_dir.mkdir(parents=True)
            config = sentinel_dir / "sentinel.conf"  # a Sentinel rewrites its file: one of its own
            config.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndir {sentinel_dir}\nlogfile {sentinel_dir / 'sentinel.log'}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {primary.port} 1\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                f"sentinel failover-timeout {self.SERVICE} 10000\n")
            self.sentinel = subprocess.Popen(["redis-server", str(config), "--sentinel"], stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.url = f"redis+sentinel://127.0.0.1:{self.port}/{self.SERVICE}/0"
            # A failover needs a replica the Sentinel has heard from, in sync with the primary.
            wait_for(self.replica_ready, "the Sentinel sees the replica")
        except BaseException:
            self.stop()
            raise

    def _server(self, directory: Path, *options: str) -> RedisServer:
        directory.mkdir(parents=True)
        server = RedisServer(directory, *options)
        self.servers.append(server)
        return server

    def ask(self, operation: Callable[[coredis.Redis[str]], Awaitable[Any]]) -> Any:
        """One operation on the Sentinel (blocking)."""

        async def main() -> Any:
            async with coredis.Redis("127.0.0.1", self.port, decode_responses=True, connect_timeout=5,
                                     stream_timeout=10) as sentinel:
                return await operation(sentinel)

        return trio.run(main)

    def primary(self) -> int:
        """The port of the primary the Sentinel names."""
        _, port = self.ask(lambda s: s.sentinel_get_master_addr_by_name(self.SERVICE))
        return int(port)

    def replica_ready(self) -> bool:
        replicas = self.ask(lambda s: s.sentinel_replicas(self.SERVICE))
        return any(replica.get("master-link-status") == "ok" and replica.get("flags") == "slave"
                   for replica in replicas)

    def server_of(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def failover(self) -> RedisServer:
        """Have the Sentinel promote the replica; return the new primary once the
        Sentinel names it. (The old primary is demoted some seconds later: ``demoted``.)"""
        old = self.primary()
        wait_for(self.replica_ready, "the Sentinel sees the replica")
        self.ask(lambda s: s.sentinel_failover(self.SERVICE))
        wait_for(lambda: self.primary() != old, "the Sentinel names a new primary", timeout=30)
        return self.server_of(self.primary())

    def demoted(self, server: RedisServer) -> bool:
        return bool(server.call(lambda r: r.role()).role == "slave")

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.terminate()
            self.sentinel.wait(timeout=30)
            self.sentinel = None
        for server in self.servers:
            server.stop()


class ClusterSetup:
    """Three primaries (no replicas) forming one Redis Cluster, their slots split evenly."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.servers: list[RedisServer] = []
        try:
            for number in range(size):
                node_dir = directory / f"node{number}"
                node_dir.mkdir(parents=True)
                # The bus on a free port of its own (by default the port + 10000, which
                # may be taken or too high).
                self.servers.append(RedisServer(node_dir, "--cluster-enabled", "yes", "--cluster-config-file",
                                                str(node_dir / "nodes.conf"), "--cluster-node-timeout", "2000",
                                                cluster_bus=True))
            nodes = [f"127.0.0.1:{server.port}" for server in self.servers]
            subprocess.run(["redis-cli", "--cluster", "create", *nodes, "--cluster-yes"], check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=60)
            wait_for(lambda: all(server.call(lambda r: r.cluster_info())["cluster_state"] == "ok"
                                 for server in self.servers), "the cluster is up")
            self.url = "redis+cluster://" + ",".join(nodes)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def log_events(worker: WorkerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]


def consuming(worker: WorkerProcess) -> bool:
    """The worker has joined its streams' groups (and published their bounds)."""
    return any(event["event"] == "queue_consuming" for event in log_events(worker))


@contextmanager
def queue_workers(factory: pytest.TempPathFactory) -> Iterator[Callable[..., WorkerProcess]]:
    """start(*serve_args) -> a worker, once it consumes its queue; at the end each is
    stopped (SIGTERM) and must exit 0, unless a test stopped or killed it."""
    started: list[WorkerProcess] = []

    def start(*args: str, socket: bool = True, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(factory.mktemp("w"), *args, socket=socket, env=env)
        started.append(worker)
        assert wait_until(lambda: consuming(worker), timeout=30), worker.log_path.read_text()
        return worker

    try:
        yield start
    finally:
        running = [worker for worker in started if worker.process.poll() is None]
        for worker in started:
            worker.stop()
    for worker in running:
        assert worker.process.returncode == 0, worker.log_path.read_text()
