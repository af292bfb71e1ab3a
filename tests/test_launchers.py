"""Many jobs on one launcher: slots share a launcher process, which supervises their jobs
at once (a thread each). Real launchers, real sandboxes, driven as the pool drives them."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Awaitable, Callable

import trio
from test_cleanup import sleeping, wait_until
from workerutil import exited

from sandbox.models import Job, Limits, Result, Status
from worker.launcher import IDLE_THREADS, Jobs
from worker.launcher_channel import JobOutput
from worker.launcher_process import LauncherProcess
from worker.protocol import ProtocolError
from worker.slots import Slot

Outcome = Result | list[Result] | ProtocolError | None


class Lanes:
    """Slots over launchers, as ``Pool`` lays them out (slot i on launcher i mod n), with
    the jobs in flight counted: started and without a result yet."""

    def __init__(self, launchers: int, slots: int) -> None:
        self.launchers = [LauncherProcess(index, []) for index in range(launchers)]
        self.slots = [Slot(index, self.launchers[index % launchers]) for index in range(slots)]
        self.in_flight = 0
        self.most_in_flight = 0
        self.outcomes: dict[str, Outcome] = {}
        self.finished_order: list[str] = []
        self._changed = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        for launcher in self.launchers:
            await nursery.start(launcher.keep_alive)

    def run(self, nursery: trio.Nursery, slot: int, job_id: str, job: Job) -> None:
        async def started() -> None:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self._notify()

        async def run() -> None:
            outcome = await self.slots[slot].run(job_id, job, started)
            self.in_flight -= 1
            self.outcomes[job_id] = outcome
            self.finished_order.append(job_id)
            self._notify()

        nursery.start_soon(run)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (at most 60 s) for a state of the jobs, looking after each change."""
        with trio.fail_after(60):
            while not condition():
                self._changed = trio.Event()
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()


def lanes_test(launchers: int, slots: int, body: Callable[[Lanes, trio.Nursery], Awaitable[None]]) -> Lanes:
    async def main() -> Lanes:
        lanes = Lanes(launchers, slots)
        async with trio.open_nursery() as nursery:
            await lanes.start(nursery)
            async with trio.open_nursery() as jobs:
                await body(lanes, jobs)
            nursery.cancel_scope.cancel()
        return lanes

    return trio.run(main)


def sleeper(marker: str) -> Job:
    return Job(cmd=["sleep", marker], limits=Limits(wall_time="120s"))


def test_jobs_beyond_the_launcher_count_run_at_once():
    # Six jobs on one launcher: each is started (handed to its sandbox) while the
    # others still run - six in flight at once, six sleeping programs, one launcher.
    async def body(lanes: Lanes, jobs: trio.Nursery) -> None:
        for index in range(6):
            lanes.run(jobs, index, f"j{index}", sleeper("4101"))
        await lanes.until(lambda: lanes.in_flight == 6)
        assert wait_until(lambda: len(sleeping("4101")) == 6), sleeping("4101")
        for index, slot in enumerate(lanes.slots):
            await slot.cancel(f"j{index}")

    lanes = lanes_test(1, 6, body)
    assert lanes.most_in_flight == 6
    assert all(isinstance(r, Result) and r.status is Status.CANCELLED for r in lanes.outcomes.values()), lanes.outcomes
    assert wait_until(lambda: not sleeping("4101"))


