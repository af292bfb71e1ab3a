"""Egress for the jobs that ask for it: a user-space network stack outside the job's
network namespace, and routes inside it that keep the host and private ranges out.

A job's network namespace has ``lo`` only. An egress job's gets a tap device whose
other end is slirp4netns, an unprivileged process of the supervisor's user on the host's
network: it turns the job's packets into ordinary sockets of its own (connect, sendto),
so the job reaches what the supervisor's user could reach, and nothing is routed or
bridged on the host. What the job must not reach through it is cut off in the job's
own namespace, where the job cannot change it (it holds no CAP_NET_ADMIN there): an
``unreachable`` route for each blocked range and each of the host's own addresses
(``route_plan``), and slirp4netns's ``--disable-host-loopback`` for the gateway address,
which would otherwise be the host's 127.0.0.1.

The stack lives exactly as long as the job: ``Egress.stop`` kills and reaps it when
the job ends, however it ends, and its ``--exit-fd`` is a pipe whose only write end the
supervisor holds, so a supervisor that is killed takes the stack with it (the kernel
closes the pipe; slirp4netns exits on that).

The addresses inside the namespace are configured with pyroute2 by a short-lived helper
(``egress_setup.py``, a fresh interpreter): entering the job's user namespace takes a
single-threaded process, and a launcher has a thread per job.
"""

from __future__ import annotations

import ipaddress
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sandbox.errors import SetupError

TAP = "tap0"
MTU = 65520  # slirp4netns's largest: fewer, larger packets through the user-space stack
# slirp4netns's built-in network (its gateway is the host, its resolver forwards to the
# host's): the job's address is alone on its link (/32), so no other address of
# 10.0.2.0/24 is on-link - each goes to the unreachable route of 10.0.0.0/8.
STACK_GATEWAY = "10.0.2.2"
JOB_ADDRESS = "10.0.2.100"
# Unreachable unless allowed: private and shared address space, link-local (cloud
# metadata services live there), "this network"; IPv6's unique-local and link-local.
# The job's own 127.0.0.0/8 is its own lo; the host's loopback is the gateway address,
# which --disable-host-loopback refuses.
BLOCKED = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16",
    "fc00::/7", "fe80::/10",
)
READY_TIMEOUT_S = 10.0
SETUP_TIMEOUT_S = 30.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Route:
    """A route the job's namespace gets: ``unreachable``, or ``gateway`` (through the stack)."""

    destination: str
    kind: str


def route_plan(host_addresses: Iterable[str], allowed: Sequence[str]) -> list[Route]:
    """The routes that keep the blocked ranges and the host's own addresses unreachable,
    less what ``allowed`` lets through: a blocked range an allowed one covers is left
    out, and an allowed range inside one still blocked is routed through the stack (the
    longer prefix wins). A host's own address is let through only when allowed by itself
    (its /32): allowing the network a host sits in (an internal mirror's 10.0.0.0/8)
    must not open the host's own services. The host's loopback addresses need no route:
    127.0.0.0/8 is the job's own."""
    permitted = [ipaddress.ip_network(text) for text in allowed]
    routes: list[Route] = []
    kept: list[Network] = []

    def block(network: Network) -> None:
        if network not in kept:
            kept.append(network)
            routes.append(Route(str(network), "unreachable"))

    for text in BLOCKED:
        network = ipaddress.ip_network(text)
        if not any(_within(network, p) for p in permitted):
            block(network)
    for address in host_addresses:
        ip = ipaddress.ip_address(address)
        if not ip.is_loopback and ipaddress.ip_network(ip) not in permitted:
            block(ipaddress.ip_network(ip))
    for network in dict.fromkeys(permitted):
        if any(_within(network, k) for k in kept):
            routes.append(Route(str(network), "gateway"))
    return routes


def _within(inner: Network, outer: Network) -> bool:
    return inner.version == outer.version and inner.network_address in outer and inner.prefixlen >= outer.prefixlen


def stack_binary() -> str | None:
    return shutil.which("slirp4netns", path="/usr/bin:/bin:/usr/sbin:/sbin")


@dataclass
class Egress:
    """The running stack of one job."""

    process: subprocess.Popen[bytes]
    exit_w: int  # its --exit-fd's write end: closed, the stack exits

    def stop(self) -> None:
        """End the stack and reap it (the job is over, or never started)."""
        if self.exit_w >= 0:
            os.close(self.exit_w)
            self.exit_w = -1
        self.process.kill()
        self.process.wait()


def start(init_pid: int, allowed: Sequence[str]) -> Egress:
    """Give the sandbox whose init is ``init_pid`` (our unreaped child: its /proc entry
    is its) egress: start the stack on its namespaces, then configure them. Raises
    SetupError if either fails; nothing is left running then."""
    binary = stack_binary()
    if binary is None:
        raise SetupError("egress needs slirp4netns (Debian package slirp4netns)")
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
    log = os.memfd_create("slirp4netns-log", os.MFD_CLOEXEC)
    namespaces = f"/proc/{init_pid}/ns"
    try:
        process = subprocess.Popen(
            [binary, f"--userns-path={namespaces}/user", "--netns-type=path", "--disable-host-loopback",
             f"--mtu={MTU}", "--enable-seccomp", f"--ready-fd={ready_w}", f"--exit-fd={exit_r}",
             f"{namespaces}/net", TAP],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(ready_w, exit_r),
        )
    except OSError as exc:
        for fd in (ready_r, ready_w, exit_r, exit_w, log):
            os.close(fd)
        raise SetupError(f"cannot start slirp4netns: {exc}") from exc
    os.close(ready_w)
    os.close(exit_r)
    egress = Egress(process, exit_w)
    try:
        if not _wait_ready(ready_r):
            raise SetupError(f"slirp4netns did not start: {_tail(log)}")
        _configure(init_pid, allowed)
    except BaseException:
        egress.stop()
        raise
    finally:
        os.close(ready_r)
        os.close(log)
    return egress


def _wait_ready(ready_r: int) -> bool:
    """Whether the stack wrote its ready byte (its tap device is in the namespace)
    within READY_TIMEOUT_S; False when it exited first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    poller = select.poll()
    poller.register(ready_r, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        if poller.poll(left * 1000):
            return os.read(ready_r, 1) == b"1"
    return False


def _configure(init_pid: int, allowed: Sequence[str]) -> None:
    """The job's side of the link and its routes, set by ``egress_setup.py`` in a
    process of its own (it enters the job's user and network namespaces)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sandbox.egress_setup", str(init_pid), *allowed],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=SETUP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise SetupError("configuring the job's network took too long") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise SetupError(f"configuring the job's network failed: {message[0]}")


def _tail(log: int) -> str:
    data = os.pread(log, 4096, max(0, os.fstat(log).st_size - 4096))
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message"

