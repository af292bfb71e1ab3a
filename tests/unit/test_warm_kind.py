"""Which warm sandbox fits a job: the one test the launcher's supply and the worker's
direct hand-over both make (``WarmKind.fits``)."""

from __future__ import annotations

from sandbox.models import Limits
from sandbox.warm_kind import WarmKind

DEFAULTS = Limits()


def fits(kind: WarmKind, profile: str = "default", image: str = "host", limits: Limits = DEFAULTS,
         trace: bool = False) -> bool:
    return kind.fits(profile=profile, image=image, limits=limits, trace=trace)


def test_a_job_fits_the_kind_of_its_profile_and_image_only() -> None:
    kind = WarmKind("default")
    assert fits(kind)
    assert not fits(kind, profile="compile")
    assert not fits(kind, image="python:3.12")
    assert fits(WarmKind("compile", "python:3.12"), profile="compile", image="python:3.12")
    assert not fits(WarmKind("compile", "python:3.12"), profile="compile")


def test_a_traced_job_fits_no_warm_sandbox() -> None:
    assert not fits(WarmKind("default"), trace=True)


def test_a_cpu_quota_needs_a_cgroup_that_takes_one() -> None:
    quota = Limits(cpus=0.5)
    assert fits(WarmKind("default", cpu_quota=True), limits=quota)
    assert not fits(WarmKind("default", cpu_quota=False), limits=quota)
    assert fits(WarmKind("default", cpu_quota=False))  # no quota asked: any cgroup


def test_any_cgroup_limits_fit_both_holders_write_them() -> None:
    assert fits(WarmKind("default"), limits=Limits(memory="300M", pids=8, disk="1G", wall_time="1s"))
