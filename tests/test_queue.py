"""Workers behind a Redis Streams queue: real redis-server processes on loopback ports,
real `sandbox serve --redis` workers, real jobs - killed, restarted and stopped mid-load.
Waits for external effects poll with a deadline (``wait_until``), never a blind sleep."""

from __future__ import annotations

import base64
import concurrent.futures
import fcntl
import hashlib
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from redisserver import RedisServer, free_port, log_events, queue_workers
from test_cleanup import wait_until
from workerutil import SANDBOX_CLI

from sandbox.judge.problem import read_package
from sandbox.models import Blob, Collect, InputFile, Job, Limits, Status
from worker.client import Client
from worker.protocol import job_to_wire
from worker.queue_client import QueueClient, QueueError, QueueFull
from worker.queue_schema import GROUP, QueueKeys, decode_outcome, decode_report

STREAM = "judge"
PROBLEMS = Path(__file__).parent / "problems"
KEYS = QueueKeys(STREAM)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def workers(tmp_path_factory, redis) -> Iterator[Any]:
    """workers(*args) -> a worker serving a socket and the queue on ``redis``, once it
    has joined the stream's group; at the end each is stopped (SIGTERM), unless a test
    killed it."""
    with queue_workers(tmp_path_factory) as start:
        yield lambda *args, **options: start("--redis", redis.url, "--stream", STREAM, *args, **options)


def sh(script: str, **limits: object) -> Job:
    return Job(cmd=["sh", "-c", script], limits=Limits(**limits))  # type: ignore[arg-type]


def outcomes(redis: RedisServer, stream: str = STREAM) -> list[tuple[str, bytes]]:
    """(job id, outcome) of every entry on the stream's results stream, oldest first."""
    entries = redis.call(lambda r: r.xrange(QueueKeys(stream).results))
    return [(entry.field_values[b"id"].decode(), entry.field_values[b"outcome"]) for entry in entries]


def pending(redis: RedisServer) -> list[Any]:
    """The stream's deliveries not yet acknowledged (entry, consumer, idle, deliveries)."""
    return list(redis.call(lambda r: r.xpending(STREAM, GROUP, "-", "+", 100)))


def has_result(redis: RedisServer, job_id: str) -> bool:
    return redis.call(lambda r: r.exists([KEYS.result(job_id)])) == 1


def queue_is_empty(redis: RedisServer) -> bool:
    """Every job finished: its entry acknowledged and deleted."""
    return redis.call(lambda r: r.xlen(STREAM)) == 0 and not pending(redis)


def test_a_job_through_the_queue_gets_the_result_the_socket_gives(redis, workers):
    worker = workers("--slots", "1")
    job = sh("echo out; echo err >&2; exit 3", memory="64M")
    result = QueueClient(redis.url, STREAM).run(job, timeout=60)
    with Client(worker.socket_path) as client:
        direct = client.run(job)
    assert (result.status, result.exit_code, result.stdout, result.stderr) == (Status.RUNTIME_ERROR, 3, b"out\n", b"err\n")
    assert (direct.status, direct.exit_code, direct.stdout, direct.stderr) == (result.status, 3, b"out\n", b"err\n")
    assert queue_is_empty(redis)  # acknowledged and deleted with its result written
    ((job_id, _),) = outcomes(redis)
    assert redis.call(lambda r: r.ttl(KEYS.result(job_id))) > 0  # kept for a while, not forever


def test_a_producer_in_any_language_xadds_the_documented_map(redis, workers):
    # What docs/queue.md says a producer writes: fields id and job (the protocol's job, msgpack).
    workers("--slots", "1")
    wire = msgpack.packb(job_to_wire(sh("echo plain")), use_bin_type=True)
    redis.call(lambda r: r.xadd(STREAM, {"id": "raw-1", "job": wire}))
    assert wait_until(lambda: has_result(redis, "raw-1"), timeout=60)
    stored = redis.call(lambda r: r.get(KEYS.result("raw-1")))
    raw = msgpack.unpackb(stored, raw=False)
    assert raw["id"] == "raw-1" and raw["result"]["status"] == "ok" and raw["result"]["stdout"] == b"plain\n"
    assert outcomes(redis) == [("raw-1", stored)]  # and on the results stream, once
    # A field of its own whose name is no UTF-8 is a field no worker knows: the job runs.
    redis.call(lambda r: r.xadd(STREAM, {"id": "raw-2", "job": wire, b"\xff": b"x"}))
    assert wait_until(lambda: has_result(redis, "raw-2"), timeout=60)
    # An id out of bounds is refused at submit, not queued to be dead-lettered unanswered.
    with pytest.raises(QueueError) as caught:
        QueueClient(redis.url, STREAM).submit(sh("true"), job_id="x" * 129)
    assert (caught.value.code, caught.value.field) == ("invalid_job", "id")
    assert redis.call(lambda r: r.xlen(STREAM)) == 0


