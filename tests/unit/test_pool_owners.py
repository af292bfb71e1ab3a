"""What a client's going away does to the pool's records (no launcher started): its
unfinished jobs are cancelled and its subscriptions forgotten, through an index of what
each client subscribed to, which forgets what the pool forgets."""

from __future__ import annotations

import weakref
from typing import Any

import trio

from sandbox.models import Job
from worker.pool import JobState, Pool


class Client:
    """An owner that keeps the events it is sent."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, message: dict[str, Any]) -> None:
        self.events.append((message["id"], message["event"]))


def job(text: str) -> Job:
    return Job(cmd=["echo", text])


def test_going_away_cancels_the_clients_unfinished_jobs_and_only_those():
    pool = Pool(slots=1, max_queue=100)
    leaving, staying = Client(), Client()
    pool.submit("mine", job("a"), leaving, leaving)
    pool.submit("theirs", job("b"), staying, staying)
    pool.submit("mine", job("a"), staying, staying)  # the same id again: a subscription to it
    pool.submit("theirs", job("b"), leaving, leaving)
    trio.run(pool.drop_owner, leaving)
    assert pool.records["mine"].state is JobState.CANCELLED
    assert ("mine", "cancelled") in staying.events  # told, as a subscriber of the job
    assert pool.records["theirs"].state is JobState.QUEUED
    assert list(pool.records["theirs"].subscribers) == [staying]
    assert ("theirs", "cancelled") not in leaving.events


def test_a_client_that_stays_keeps_no_trace_of_forgotten_records():
    pool = Pool(slots=1, max_queue=100, retention_s=0.0)
    client = Client()
    for number in range(50):
        pool.submit(f"job-{number}", job(str(number)), client, client)
        trio.run(pool.cancel, f"job-{number}")  # finished: kept for no time at all
    last = pool.submit("last", job("last"), client, client)
    assert list(pool.records) == ["last"]
    assert pool._subscribed == {client: {"last"}}
    trio.run(pool.drop_owner, client)
    assert last.state is JobState.CANCELLED
    assert pool.records == {} and pool._subscribed == {}


def test_a_client_gone_is_not_kept_by_the_records_kept_for_resubmits():
    pool = Pool(slots=1, max_queue=100)
    leaving = Client()
    pool.submit("done", job("a"), leaving, leaving)
    trio.run(pool.cancel, "done")  # finished: kept for resubmits
    pool.submit("queued", job("b"), leaving, leaving)
    gone = weakref.ref(leaving)
    trio.run(pool.drop_owner, leaving)
    del leaving
    assert gone() is None  # neither record holds the connection any more
    assert pool.records["done"].owner is None and pool.records["queued"].state is JobState.CANCELLED
