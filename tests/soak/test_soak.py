"""Soak: thousands of mixed jobs through one worker at full concurrency. Afterwards no
leaked processes, cgroups, mounts, temp files or fds (the autouse leak check, plus the
worker's and launchers' fd counts), every job got its verdict, and the worker's RSS grew
at most 5 % from the measuring point to the last job.

CI runs SANDBOX_SOAK_JOBS (default 1000) jobs, measuring RSS from a third of the way in;
the full run is ``SANDBOX_SOAK_JOBS=100000 scripts/test tests/soak`` (RSS from the
10,000th job). The worker keeps finished results for 2 s (``--retention``) so its record
store reaches its steady state within the short run. The test's timeout grows with the
number of jobs (SECONDS_PER_JOB): the project's 120 s is for runs the size of CI's.
"""

from __future__ import annotations

import os

import pytest
from test_cleanup import wait_until

from soak.mix import job_mix
from soak.soakrun import soak, worker_fds

JOBS = int(os.environ.get("SANDBOX_SOAK_JOBS", "1000"))
RSS_FROM = 10_000 if JOBS > 20_000 else JOBS // 3
CONCURRENCY = 8  # in flight on one connection; the worker runs --slots of them at once
WARM_UP_ROUNDS = 10  # times through the mix before the fds are counted
# Ten jobs a second at worst (this 2-CPU machine runs about fifty under other load).
SECONDS_PER_JOB = 0.1


@pytest.mark.timeout(max(120, int(JOBS * SECONDS_PER_JOB)))
def test_soak_mixed_jobs(start_worker, programs, record_property):
    """The fd check is about what a leak is: fds that grow with the number of jobs.

    The counts (the worker's, each launcher's) are taken after a warm-up of every kind
    of job, ten times over, so that whatever a process opens once - on its first job of
    a kind, lazily - is already open, and whatever it closes once (something of its
    start-up) is already closed; then they must not grow over the soak's JOBS jobs. A
    leak of one fd in every job grows them by JOBS, one in the jobs of a single kind by
    JOBS / len(mix) (100 in CI): both fail. A count lower at the end is not a leak and
    passes; one caught high after the warm-up (a sandbox still being tidied) only makes
    the check laxer by that much, never fail by itself.
    """
    worker = start_worker("--slots", str(os.cpu_count() or 2), "--retention", "2")
    mix = job_mix(programs)
    warm_up = soak(worker, mix, WARM_UP_ROUNDS * len(mix), CONCURRENCY, set())
    assert not warm_up.wrong, warm_up.wrong[:10]
    settled = worker_fds(worker)
    report = soak(worker, mix, JOBS, CONCURRENCY, {RSS_FROM})
    growth = report.rss_growth(RSS_FROM)
    summary = (f"{report.jobs} jobs in {report.seconds:.1f} s = {report.rate:.1f} jobs/s; worker RSS "
               f"{report.rss_at[RSS_FROM] >> 10} KiB at job {RSS_FROM} -> {report.rss_at[report.jobs] >> 10} KiB "
               f"({growth:+.1%}); {dict(report.by_status)}")
    print(summary)
    record_property("soak", summary)
    assert not report.wrong, report.wrong[:10]
    assert report.jobs == JOBS
    assert growth <= 0.05, summary

    def no_growth() -> bool:
        now = worker_fds(worker)
        return len(now) == len(settled) and all(after <= before for before, after in zip(settled, now, strict=True))

    assert wait_until(no_growth), f"fds after warm-up {settled}, after {JOBS} more jobs {worker_fds(worker)}"
