"""How many launchers a worker starts, and which slots share one (no launcher started)."""

from __future__ import annotations

import resource

import pytest

from sandbox.models import WarmSpec
from worker import pool as pool_module
from worker.pool import FDS_PER_SANDBOX, LAUNCHER_OWN_FDS, Pool, default_launchers


@pytest.fixture
def machine(monkeypatch):
    """A machine of 2 CPUs whose hard open-files limit lets a launcher hold 1,000 sandboxes."""
    hard = LAUNCHER_OWN_FDS + 1000 * FDS_PER_SANDBOX
    monkeypatch.setattr(pool_module.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(pool_module.resource, "getrlimit", lambda which: (1024, hard))


def test_one_launcher_per_cpu_until_their_open_files_run_short(machine):
    assert default_launchers(10) == 2
    assert default_launchers(2000) == 2
    assert default_launchers(2001) == 3  # the third takes what two cannot hold open
    assert default_launchers(10_000) == 10


def test_no_open_files_limit_means_one_launcher_per_cpu(monkeypatch):
    monkeypatch.setattr(pool_module.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(pool_module.resource, "getrlimit", lambda which: (1024, resource.RLIM_INFINITY))
    assert default_launchers(1_000_000) == 4


def test_slots_share_launchers_and_warm_sandboxes_are_shared_per_launcher(machine):
    pool = Pool(slots=5, max_queue=10, warm=[WarmSpec(3, "default")])
    assert len(pool.launchers) == 2
    assert [slot.launcher.index for slot in pool.slots] == [0, 1, 0, 1, 0]
    # Launcher 0 runs 3 of the 5 slots, launcher 1 runs 2: 3 * 3/5 and 2 * 3/5, rounded up.
    assert [launcher.warm[0].count for launcher in pool.launchers] == [2, 2]
    assert pool.warm_per_slot == 1
    assert pool.snapshot()["launchers"] == 2


def test_never_more_launchers_than_slots(machine):
    assert len(Pool(slots=1, max_queue=10, launchers=8).launchers) == 1
    assert len(Pool(slots=6, max_queue=10, launchers=3).launchers) == 3
