"""The queue on a Redis Sentinel setup and on a Redis Cluster: real redis-servers (a
primary, a replica and a Sentinel; three cluster primaries) on loopback, real workers and
producers on the redis+sentinel:// and redis+cluster:// URLs. Waits poll for a condition
with a deadline, never a blind sleep."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redisserver import ClusterSetup, RedisServer, SentinelSetup, queue_workers
from test_cleanup import wait_until
from workerutil import SANDBOX_CLI

from sandbox.judge.problem import read_package
from sandbox.models import Job
from worker.queue_client import QueueClient
from worker.queue_schema import GROUP

PROBLEMS = Path(__file__).parent / "problems"


def sh(script: str) -> Job:
    return Job(cmd=["sh", "-c", script])


def worker_on(server: RedisServer) -> bool:
    """A worker's connection is on ``server``: its wait for new jobs (or cancels, or
    its judges' outcomes) is blocked there."""
    return any(client.get("cmd") == "xread" for client in server.call(lambda r: r.client_list()))


def settled(server: RedisServer, stream: str) -> bool:
    """Every job of the stream finished: its entry acknowledged and deleted."""
    return bool(server.call(lambda r: r.xlen(stream)) == 0
                and not server.call(lambda r: r.xpending(stream, GROUP, "-", "+", 100)))


@pytest.fixture
def workers(tmp_path_factory) -> Iterator[Any]:
    """workers(url, stream, *args) -> a worker on the queue, once it consumes; each is
    stopped (SIGTERM) at the end."""
    with queue_workers(tmp_path_factory) as start:
        yield lambda url, stream, *args: start("--redis", url, "--stream", stream, *args)


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = SentinelSetup(tmp_path / "redis")
    yield setup
    setup.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterSetup]:
    setup = ClusterSetup(tmp_path / "redis")
    yield setup
    setup.stop()


def test_a_worker_on_a_sentinel_url_follows_a_failover_and_loses_no_job(sentinel, workers):
    stream = "judge"
    worker = workers(sentinel.url, stream, "--slots", "5", "--claim-idle", "2")
    client = QueueClient(sentinel.url, stream)
    assert client.run(sh("echo before"), timeout=60).stdout == b"before\n"
    old = sentinel.server_of(sentinel.primary())
    # Jobs held by the worker across the failover: long enough to outlast it (the
    # Sentinel demotes the old primary some seconds after naming the new one). Should
    # one end before, its outcome lands on the old primary and is lost with it; the
    # job is then still pending on the new one, claimed after --claim-idle, run again.
    held = [client.submit(sh(f"sleep 12; echo held-{n}"), f"held-{n}") for n in range(3)]
    assert wait_until(lambda: len(old.call(lambda r: r.xpending(stream, GROUP, "-", "+", 10))) == 3, timeout=30)

    async def replicated(redis: Any) -> None:
        # Replication is asynchronous: a write the old primary took but had not passed
        # on when it was demoted is Sentinel's to lose. WAIT after a write of this
        # connection's returns once the replica has every write before it too.
        with redis.ensure_replication(1, 10_000):
            await redis.set("replicated", 1)

    old.call(replicated)
    new = sentinel.failover()
    assert new is not old
    # The worker heard the Sentinel announce the new primary and went there at once,
    # while the old one still takes writes (it is demoted seconds later).
    assert wait_until(lambda: worker_on(new), timeout=5) and not sentinel.demoted(old)
    assert wait_until(lambda: sentinel.demoted(old), timeout=60)
    after = [client.submit(sh(f"echo after-{n}"), f"after-{n}") for n in range(4)]
    for job_id in held + after:
        assert client.result(job_id, timeout=90).stdout == f"{job_id}\n".encode(), job_id
    assert wait_until(lambda: settled(new, stream), timeout=30)
    assert new.call(lambda r: r.role()).role == "master"
    assert worker.process.poll() is None, worker.log_path.read_text()  # it waited the failover out