def test_a_limit_kill_leaves_the_launchers_other_jobs_alone():
    # On one launcher: a job killed at its wall limit and one killed at its memory limit
    # end while a third runs on, which then finishes as it would alone.
    async def body(lanes: Lanes, jobs: trio.Nursery) -> None:
        lanes.run(jobs, 0, "survivor", Job(cmd=["sh", "-c", "sleep 4; echo survived"]))
        await lanes.until(lambda: lanes.in_flight == 1)
        lanes.run(jobs, 1, "wall", Job(cmd=["sleep", "4102"], limits=Limits(wall_time="300ms")))
        lanes.run(jobs, 2, "memory", Job(cmd=["python3", "-c", "b = bytearray(512 << 20)"],
                                         limits=Limits(memory="64M")))

    lanes = lanes_test(1, 3, body)
    wall, memory, survivor = (lanes.outcomes[name] for name in ("wall", "memory", "survivor"))
    assert isinstance(wall, Result) and wall.status is Status.WALL_TIME_LIMIT, wall
    assert isinstance(memory, Result) and memory.status is Status.MEMORY_LIMIT, memory
    assert isinstance(survivor, Result) and (survivor.status, survivor.stdout) == (Status.OK, b"survived\n"), survivor
    assert lanes.finished_order[-1] == "survivor" and survivor.usage.wall_ms >= 4000
    assert lanes.launchers[0].restarts == 0


def test_a_killed_launcher_fails_only_its_own_jobs_and_is_replaced():
    # Two launchers, two jobs each: SIGKILL one launcher. Its jobs fail (internal_error)
    # and their sandboxes go with it; the other launcher's jobs run on, untouched; the
    # killed one is replaced and runs the next job of its slots.
    killed: list[int] = []

    async def body(lanes: Lanes, jobs: trio.Nursery) -> None:
        for index in range(4):  # slots 0, 2 on launcher 0; 1, 3 on launcher 1
            lanes.run(jobs, index, f"j{index}", sleeper("4103" if index % 2 == 0 else "4104"))
        await lanes.until(lambda: lanes.in_flight == 4)
        victim = lanes.launchers[0]
        assert victim.process is not None
        killed.append(victim.process.pid)
        victim.process.send_signal(signal.SIGKILL)
        await lanes.until(lambda: {"j0", "j2"} <= lanes.outcomes.keys())
        assert "j1" not in lanes.outcomes and "j3" not in lanes.outcomes
        assert wait_until(lambda: not sleeping("4103")) and len(sleeping("4104")) == 2
        await victim.ready.wait()
        after = await lanes.slots[0].run("after", Job(cmd=["echo", "replaced"]), _nothing)
        assert isinstance(after, Result) and after.stdout == b"replaced\n", after
        for index in (1, 3):
            await lanes.slots[index].cancel(f"j{index}")

    lanes = lanes_test(2, 4, body)
    for name in ("j0", "j2"):
        outcome = lanes.outcomes[name]
        assert isinstance(outcome, Result) and outcome.status is Status.INTERNAL_ERROR, outcome
        assert "died" in str(outcome.error)
    for name in ("j1", "j3"):
        outcome = lanes.outcomes[name]
        assert isinstance(outcome, Result) and outcome.status is Status.CANCELLED, outcome
    assert [launcher.restarts for launcher in lanes.launchers] == [1, 0]
    assert exited(killed[0])
    assert wait_until(lambda: not sleeping("4104"))


def test_a_cancel_ends_only_its_job():
    async def body(lanes: Lanes, jobs: trio.Nursery) -> None:
        for index in range(3):
            lanes.run(jobs, index, f"j{index}", sleeper("4105"))
        await lanes.until(lambda: lanes.in_flight == 3)
        await lanes.slots[1].cancel("j1")
        await lanes.until(lambda: "j1" in lanes.outcomes)
        assert lanes.in_flight == 2 and wait_until(lambda: len(sleeping("4105")) == 2), sleeping("4105")
        for index in (0, 2):
            await lanes.slots[index].cancel(f"j{index}")

    lanes = lanes_test(1, 3, body)
    assert lanes.finished_order[0] == "j1"
    assert all(isinstance(r, Result) and r.status is Status.CANCELLED for r in lanes.outcomes.values()), lanes.outcomes
    assert lanes.launchers[0].restarts == 0
    assert wait_until(lambda: not sleeping("4105"))


async def _nothing() -> None:
    """A job's "started" that nobody waits for."""


