"""Egress: a job reaches the outside through the user-space stack, and nothing it must
not reach - private ranges, the host's own addresses, the host's loopback - unless
allowed; the stack lives exactly as long as the job.

Every address here is inside the test's own network world (tests/networld.py): the
sandbox runs in a user and network namespace the test made, whose "outside" is a second
namespace holding 192.0.2.1 (a documentation address) and 10.1.2.3 (a private one). In
that nested user namespace the user's subordinate ids are not mapped, so the sandbox
runs its jobs as the supervisor's user there (``ids.plan_ids`` says why), as it does on
a host without a range."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hoststate import own_processes
from test_cleanup import reaped_orphans, wait_until
from workerutil import SANDBOX_CLI

from sandbox.runner import Runner

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

NETWORLD = Path(__file__).resolve().parent / "networld.py"
PORT = 7777
# Connects to each ADDRESS:PORT and prints what answered, or why nothing did.
PROBE = f"""
import socket, sys
for address in sys.argv[1:]:
    try:
        with socket.create_connection((address, {PORT}), timeout=5) as connection:
            print(address, connection.recv(100).decode().strip())
    except OSError as exc:
        print(address, "failed", type(exc).__name__)
"""
GATEWAY = "10.0.2.2"  # the stack's gateway: the host itself, its loopback refused
RESOLVER = "10.0.2.3"  # the stack's resolver: DNS only


def in_world(*run_args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(NETWORLD), str(PORT), "--", *SANDBOX_CLI, "run", *run_args],
        capture_output=True, text=True, timeout=timeout,
    )


def probe(*flags: str, targets: tuple[str, ...]) -> dict[str, str]:
    done = in_world(*flags, "--", "python3", "-c", PROBE, *targets)
    assert done.returncode == 0, done.stderr
    answers = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert set(answers) == set(targets), done.stdout
    return answers


def stacks() -> list[int]:
    """Our slirp4netns processes: the stacks, not the child each forks for a moment to
    open its tap device in the job's namespaces."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if (os.stat(f"/proc/{entry}").st_uid == os.getuid() and _comm(entry) == "slirp4netns"
                        and _comm(_parent(entry)) != "slirp4netns"):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _comm(pid: str) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _parent(pid: str) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]


def test_an_egress_job_reaches_the_outside_and_nothing_private():
    answers = probe("--network", "egress", targets=("192.0.2.1", "10.1.2.3", "192.0.2.254", GATEWAY,
                                                     "169.254.169.254", RESOLVER))
    assert answers["192.0.2.1"] == "reached 192.0.2.1"
    assert answers["10.1.2.3"].startswith("failed")  # a private range
    assert answers["192.0.2.254"].startswith("failed")  # the host's own address
    assert answers[GATEWAY].startswith("failed")  # the host's loopback, through the gateway
    assert answers["169.254.169.254"].startswith("failed")  # link-local: metadata services
    assert answers[RESOLVER].startswith("failed")  # the stack's resolver, on another port than DNS's
    assert stacks() == []


def test_an_allowed_range_gets_through():
    answers = probe("--network", "egress", "--allow-net", "10.0.0.0/8", "--allow-net", "192.0.2.0/24",
                    targets=("10.1.2.3", "192.0.2.254"))
    assert answers["10.1.2.3"] == "reached 10.1.2.3"
    assert answers["192.0.2.254"].startswith("failed")  # the host's own, in an allowed range
    assert stacks() == []


def test_a_job_without_egress_reaches_nothing():
    answers = probe(targets=("192.0.2.1", "10.1.2.3", "192.0.2.254"))
    assert all(answer.startswith("failed") for answer in answers.values()), answers


def test_an_egress_job_resolves_names_through_the_stack():
    """The job's resolv.conf names the stack's resolver, which asks the host's (here the
    world's DNS server, which answers every name with 192.0.2.1)."""
    done = in_world("--network", "egress", "--", "sh", "-c", "cat /etc/resolv.conf; python3 -c \"$0\" outside.test",
                    PROBE)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "nameserver 10.0.2.3\noutside.test reached 192.0.2.1\n"


ROUTE_TO = """
import socket, sys
for port in sys.argv[1:]:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.0.2.3", int(port)))  # (a UDP connect only looks the route up)
        print(port, "routed")
    except OSError as exc:
        print(port, "unroutable", exc.errno)
"""


def test_the_stacks_resolver_is_routed_for_dns_only():
    done = in_world("--network", "egress", "--", "python3", "-c", ROUTE_TO, "53", "7777")
    assert done.stdout == "53 routed\n7777 unroutable 113\n", done.stderr  # EHOSTUNREACH


def test_a_job_without_egress_resolves_nothing():
    done = in_world("--", "python3", "-c", PROBE, "outside.test")
    assert done.stdout == "outside.test failed gaierror\n", done.stderr


