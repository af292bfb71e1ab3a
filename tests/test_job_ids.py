"""Which host ids a job runs as (sandbox/ids.py): with the subordinate range scripts/test
grants the test user, an id of its own, uid 1000 inside, owning what it is given;
without one, the worker's user, as before, and every result says so. The attacks two
running jobs can make on each other's per-user state are in tests/hostile/test_job_ids.py."""

from __future__ import annotations

import os

import sandbox.ids
from sandbox.models import Job, Status
from sandbox.runner import Runner

SHOW_IDS = "id -u; id -g; cat /proc/self/uid_map; ls -ln /work; echo more >> /work/given && cat /work/given"


def _outside(uid_map: str) -> int:
    inside, outside, count = (int(number) for number in uid_map.split())
    assert (inside, count) == (1000, 1)
    return outside


def test_a_job_is_uid_1000_of_an_id_of_its_own_and_owns_its_files(run):
    result = run(["sh", "-c", SHOW_IDS], files={"/work/given": b"given\n"})
    assert result.status is Status.OK, result
    uid, gid, uid_map, _total, listing, given, more = result.stdout.decode().splitlines()
    assert (uid, gid) == ("1000", "1000")
    # Outside the sandbox's own namespace: an id of the template's job range, not the
    # template's 1000 (the worker's user).
    assert _outside(uid_map) >= sandbox.ids.JOB_IDS_INSIDE
    assert listing.split()[2:4] == ["1000", "1000"] and listing.endswith(" given"), listing
    assert (given, more) == ("given", "more")
    assert result.warnings == []


def test_without_a_range_jobs_run_as_this_user_and_say_so(monkeypatch):
    monkeypatch.setattr(sandbox.ids, "ID_MAPPERS", ("/nonexistent/newuidmap", "/nonexistent/newgidmap"))
    runner = Runner()
    try:
        result = runner.run(Job(cmd=["sh", "-c", "id -u; cat /proc/self/uid_map"]))
    finally:
        runner.close()
    assert result.status is Status.OK, result
    uid, uid_map = result.stdout.decode().splitlines()
    assert uid == "1000" and _outside(uid_map) == os.getuid()
    assert any("ran as this user" in warning and "newuidmap" in warning for warning in result.warnings), result
