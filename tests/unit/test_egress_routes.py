"""The routes an egress job's namespace gets: what is blocked, what an allowed range
lets through (longest prefix wins in the kernel, so an allowed range inside a blocked
one needs a route of its own)."""

from __future__ import annotations

import pytest

from sandbox.egress import Route, route_plan
from sandbox.errors import JobError
from sandbox.models import Job, Limits
from sandbox.warm_kind import WarmKind


def unreachable(routes: list[Route]) -> set[str]:
    return {route.destination for route in routes if route.kind == "unreachable"}


def test_private_ranges_and_the_hosts_addresses_are_unreachable_by_default():
    routes = route_plan(["127.0.0.1", "192.0.2.2", "::1", "fd00::2"], [])
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
            "fc00::/7", "fe80::/10", "192.0.2.2/32", "fd00::2/128"} <= unreachable(routes)
    assert "127.0.0.1/32" not in unreachable(routes)  # 127/8 is the job's own lo
    assert all(route.kind == "unreachable" for route in routes)


def test_an_allowed_range_covering_a_blocked_one_removes_it():
    routes = route_plan([], ["10.0.0.0/8"])
    assert "10.0.0.0/8" not in unreachable(routes)
    assert Route("10.0.0.0/8", "gateway") not in routes  # the default route carries it


def test_an_allowed_range_inside_a_blocked_one_is_routed_through_the_stack():
    routes = route_plan([], ["10.1.0.0/16"])
    assert "10.0.0.0/8" in unreachable(routes)
    assert Route("10.1.0.0/16", "gateway") in routes


def test_a_hosts_own_address_is_let_through_only_when_allowed_by_itself():
    assert "10.1.2.3/32" in unreachable(route_plan(["10.1.2.3"], ["10.0.0.0/8"]))
    assert "10.1.2.3/32" not in unreachable(route_plan(["10.1.2.3"], ["10.1.2.3/32"]))


def test_allowed_ranges_are_checked_and_written_canonically():
    assert Job(cmd=["true"], network="egress", allow_net=["10.1.2.3/8"]).allow_net == ["10.0.0.0/8"]
    with pytest.raises(JobError, match="IPv4 only"):
        Job(cmd=["true"], network="egress", allow_net=["fc00::/7"])
    with pytest.raises(JobError, match="not an address range"):
        Job(cmd=["true"], network="egress", allow_net=["ten"])
    with pytest.raises(JobError, match="network must be"):
        Job(cmd=["true"], network="host")


def test_an_egress_job_never_fits_a_warm_sandbox():
    kind = WarmKind("ci")
    assert kind.fits(profile="ci", image="host", limits=Limits())
    assert not kind.fits(profile="ci", image="host", limits=Limits(), egress=True)