def test_the_stack_ends_with_a_job_killed_for_its_wall_time():
    reach_then_sleep = PROBE + "\nsys.stdout.flush()\nimport time\ntime.sleep(100)\n"
    done = in_world("--network", "egress", "--wall-time", "2s", "--json", "--", "python3", "-c", reach_then_sleep,
                    "192.0.2.1")
    result = json.loads(done.stdout)
    assert result["status"] == "wall_time_limit", done.stdout + done.stderr
    assert result["stdout"] == "192.0.2.1 reached 192.0.2.1\n"  # the stack was there
    assert stacks() == []


@pytest.mark.cgroup
def test_the_stack_ends_with_a_killed_supervisor(slowdown):
    timeout = 10 * slowdown
    survivors = own_processes()
    world = subprocess.Popen(
        [sys.executable, str(NETWORLD), str(PORT), "--", *SANDBOX_CLI, "run", "--network", "egress", "--",
         "sleep", "100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: stacks() or world.poll() is not None, 3 * timeout)
        found = stacks()
        assert len(found) == 1, "no stack started"
        stack = found[0]
        supervisor = int(Path(f"/proc/{stack}/stat").read_text().rsplit(")", 1)[1].split()[1])
        pidfd = os.pidfd_open(stack)
        try:
            os.kill(supervisor, signal.SIGKILL)
            assert select.select([pidfd], [], [], timeout)[0], "the stack outlived its supervisor"
        finally:
            os.close(pidfd)
        world.wait(timeout=timeout)
        # The stack, the sandbox init and the rest were reparented to us (a subreaper):
        # reap them, as any subreaper must.
        assert wait_until(lambda: reaped_orphans(survivors), timeout)
    finally:
        if world.poll() is None:
            world.kill()
            world.wait()
    assert stacks() == []
    Runner().close()  # a new runner reaps the killed supervisor's job cgroup


# Inside the world: a worker with a warm sandbox; once it offers that sandbox for the
# direct hand-over, an egress job (which must not take it) and then a plain one (which
# does); then an egress job cancelled once its stack runs.
WORKER_DRIVER = f"""
import json, os, subprocess, sys, time
from pathlib import Path
from sandbox.models import Job
from worker.client import Client, WorkerError, accepting
PROBE = {PROBE!r}
def comm(pid):
    return Path(f"/proc/{{pid}}/comm").read_text().strip()
def stacks():  # (as the test's own, below: the stacks, not their short-lived children)
    found = []
    for entry in os.listdir("/proc"):
        try:
            parent = Path(f"/proc/{{entry}}/stat").read_text().rsplit(")", 1)[1].split()[1] if entry.isdigit() else ""
            if (entry.isdigit() and os.stat(f"/proc/{{entry}}").st_uid == os.getuid()
                    and comm(entry) == "slirp4netns" and comm(parent) != "slirp4netns"):
                found.append(entry)
        except OSError:
            pass
    return found
path, timeout = sys.argv[1], float(sys.argv[2])
worker = subprocess.Popen([sys.executable, "-m", "sandbox.cli", "serve", "--socket", path, "--slots", "1",
                           "--warm", "1"], stderr=subprocess.DEVNULL)
try:
    deadline = time.monotonic() + timeout
    while not accepting(path):
        assert worker.poll() is None and time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.01)
    with Client(path) as client:
        while client.stats()["offers_ready"] < 1:
            assert time.monotonic() < deadline, "no warm sandbox was offered"
            time.sleep(0.01)
        egress = client.run(Job(cmd=["python3", "-c", PROBE, "192.0.2.1"], network="egress", profile="ci"))
        after_egress = client.stats()["direct_handovers"]
        plain = client.run(Job(cmd=["python3", "-c", PROBE, "192.0.2.1"]))
        after_plain = client.stats()["direct_handovers"]
        sleeper = client.submit(Job(cmd=["sleep", "100"], network="egress", profile="ci"))
        while not stacks():
            assert time.monotonic() < deadline, "the cancelled job's stack never started"
            time.sleep(0.01)
        client.cancel(sleeper)
        try:  # (cancelled before it started - its stack comes first - there is no result)
            cancelled = client.wait(sleeper).status.value
        except WorkerError as exc:
            assert exc.code == "cancelled", exc
            cancelled = "cancelled"
        left = stacks()
    print(json.dumps({{"egress": egress.stdout.decode(), "plain": plain.stdout.decode(),
                      "handovers": [after_egress, after_plain], "cancelled": cancelled,
                      "stacks_after_cancel": left}}))
finally:
    worker.terminate()
    worker.wait()
"""


def test_an_egress_job_through_the_worker_starts_cold_reaches_out_and_is_cancelled_with_its_stack(tmp_path, slowdown):
    done = subprocess.run(
        [sys.executable, str(NETWORLD), str(PORT), "--", sys.executable, "-c", WORKER_DRIVER,
         str(tmp_path / "w.sock"), str(60 * slowdown)],
        capture_output=True, text=True, timeout=170,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["egress"] == "192.0.2.1 reached 192.0.2.1\n"
    assert report["plain"].startswith("192.0.2.1 failed")
    assert report["handovers"] == [0, 1]  # the offered warm sandbox went to the plain job only
    assert report["cancelled"] == "cancelled"
    assert report["stacks_after_cancel"] == []  # killed and reaped before the result went out
    assert stacks() == []