def test_a_worker_and_a_producer_on_a_cluster_with_a_hash_tagged_stream(cluster, workers):
    stream = "{judge}"
    workers(cluster.url, stream, "--slots", "2")
    # FUNCTION LOAD reached every primary, whichever one a stream's slot lands on.
    assert all(server.call(lambda r: r.function_list(libraryname="sandbox")) for server in cluster.servers)
    client = QueueClient(cluster.url, stream)
    results = [client.run(sh(f"echo {n}"), timeout=60, job_id=f"job-{n}") for n in range(5)]
    assert [result.stdout for result in results] == [f"{n}\n".encode() for n in range(5)]
    heard: list[dict[str, Any]] = []
    source = b"a, b = map(int, input().split())\nprint(a + b)\n"
    report = client.judge(read_package(PROBLEMS / "sum"), "python3", source, timeout=120, on_test=heard.append)
    assert (report["verdict"], [test["name"] for test in heard]) == ("accepted", ["1", "2", "10"])
    # Every key of the stream is in the hash tag's slot: on one node, none on the others.
    sizes = sorted(server.call(lambda r: r.dbsize()) for server in cluster.servers)
    assert sizes[:2] == [0, 0] and sizes[2] > 0
    holder = next(server for server in cluster.servers if server.call(lambda r: r.dbsize()))
    assert wait_until(lambda: settled(holder, stream), timeout=30)


def test_a_stream_without_a_hash_tag_is_refused_on_a_cluster(cluster, tmp_path):
    served = subprocess.run([*SANDBOX_CLI, "serve", "--socket", str(tmp_path / "w.sock"), "--redis", cluster.url,
                             "--stream", "judge"], capture_output=True, text=True, timeout=60)
    submitted = subprocess.run([*SANDBOX_CLI, "submit", "--redis", cluster.url, "--stream", "judge", "--", "true"],
                               capture_output=True, text=True, timeout=60)
    for done in (served, submitted):
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        assert "needs a hash tag, e.g. '{judge}'" in done.stderr, done.stderr
    with pytest.raises(ValueError, match="hash tag"):
        QueueClient(cluster.url, "judge").submit(sh("true"))
    assert all(server.call(lambda r: r.dbsize()) == 0 for server in cluster.servers)  # nothing written


def test_the_cluster_node_of_the_stream_restarting_is_an_outage_waited_out(cluster, workers):
    stream = "{judge}"
    worker = workers(cluster.url, stream, "--slots", "2", "--claim-idle", "5")
    client = QueueClient(cluster.url, stream)
    ids = [client.submit(sh(f"sleep 0.5; echo {n}"), f"job-{n}") for n in range(6)]
    holder = next(server for server in cluster.servers if server.call(lambda r: r.xlen(stream)))
    assert wait_until(lambda: len(holder.call(lambda r: r.xpending(stream, GROUP, "-", "+", 10))) == 2, timeout=30)
    # The node that holds the stream's slot goes away (no replica takes over), then comes
    # back with its data: the worker sees connection errors, then the cluster's own view
    # of a slot without a node (CLUSTERDOWN), and waits all of it out.
    holder.stop()
    events = lambda: [json.loads(line)["event"] for line in worker.log_path.read_text().splitlines()  # noqa: E731
                      if line.startswith("{")]
    assert wait_until(lambda: "redis_unreachable" in events(), timeout=30), worker.log_path.read_text()
    holder.start()
    # (A producer is not a worker: it hears an outage as an error. It asks once the
    # cluster is whole again.)
    assert wait_until(lambda: all(server.call(lambda r: r.cluster_info())["cluster_state"] == "ok"
                                  for server in cluster.servers), timeout=30)
    assert [client.result(job_id, timeout=90).stdout for job_id in ids] == [f"{n}\n".encode() for n in range(6)]
    assert wait_until(lambda: settled(holder, stream), timeout=30)
    assert "redis_reachable" in events() and "redis_error" not in events(), worker.log_path.read_text()
    assert worker.process.poll() is None