def test_the_cli_submits_through_the_queue(redis, workers, tmp_path):
    workers("--slots", "1")
    done = subprocess.run([*SANDBOX_CLI, "submit", "--redis", redis.url, "--stream", STREAM, "--",
                           "python3", "-c", "print(6*7)"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "42\n"), done.stderr
    # An id of the caller's: the second submit is answered with the first run's output.
    twice = [subprocess.run([*SANDBOX_CLI, "submit", "--redis", redis.url, "--stream", STREAM, "--id", "cli-1",
                             "--", "od", "-An", "-N8", "-tx8", "/dev/urandom"], capture_output=True, text=True,
                            timeout=60) for _ in range(2)]
    assert twice[0].returncode == 0 and twice[0].stdout.strip() and twice[0].stdout == twice[1].stdout
    unreachable = subprocess.run([*SANDBOX_CLI, "submit", "--redis", f"redis://127.0.0.1:{free_port()}/0", "--",
                                  "true"], capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 125 and "Traceback" not in unreachable.stderr
    assert "redis at redis://127.0.0.1:" in unreachable.stderr, unreachable.stderr
    # What the job collected is written where --collect-to says, as by sandbox run.
    collected = subprocess.run([*SANDBOX_CLI, "submit", "--redis", redis.url, "--stream", STREAM,
                                "--collect", "/work/out", "--collect-to", str(tmp_path), "--",
                                "sh", "-c", "echo made > /work/out"], capture_output=True, text=True, timeout=60)
    assert collected.returncode == 0, collected.stderr
    assert (tmp_path / "work" / "out").read_text() == "made\n"


def test_an_id_is_run_once_however_often_it_is_submitted(redis, workers):
    workers("--slots", "2")
    client = QueueClient(redis.url, STREAM)
    # A random number: a second run would print another.
    job = sh("od -An -N8 -tx8 /dev/urandom")
    first = client.run(job, timeout=60, job_id="once")
    assert client.submit(job, "once") == "once"
    assert client.result("once", timeout=60).stdout == first.stdout
    # The same id twice on the stream (two plain XADDs, no sandbox_submit): one runs.
    wire = msgpack.packb(job_to_wire(job), use_bin_type=True)
    for _ in range(2):
        redis.call(lambda r: r.xadd(STREAM, {"id": "twice", "job": wire}))
    assert wait_until(lambda: queue_is_empty(redis), timeout=60)
    assert [job_id for job_id, _ in outcomes(redis)] == ["once", "twice"]


def test_an_invalid_job_gets_an_outcome_saying_why(redis, workers):
    workers("--slots", "1", "--max-frame", "64K")
    client = QueueClient(redis.url, STREAM)
    with pytest.raises(QueueError) as caught:
        client.run(Job(cmd=["true"], image="no/such:image"), timeout=60)
    assert caught.value.code == "invalid_job" and caught.value.field == "image"
    with pytest.raises(QueueError) as caught:  # larger than the worker takes on its socket
        client.run(Job(cmd=["true"], stdin=Blob(data=b"x" * (100 << 10))), timeout=60)
    assert caught.value.code == "invalid_job" and caught.value.field == "job" and "--max-frame" in caught.value.message
    redis.call(lambda r: r.xadd(STREAM, {"id": "garbage", "job": b"\xc1\xc1"}))
    with pytest.raises(QueueError) as caught:
        client.result("garbage", timeout=60)
    assert caught.value.code == "invalid_job"
    assert queue_is_empty(redis)


def test_a_full_stream_refuses_producers_and_trims_nothing(redis, workers):
    # A worker publishes the bound; stopped, it leaves the stream to fill.
    worker = workers("--slots", "1", "--max-queue", "2")
    assert worker.stop() == 0
    client = QueueClient(redis.url, STREAM)
    ids = [client.submit(sh(f"echo {n}")) for n in range(2)]
    with pytest.raises(QueueFull) as caught:
        client.submit(sh("echo 2"))
    assert caught.value.code == "queue_full" and STREAM in caught.value.message
    assert redis.call(lambda r: r.xlen(STREAM)) == 2  # nothing trimmed, nothing added
    done = subprocess.run([*SANDBOX_CLI, "submit", "--redis", redis.url, "--stream", STREAM, "--", "true"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 125 and "queue_full" in done.stderr and "Traceback" not in done.stderr, done.stderr
    workers("--slots", "1", "--max-queue", "2")
    assert [client.result(job_id, timeout=60).stdout for job_id in ids] == [b"0\n", b"1\n"]
    assert client.run(sh("echo 2"), timeout=60).stdout == b"2\n"  # room again


def test_a_worker_takes_no_more_jobs_than_it_has_free_slots(redis, workers):
    client = QueueClient(redis.url, STREAM)
    ids = [client.submit(sh(f"sleep 0.3; echo {n}")) for n in range(4)]
    workers("--slots", "1")
    most = 0

    def all_done() -> bool:
        nonlocal most
        most = max(most, len(pending(redis)))
        return all(has_result(redis, job_id) for job_id in ids)

    assert wait_until(all_done, timeout=60)
    assert most == 1


def test_a_killed_workers_job_is_claimed_and_run_by_another(redis, workers):
    client = QueueClient(redis.url, STREAM)
    first = workers("--slots", "1", "--claim-idle", "1")
    job_id = client.submit(sh("sleep 2; echo done"))
    assert wait_until(lambda: len(pending(redis)) == 1, timeout=30)
    (entry, dead_consumer, *_) = pending(redis)[0]
    assert f"-{first.process.pid}-" in dead_consumer.decode()
    first.process.kill()
    first.process.wait()
    second = workers("--slots", "1", "--claim-idle", "1")
    assert wait_until(lambda: pending(redis) and pending(redis)[0].consumer != dead_consumer, timeout=30)
    # The dead worker's late result, written now (it was only stalled, say): fenced off.
    late = redis.call(lambda r: r.fcall(
        "sandbox_finish", [STREAM, KEYS.result(job_id), KEYS.results, KEYS.id(job_id), KEYS.dead],
        [GROUP, dead_consumer, entry, job_id, b"late", 60, 1000]))
    assert late == 0 and not has_result(redis, job_id)
    result = client.result(job_id, timeout=60)
    assert (result.status, result.stdout) == (Status.OK, b"done\n")
    assert [job for job, _ in outcomes(redis)] == [job_id] and queue_is_empty(redis)
    assert "queue_result_fenced" not in [e["event"] for e in log_events(second)]


def test_a_job_longer_than_the_claim_timeout_stays_with_its_live_worker(redis, workers):
    started = [workers("--slots", "1", "--claim-idle", "1") for _ in range(2)]
    client = QueueClient(redis.url, STREAM)
    job_id = client.submit(sh("sleep 3; echo long"))
    assert wait_until(lambda: len(pending(redis)) == 1, timeout=30)
    owner = pending(redis)[0].consumer
    seen = set()

    def finished() -> bool:
        seen.update((p.consumer, p.delivered) for p in pending(redis))
        return has_result(redis, job_id)

    assert wait_until(finished, timeout=60)
    assert seen == {(owner, 1)}  # the heartbeat kept it: never claimed, delivered once
    assert client.result(job_id, timeout=10).stdout == b"long\n"
    assert not any(e["event"].startswith("queue_") and e["event"] != "queue_consuming"
                   for worker in started for e in log_events(worker))


def test_a_job_cancelled_in_its_worker_is_not_acknowledged_but_run_again(redis, workers, connect):
    # Only a job with a result is acknowledged: one cancelled (here through the worker's
    # socket, by the name the pool gives it) stays pending and is claimed again.
    worker = workers("--slots", "1", "--claim-idle", "1")
    client = QueueClient(redis.url, STREAM)
    job_id = client.submit(sh("sleep 1000", wall_time="2s"))
    assert wait_until(lambda: len(pending(redis)) == 1, timeout=30)
    entry = pending(redis)[0].identifier.decode()
    connect(worker).send({"type": "cancel", "id": f"queue:{STREAM}:{entry}:1"})
    assert wait_until(lambda: "queue_left_pending" in [e["event"] for e in log_events(worker)], timeout=30)
    assert not has_result(redis, job_id)
    assert wait_until(lambda: [p.delivered for p in pending(redis)] == [2], timeout=30)
    assert client.result(job_id, timeout=60).status is Status.WALL_TIME_LIMIT
    assert [job for job, _ in outcomes(redis)] == [job_id] and queue_is_empty(redis)


@pytest.mark.parametrize("kind", ["job", "judge"])
def test_a_job_that_fails_its_deliveries_is_dead_lettered(redis, workers, kind: str):
    # Three deliveries that ended without a result, as three dying workers leave them.
    worker = workers("--slots", "1")
    assert worker.stop() == 0  # (it made the group)
    request = job_to_wire(sh("echo never")) if kind == "job" else {
        "problem": read_package(PROBLEMS / "sum"), "submission": {"lang": "python3", "source": b"print(1)"}}
    wire = msgpack.packb(request, use_bin_type=True)
    entry = redis.call(lambda r: r.xadd(STREAM, {"id": "doomed", kind: wire})).decode()
    redis.call(lambda r: r.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=1))
    for _ in range(2):
        redis.call(lambda r: r.xclaim(STREAM, GROUP, "ghost", 0, [entry]))
    assert pending(redis)[0].delivered == 3
    workers("--slots", "1", "--claim-idle", "0.5", "--max-deliveries", "3")
    with pytest.raises(QueueError) as caught:
        QueueClient(redis.url, STREAM).result("doomed", timeout=60)
    assert caught.value.code == "dead_letter" and "4 times" in caught.value.message
    (dead,) = redis.call(lambda r: r.xrange(KEYS.dead))
    fields = dead.field_values
    assert (fields[b"id"], fields[b"entry"].decode(), fields[b"reason"], fields[b"deliveries"],
            fields[kind.encode()]) == (b"doomed", entry, b"max_deliveries", b"4", wire)
    assert queue_is_empty(redis)


def test_redis_restarting_under_jobs_loses_nothing(redis, workers):
    port = free_port()
    worker = workers("--slots", "2", "--claim-idle", "5", "--metrics", f"127.0.0.1:{port}")
    client = QueueClient(redis.url, STREAM)
    ids = [client.submit(sh(f"sleep 0.5; echo {n}")) for n in range(6)]
    assert wait_until(lambda: len(pending(redis)) == 2, timeout=30)  # two running
    # Down long enough for the worker to notice (a heartbeat, a result to write), then back.
    redis.stop()
    assert wait_until(lambda: "redis_unreachable" in [e["event"] for e in log_events(worker)], timeout=30)
    redis.start()
    assert wait_until(lambda: all(has_result(redis, job_id) for job_id in ids), timeout=60)
    assert [client.result(job_id, timeout=10).stdout for job_id in ids] == [f"{n}\n".encode() for n in range(6)]
    assert sorted(job for job, _ in outcomes(redis)) == sorted(ids) and queue_is_empty(redis)
    events = [e["event"] for e in log_events(worker)]
    assert "redis_unreachable" in events and "redis_reachable" in events
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert any(line.startswith("sandbox_redis_outages_total ") and float(line.split()[1]) >= 1
               for line in metrics.splitlines()), metrics


def test_sigterm_stops_claiming_and_finishes_what_it_holds(redis, workers):
    worker = workers("--slots", "2")
    client = QueueClient(redis.url, STREAM)
    held = client.submit(sh("sleep 1; echo held"))
    assert wait_until(lambda: len(pending(redis)) == 1, timeout=30)
    worker.process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: any(e["event"] == "stopping" for e in log_events(worker)), timeout=30)
    later = client.submit(sh("echo later"))
    assert worker.process.wait(timeout=60) == 0
    assert decode_outcome(redis.call(lambda r: r.get(KEYS.result(held)))).stdout == b"held\n"
    assert not has_result(redis, later) and not pending(redis)  # left in the stream, for the next worker
    assert redis.call(lambda r: r.xlen(STREAM)) == 1
    workers("--slots", "1")
    assert client.result(later, timeout=60).stdout == b"later\n"


def test_three_workers_one_killed_mid_load_every_job_one_result(redis, workers):
    # --claim-idle 2: a live worker's heartbeat (every 2/3 s) is never that late, even here.
    started = [workers("--slots", "2", "--claim-idle", "2") for _ in range(3)]
    client = QueueClient(redis.url, STREAM)
    stuck = client.submit(sh("sleep 1000", wall_time="6s"))
    assert wait_until(lambda: len(pending(redis)) == 1, timeout=30)
    holder = next(w for w in started if f"-{w.process.pid}-" in pending(redis)[0].consumer.decode())
    ids = [client.submit(sh(f"sleep 0.2; echo {n}")) for n in range(30)]
    assert wait_until(lambda: sum(has_result(redis, job_id) for job_id in ids) >= 5, timeout=60)
    holder.process.kill()
    holder.process.wait()
    assert wait_until(lambda: all(has_result(redis, job_id) for job_id in [*ids, stuck]), timeout=60)
    results = {job_id: decode_outcome(outcome) for job_id, outcome in outcomes(redis)}
    assert sorted(job for job, _ in outcomes(redis)) == sorted([*ids, stuck])  # one each, no more
    assert [results[job_id].stdout for job_id in ids] == [f"{n}\n".encode() for n in range(30)]
    assert results[stuck].status is Status.WALL_TIME_LIMIT  # run again by a survivor, to its limit
    assert wait_until(lambda: queue_is_empty(redis), timeout=10)


def test_a_judge_through_the_queue_reports_as_through_the_socket(redis, workers, language_image):
    worker = workers("--slots", "2")
    package = read_package(PROBLEMS / "sum")
    source = (PROBLEMS / "solutions" / "sum_wrong.cpp").read_bytes()
    heard: list[dict[str, Any]] = []
    report = QueueClient(redis.url, STREAM).judge(package, "cpp", source, judge_id="sum-1", parallel=2,
                                                  timeout=300, on_test=heard.append)
    with Client(worker.socket_path) as client:
        direct = client.judge(package, "cpp", source)
    assert (report["verdict"], report["score"]) == (direct["verdict"], direct["score"]) == (
        "wrong_answer", round(200 / 3, 6))
    assert [(t["name"], t["status"]) for t in report["tests"]] == [(t["name"], t["status"]) for t in direct["tests"]]
    # Each test's event on the progress stream, kept as long as the outcome.
    assert sorted(t["name"] for t in heard) == ["1", "10", "2"] and sorted(
        heard, key=lambda t: t["name"]) == sorted(report["tests"], key=lambda t: t["name"])
    progress = redis.call(lambda r: r.xrange(KEYS.progress("sum-1")))
    assert [(e.field_values[b"id"], e.field_values[b"delivery"]) for e in progress] == [(b"sum-1", b"1")] * 3
    assert redis.call(lambda r: r.ttl(KEYS.progress("sum-1"))) > 0
    raw = msgpack.unpackb(redis.call(lambda r: r.get(KEYS.result("sum-1"))), raw=False)
    assert set(raw) == {"id", "report"} and raw["report"] == report
    assert outcomes(redis)[0][0] == "sum-1" and queue_is_empty(redis)
    done = subprocess.run([*SANDBOX_CLI, "judge", str(PROBLEMS / "sum"), "--lang", "cpp", "--source",
                           str(PROBLEMS / "solutions" / "sum_wrong.cpp"), "--json", "--redis", redis.url,
                           "--stream", STREAM], capture_output=True, timeout=300)
    assert done.returncode == 1, done.stderr  # a verdict other than accepted
    printed = json.loads(done.stdout)
    assert (printed["verdict"], [t["status"] for t in printed["tests"]]) == (
        report["verdict"], [t["status"] for t in report["tests"]])


def test_a_killed_workers_judge_is_judged_again_by_another(redis, workers, language_image):
    first = workers("--slots", "1", "--claim-idle", "1")
    client = QueueClient(redis.url, STREAM)
    slow = b"import time\na, b = map(int, input().split())\ntime.sleep(1)\nprint(a + b)\n"
    judge_id = client.submit_judge(read_package(PROBLEMS / "sum"), "python3", slow)
    progress = KEYS.progress(judge_id)
    assert wait_until(lambda: redis.call(lambda r: r.xlen(progress)) >= 1, timeout=60)  # a test judged
    first.process.kill()
    first.process.wait()
    workers("--slots", "1", "--claim-idle", "1")
    heard: list[dict[str, Any]] = []
    report = client.report(judge_id, timeout=120, on_test=heard.append)
    assert (report["verdict"], [t["name"] for t in report["tests"]]) == ("accepted", ["1", "2", "10"])
    runs = [(e.field_values[b"delivery"], msgpack.unpackb(e.field_values[b"test"], raw=False)["name"])
            for e in redis.call(lambda r: r.xrange(progress))]
    # The first run's tests, then the second's, from its first test: every test of it.
    assert runs[0][0] == b"1" and sorted(name for run, name in runs if run == b"2") == ["1", "10", "2"]
    assert [t["name"] for t in heard] == [name for _, name in runs]
    assert [job for job, _ in outcomes(redis)] == [judge_id] and queue_is_empty(redis)
    # (The killed worker's copy of the package is in its own cache directory, emptied when
    # a worker starts on it: nothing in the shared temporary directory, which the leak
    # check after every test looks at.)


def test_sigterm_lets_a_held_judge_finish(redis, workers, language_image):
    worker = workers("--slots", "1")
    client = QueueClient(redis.url, STREAM)
    slow = b"import time\na, b = map(int, input().split())\ntime.sleep(0.5)\nprint(a + b)\n"
    judge_id = client.submit_judge(read_package(PROBLEMS / "sum"), "python3", slow)
    assert wait_until(lambda: redis.call(lambda r: r.xlen(KEYS.progress(judge_id))) >= 1, timeout=60)
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=60) == 0
    report = decode_report(redis.call(lambda r: r.get(KEYS.result(judge_id))))
    assert (report["verdict"], len(report["tests"])) == ("accepted", 3) and queue_is_empty(redis)


def test_a_queued_judge_with_a_broken_package_or_an_unknown_file_is_an_error_outcome(redis, workers, language_image):
    workers("--slots", "1")
    client = QueueClient(redis.url, STREAM)
    broken = {**read_package(PROBLEMS / "sum"), "../escape": b"x"}
    with pytest.raises(QueueError) as caught:
        client.judge(broken, "python3", b"print(1)", timeout=60)
    assert caught.value.code == "invalid_job" and caught.value.field == "problem"
    assert "not a package file name" in caught.value.message
    # A file named by an id nobody put: no worker has it.
    cached = {**read_package(PROBLEMS / "sum"), "tests/1.in": {"file_id": "sha256:" + "0" * 64}}
    with pytest.raises(QueueError) as caught:
        client.judge(cached, "python3", b"print(1)", timeout=60)
    assert caught.value.code == "invalid_job" and caught.value.field == "problem.tests/1.in.file_id"
    assert "the queue has no file" in caught.value.message
    assert queue_is_empty(redis)


def test_streams_share_a_worker_by_weight_and_a_flood_starves_none(redis, workers):
    # Both streams flooded before the worker comes; one slot, so jobs finish in the order
    # taken. Weights 1 and 3: of every four jobs, one from each stream's share.
    client, heavy = QueueClient(redis.url, STREAM), QueueClient(redis.url, "heavy")
    for number in range(12):
        client.submit(sh("sleep 0.02"), job_id=f"light-{number}")
        heavy.submit(sh("sleep 0.02"), job_id=f"heavy-{number}")
    port = free_port()
    workers("--slots", "1", "--stream", "heavy=3", "--metrics", f"127.0.0.1:{port}")
    assert wait_until(lambda: len(outcomes(redis)) == 12 and len(outcomes(redis, "heavy")) == 12, timeout=120)
    scraped = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'sandbox_queue_taken_total{stream="heavy"} 12.0' in scraped
    assert f'sandbox_queue_taken_total{{stream="{STREAM}"}} 12.0' in scraped
    finished = sorted(
        [(entry_order(entry), "light") for entry in redis.call(lambda r: r.xrange(KEYS.results))]
        + [(entry_order(entry), "heavy") for entry in redis.call(lambda r: r.xrange("heavy:results"))])
    first = [stream for _, stream in finished[:12]]
    assert (first.count("light"), first.count("heavy")) == (3, 9), first
    assert "light" in first[:4]  # the light stream waits behind three of the heavy one's jobs at most


def test_a_file_put_once_is_fetched_by_the_worker_that_takes_the_job(redis, workers):
    workers("--slots", "1", "--max-blob", "1M")
    client = QueueClient(redis.url, STREAM)
    data = bytes(range(256)) * 1200  # 300 KiB: more than a job should carry each time
    file_id = client.put_file(data)
    assert file_id == "sha256:" + hashlib.sha256(data).hexdigest() and client.put_file(data) == file_id
    assert redis.call(lambda r: r.ttl(KEYS.blob(file_id))) > 0  # kept as long as results are
    job = Job(cmd=["sh", "-c", "sha256sum < /work/input; wc -c < /work/input"], files=[InputFile("/work/input", Blob(file_id=file_id))])
    result = client.run(job, timeout=60)
    assert result.stdout.decode().split() == [hashlib.sha256(data).hexdigest(), "-", str(len(data))]
    # The worker keeps it in its own cache: the next job needs Redis no more.
    redis.call(lambda r: r.delete([KEYS.blob(file_id)]))
    assert client.run(job, timeout=60).stdout == result.stdout
    # A file nobody put, and one whose bytes are not its id's, fail the job, naming the field.
    for name, stored in (("gone", None), ("forged", b"other bytes")):
        missing = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
        key = KEYS.blob(missing)
        if stored is not None:
            redis.call(lambda r, key=key, value=stored: r.set(key, value))
        with pytest.raises(QueueError) as caught:
            client.run(Job(cmd=["true"], files=[InputFile("/work/x", Blob(file_id=missing))]), timeout=60)
        assert (caught.value.code, caught.value.field) == ("invalid_job", "files[0].file_id"), caught.value
    with pytest.raises(QueueError) as caught:
        client.put_file(b"x" * (2 << 20))
    assert caught.value.code == "blob_too_big" and "--max-blob" in caught.value.message


def test_a_file_a_job_collected_into_the_cache_is_put_for_every_worker(redis, workers):
    workers("--slots", "1")
    client = QueueClient(redis.url, STREAM)
    made = client.run(Job(cmd=["sh", "-c", "echo made here > /work/out"], collect=[Collect("/work/out", cache=True)]),
                      timeout=60)
    file_id = made.file_ids["/work/out"]
    assert redis.call(lambda r: r.get(KEYS.blob(file_id))) == b"made here\n"
    other = workers("--slots", "1")  # (either worker may take it: both can)
    used = client.run(Job(cmd=["cat", "/work/in"], files=[InputFile("/work/in", Blob(file_id=file_id))]), timeout=60)
    assert used.stdout == b"made here\n" and other.process.poll() is None


def held(lock: Path) -> bool:
    """A running worker holds this cache's lock."""
    with open(lock, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_workers_without_a_socket_each_keep_a_file_cache_of_their_own(redis, workers, tmp_path):
    """A worker that only takes jobs from the queue has no socket to keep its file cache
    beside: it takes the first of a numbered series no running worker holds, and one that
    starts after another stopped takes the cache it left."""
    home = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    caches = tmp_path / "cache" / "sandbox"
    first = workers("--slots", "1", socket=False, env=home)
    workers("--slots", "1", socket=False, env=home)
    assert held(caches / "worker-queue-0.files" / "lock") and held(caches / "worker-queue-1.files" / "lock")
    client = QueueClient(redis.url, STREAM)
    file_id = client.put_file(b"put once\n")
    job = Job(cmd=["cat", "/work/in"], files=[InputFile("/work/in", Blob(file_id=file_id))])
    assert client.run(job, timeout=60).stdout == b"put once\n"
    fetched = [caches / f"worker-queue-{number}.files" / "files" / file_id.removeprefix("sha256:") for number in (0, 1)]
    assert any(path.exists() for path in fetched)
    assert first.stop() == 0, first.log_path.read_text()
    assert not held(caches / "worker-queue-0.files" / "lock")
    workers("--slots", "1", socket=False, env=home)
    assert held(caches / "worker-queue-0.files" / "lock") and not (caches / "worker-queue-2.files").exists()
    assert client.run(job, timeout=60).stdout == b"put once\n"


def test_a_judges_tests_run_on_every_worker_with_a_free_slot(redis, workers, connect, language_image):
    first, second = workers("--slots", "1"), workers("--slots", "1")
    client = QueueClient(redis.url, STREAM)
    slow = b"import time\na, b = map(int, input().split())\ntime.sleep(0.3)\nprint(a + b)\n"
    problem = read_package(PROBLEMS / "sum")
    problem["tests/1.in"] = {"file_id": client.put_file(problem["tests/1.in"])}  # type: ignore[index]
    report = client.judge(problem, "python3", slow, parallel=3, timeout=120)
    assert (report["verdict"], len(report["tests"])) == ("accepted", 3)
    # Its jobs (a compile and three tests) were queued for any worker: both ran some.
    ran = [stats(connect(worker))["submitted"] for worker in (first, second)]
    assert min(ran) >= 1 and sum(ran) == 4, ran
    stages = KEYS.stages
    assert redis.call(lambda r: r.xlen(stages.results)) == 4 and queue_is_empty(redis)


def entry_order(entry: Any) -> tuple[int, int]:
    milliseconds, sequence = entry.identifier.decode().split("-")
    return int(milliseconds), int(sequence)


def stats(connection: Any) -> dict[str, Any]:
    connection.send({"type": "stats"})
    return dict(connection.until(lambda message: message.get("type") == "stats"))


def test_another_job_under_a_known_id_is_a_conflict(redis):
    client = QueueClient(redis.url, STREAM)
    assert client.submit(sh("echo one"), job_id="same") == client.submit(sh("echo one"), job_id="same") == "same"
    with pytest.raises(QueueError) as caught:
        client.submit(sh("echo two"), job_id="same")
    assert (caught.value.code, caught.value.field) == ("id_conflict", "id")
    assert redis.call(lambda r: r.xlen(STREAM)) == 1  # queued once


def test_a_job_cancelled_before_any_worker_took_it_never_runs(redis, workers):
    client = QueueClient(redis.url, STREAM)
    job_id = client.submit(sh("echo ran"))
    assert (client.cancel(job_id), client.cancel("nobody")) == ("cancelled", "unknown")
    with pytest.raises(QueueError) as caught:
        client.result(job_id, timeout=10)
    assert caught.value.code == "cancelled"
    assert redis.call(lambda r: r.xlen(STREAM)) == 0
    workers("--slots", "1")
    assert client.run(sh("echo after"), timeout=60).stdout == b"after\n"
    assert [job for job, _ in outcomes(redis)] == [job_id, outcomes(redis)[1][0]] and len(outcomes(redis)) == 2
    assert client.cancel(job_id) == "finished"


def test_a_running_job_and_a_running_judge_are_stopped_when_cancelled(redis, workers, language_image):
    workers("--slots", "1")
    client = QueueClient(redis.url, STREAM)
    job_id = client.submit(sh("sleep 1000", wall_time="100s"))
    assert wait_until(lambda: len(pending(redis)) == 1, timeout=30)
    assert client.cancel(job_id) == "cancelling"
    with pytest.raises(QueueError) as caught:
        client.result(job_id, timeout=60)  # long before its wall time
    assert caught.value.code == "cancelled"
    slow = b"import time\na, b = map(int, input().split())\ntime.sleep(100)\nprint(a + b)\n"
    judge_id = client.submit_judge(read_package(PROBLEMS / "sum"), "python3", slow)
    stages = KEYS.stages
    # A test of it (after the compile: its outcome is in) held by the worker.
    assert wait_until(lambda: redis.call(lambda r: r.xlen(stages.results)) >= 1 and redis.call(
        lambda r: r.xpending(stages.stream, GROUP, "-", "+", 10)), timeout=60)
    assert client.cancel(judge_id) == "cancelling"
    with pytest.raises(QueueError) as caught:
        client.report(judge_id, timeout=60)
    assert caught.value.code == "cancelled"
    # Its test jobs were cancelled with it: nothing left to run, the slot free again.
    assert wait_until(lambda: redis.call(lambda r: r.xlen(stages.stream)) == 0, timeout=60)
    assert client.run(sh("echo free"), timeout=60).stdout == b"free\n"
    assert queue_is_empty(redis)


def test_an_http_door_forwarding_answers_what_it_cannot_follow(redis, workers, language_image):
    port = free_port()
    worker = workers("--slots", "1", "--http", f"127.0.0.1:{port}", "--http-forward")
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=120) as http:
        assert wait_until(lambda: http.get("/v1/health").status_code == 200, timeout=30)
        assert http.post("/v1/jobs?wait=true", json={"id": "a-job", "job": {"cmd": ["true"]}}).status_code == 200
        # A job's id names no judge: its events say so, and the door goes on serving.
        events = http.get("/v1/judge/a-job/events").text
        assert "event: error" in events and "unknown_id" in events, events
        # A judge waited for and cancelled meanwhile is answered as cancelled.
        package = {name: base64.b64encode(data).decode() for name, data in read_package(PROBLEMS / "sum").items()}
        slow = base64.b64encode(b"import time\ntime.sleep(100)\n").decode()
        request = {"id": "slow", "problem": package, "submission": {"lang": "python3", "source": slow}}
        with concurrent.futures.ThreadPoolExecutor(1) as pool, httpx.Client(base_url=url, timeout=120) as waiting:
            waited = pool.submit(waiting.post, "/v1/judge?wait=true", json=request)
            assert wait_until(lambda: http.get("/v1/judge/slow").status_code == 200, timeout=30)
            assert http.delete("/v1/judge/slow").status_code == 200
            answer = waited.result(timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "cancelled" and isinstance(answer.json()["tests"], list)
        assert http.get("/v1/health").status_code == 200
    assert worker.stop() == 0 and "Traceback" not in worker.log_path.read_text()


def test_an_http_door_forwards_jobs_judges_and_files_to_the_queue(redis, workers, language_image):
    port = free_port()
    worker = workers("--slots", "1", "--http", f"127.0.0.1:{port}", "--http-forward")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
        assert wait_until(lambda: http.get("/v1/health").status_code == 200, timeout=30)
        data = b"forwarded \x00 bytes"
        put = http.post("/v1/files", content=data)
        assert put.status_code == 201, put.text
        file_id = put.json()["file_id"]
        assert redis.call(lambda r: r.get(KEYS.blob(file_id))) == data  # kept for every worker
        assert http.get(f"/v1/files/{file_id}").json() == {"file_id": file_id, "size": len(data)}
        assert http.post("/v1/files?tree=true", content=b"x").status_code == 422  # trees stay a worker's own
        job = {"cmd": ["cat", "/work/in"], "files": [{"path": "/work/in", "file_id": file_id}]}
        done = http.post("/v1/jobs?wait=true", json={"id": "via-http", "job": job})
        assert done.status_code == 200, done.text
        assert done.json()["state"] == "finished" and base64.b64decode(done.json()["result"]["stdout"]) == data
        assert has_result(redis, "via-http")  # it went through the queue, not this worker's pool
        assert http.get("/v1/jobs/via-http").json() == done.json()
        conflict = http.post("/v1/jobs", json={"id": "via-http", "job": {"cmd": ["true"]}})
        assert (conflict.status_code, conflict.json()["code"]) == (409, "id_conflict")
        assert http.get("/v1/jobs/nobody").status_code == 404
        # A running job cancelled through the door.
        queued = http.post("/v1/jobs", json={"id": "long", "job": {"cmd": ["sleep", "1000"],
                                                                     "limits": {"wall_time": "100s"}}})
        assert (queued.status_code, queued.json()["state"]) == (202, "queued")
        assert wait_until(lambda: http.get("/v1/jobs/long").json()["state"] == "running", timeout=30)
        assert http.delete("/v1/jobs/long").json() == {"id": "long", "state": "cancelled"}
        assert wait_until(lambda: http.get("/v1/jobs/long").json()["state"] == "cancelled", timeout=30)
        # A judge, waited for, then read back with its tests and its events.
        package = {name: base64.b64encode(data).decode() for name, data in read_package(PROBLEMS / "sum").items()}
        source = base64.b64encode(b"a, b = map(int, input().split())\nprint(a + b)\n").decode()
        judged = http.post("/v1/judge?wait=true", json={"id": "sum-http", "problem": package, "parallel": 2,
                                                        "submission": {"lang": "python3", "source": source}})
        assert judged.status_code == 200, judged.text
        assert judged.json()["report"]["verdict"] == "accepted" and len(judged.json()["tests"]) == 3
        document = http.get("/v1/judge/sum-http").json()
        assert (document["state"], len(document["tests"])) == ("judged", 3)
        events = http.get("/v1/judge/sum-http/events").text
        assert events.count("event: test_finished") == 3 and events.rstrip().split("\n")[-2] == "event: judged"
    # SIGTERM stops the door and its queue client cleanly: exit 0, nothing raised.
    assert worker.stop() == 0, worker.log_path.read_text()
    assert "Traceback" not in worker.log_path.read_text()