def test_streamed_output_of_jobs_at_once_stays_with_its_job():
    # Four jobs on one launcher stream output at once through its one channel: each
    # job's pieces reach its own slot, whole and in order.
    pieces: dict[str, bytearray] = {}

    async def body(lanes: Lanes, jobs: trio.Nursery) -> None:
        async def run(index: int) -> None:
            job_id = f"s{index}"
            pieces[job_id] = bytearray()

            def output(piece: JobOutput) -> None:
                assert piece.offset == len(pieces[job_id])
                pieces[job_id] += piece.data

            script = f"i=0; while [ $i -lt 2000 ]; do echo {job_id}-$i; i=$((i+1)); done"
            lanes.outcomes[job_id] = await lanes.slots[index].run(job_id, Job(cmd=["sh", "-c", script]), _nothing,
                                                                  output)

        for index in range(4):
            jobs.start_soon(run, index)

    lanes = lanes_test(1, 4, body)
    for index in range(4):
        job_id = f"s{index}"
        expected = "".join(f"{job_id}-{i}\n" for i in range(2000)).encode()
        outcome = lanes.outcomes[job_id]
        assert isinstance(outcome, Result) and outcome.stdout == expected
        assert bytes(pieces[job_id]) == expected



def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_job_threads_wait_for_the_next_job_and_a_burst_leaves_few_behind():
    # Twelve jobs at once on one launcher take twelve threads; once they end, only
    # IDLE_THREADS of them stay, and the next job runs on one of those (no new thread).
    burst = IDLE_THREADS + 4
    counts: dict[str, int] = {}

    async def body(lanes: Lanes, jobs: trio.Nursery) -> None:
        process = lanes.launchers[0].process
        assert process is not None
        first = await lanes.slots[0].run("first", Job(cmd=["true"]), _nothing)
        assert isinstance(first, Result) and first.status is Status.OK, first
        counts["after one job"] = _threads(process.pid)  # the launcher's own threads and one waiting
        for index in range(burst):
            lanes.run(jobs, index, f"j{index}", sleeper("4106"))
        await lanes.until(lambda: lanes.in_flight == burst)
        counts["during the burst"] = _threads(process.pid)
        for index, slot in enumerate(lanes.slots):
            await slot.cancel(f"j{index}")
        await lanes.until(lambda: lanes.in_flight == 0)
        waiting = counts["after one job"] - 1 + IDLE_THREADS
        assert wait_until(lambda: _threads(process.pid) == waiting), (_threads(process.pid), counts)
        last = await lanes.slots[0].run("last", Job(cmd=["true"]), _nothing)
        assert isinstance(last, Result) and last.status is Status.OK, last
        counts["after the next job"] = _threads(process.pid)

    lanes_test(1, burst, body)
    assert counts["during the burst"] >= counts["after one job"] - 1 + burst, counts
    assert counts["after the next job"] == counts["after one job"] - 1 + IDLE_THREADS, counts
    assert wait_until(lambda: not sleeping("4106"))


def test_a_job_running_alone_is_young_for_a_while_and_two_are_never():
    # The launcher holds its idle work back for a job just started alone (Jobs.young_for):
    # for at most the age asked, never while two jobs run, never once the job ended.
    jobs = Jobs()
    release = threading.Event()
    ended = threading.Semaphore(0)

    def work(cancel_fd: int) -> None:
        release.wait(30)
        ended.release()

    assert jobs.young_for(10.0) == 0.0
    jobs.start("a", work, cancelled=False)
    assert 9.0 < jobs.young_for(10.0) <= 10.0
    assert jobs.young_for(0.0) == 0.0
    jobs.start("b", work, cancelled=False)
    assert jobs.young_for(10.0) == 0.0
    release.set()
    assert ended.acquire(timeout=30) and ended.acquire(timeout=30)
    assert wait_until(lambda: jobs.young_for(10.0) == 0.0)
    jobs.end_all()
