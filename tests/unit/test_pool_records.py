"""A finished job's record as the pool keeps it for resubmits: its job and result as
bytes the cyclic collector does not walk, given back equal when asked for again (no
launcher started)."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from sandbox.models import Job, Limits, Result, Status, Usage
from worker.pool import JobState, Pool
from worker.protocol import ProtocolError, result_to_wire


class Client:
    """An owner that keeps the messages it is sent."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)


def finished(pool: Pool, job_id: str, job: Job, result: Result) -> Client:
    client = Client()
    record = pool.submit(job_id, job, client, client)
    pool._finish(record, JobState.FINISHED, result)
    return client


def test_a_finished_record_keeps_no_model_objects_and_gives_them_back_equal():
    pool = Pool(slots=1, max_queue=10)
    job = Job(cmd=["echo", "hi"], env={"A": "1"}, limits=Limits(cpu_time="2s"))
    result = Result(Status.OK, exit_code=0, stdout=b"hi\n", usage=Usage(cpu_ms=1.5, wall_ms=2.0),
                    warnings=["a warning"])
    first = finished(pool, "done", job, result)
    assert first.messages[-1]["result"] == result_to_wire(result)  # told before the record settles
    record = pool.records["done"]
    held = gc.get_referents(record)
    assert not any(isinstance(kept, Job | Limits | Result | Usage | list) for kept in held)
    assert record.job == job and record.job.limits.given == job.limits.given
    assert record.result == result


def test_a_resubmit_after_the_end_gets_the_result_and_another_job_under_the_id_is_refused():
    pool = Pool(slots=1, max_queue=10)
    job = Job(cmd=["echo", "hi"], limits=Limits(wall_time="3s"))
    result = Result(Status.OK, exit_code=0, stdout=b"hi\n")
    finished(pool, "done", job, result)
    late = Client()
    pool.submit("done", Job(cmd=["echo", "hi"], limits=Limits(wall_time="3s")), late, late)
    assert [m.get("event") for m in late.messages] == ["accepted", "finished"]
    assert late.messages[-1]["result"] == result_to_wire(result)
    with pytest.raises(ProtocolError) as refused:
        pool.submit("done", Job(cmd=["echo", "hi"]), late, late)  # the limit left to the profile: another job
    assert refused.value.code == "id_conflict"


def test_the_kept_results_hold_their_byte_budget_the_oldest_forgotten_first():
    pool = Pool(slots=1, max_queue=10, max_kept_bytes=3 << 20)
    output = b"o" * (1 << 20)  # a job that printed a MiB
    for number in range(5):
        finished(pool, f"job-{number}", Job(cmd=["yes"]), Result(Status.OK, exit_code=0, stdout=output))
    assert list(pool.records) == ["job-3", "job-4"]  # a third would take the kept bytes over 3 MiB
    assert pool.kept_bytes == sum(record.kept_bytes for record in pool.records.values())
    assert 2 << 20 < pool.kept_bytes <= 3 << 20
    too_big = finished(pool, "huge", Job(cmd=["yes"]), Result(Status.OK, exit_code=0, stdout=b"o" * (4 << 20)))
    assert too_big.messages[-1]["result"]["stdout"] == b"o" * (4 << 20)  # its submitter has it all the same
    assert list(pool.records) == [] and pool.kept_bytes == 0
