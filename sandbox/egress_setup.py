"""The job's side of an egress link, configured from inside its namespaces.

Run as: python -m sandbox.egress_setup INIT_PID [ALLOWED_CIDR...] (``egress.start``,
once slirp4netns has put its tap device into the job's network namespace).

A process of its own because entering a user namespace (setns) takes a single-threaded
process, and the supervisor may be a launcher with a thread per job. It reads the host's
own addresses first (still in the host's network namespace: they are the ones the job
must not reach through the stack), then enters the job's user namespace - the template
one, whose owner it is, so it holds every capability there - and network namespace,
and sets the tap device up with the job's address, the routes to the stack (to its
resolver for DNS only) and the unreachable routes of ``egress.route_plan``. Exits non-zero with the reason on stderr.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from sandbox.egress import JOB_ADDRESS, STACK_GATEWAY, TAP, route_plan
from sandbox.linux import syscalls as sc
from sandbox.rootfs import STACK_RESOLVER

RT_SCOPE_LINK = 253
# The resolver's route lives in a table of its own, looked up only for DNS (port 53,
# UDP and TCP): what the stack does with its resolver address on another port is up
# to its version (it stands for the host's nameserver, often a private or loopback
# address), so the job's namespace sends it nothing but DNS.
RESOLVER_TABLE = 100
RESOLVER_RULE_PRIORITY = 100
DNS_PORT = 53


def host_addresses() -> list[str]:
    with IPRoute() as routes:
        return [str(message.get("address")) for message in routes.get_addr()]


def enter(init_pid: int) -> None:
    """Into the sandbox's user namespace, then its network namespace."""
    user = os.open(f"/proc/{init_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    net = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(user, sc.CLONE_NEWUSER)
        sc.setns(net, sc.CLONE_NEWNET)
    finally:
        os.close(user)
        os.close(net)


def configure(addresses: list[str], allowed: list[str]) -> None:
    with IPRoute() as routes:
        found = routes.link_lookup(ifname=TAP)
        if not found:
            raise RuntimeError(f"no {TAP} in the job's network namespace")
        tap = found[0]
        routes.link("set", index=tap, state="up")
        routes.addr("add", index=tap, address=JOB_ADDRESS, prefixlen=32)
        routes.route("add", dst=f"{STACK_GATEWAY}/32", oif=tap, scope=RT_SCOPE_LINK)
        routes.route("add", dst="0.0.0.0/0", gateway=STACK_GATEWAY, oif=tap)
        routes.route("add", dst=f"{STACK_RESOLVER}/32", oif=tap, scope=RT_SCOPE_LINK, table=RESOLVER_TABLE)
        for protocol in (socket.IPPROTO_UDP, socket.IPPROTO_TCP):
            routes.rule("add", table=RESOLVER_TABLE, priority=RESOLVER_RULE_PRIORITY, dst=STACK_RESOLVER, dst_len=32,
                        ip_proto=protocol, dport_range=f"{DNS_PORT}:{DNS_PORT}")
        for route in route_plan(addresses, allowed):
            ipv6 = ":" in route.destination
            try:
                if route.kind == "unreachable":
                    routes.route("add", dst=route.destination, type="unreachable",
                                 family=socket.AF_INET6 if ipv6 else socket.AF_INET)
                else:
                    routes.route("add", dst=route.destination, gateway=STACK_GATEWAY, oif=tap)
            except NetlinkError as exc:
                if ipv6 and exc.code == errno.EAFNOSUPPORT:
                    continue  # a kernel without IPv6: nothing to reach there
                raise


def main(argv: list[str]) -> int:
    init_pid, allowed = int(argv[0]), argv[1:]
    try:
        addresses = host_addresses()
        enter(init_pid)
        configure(addresses, allowed)
    except (OSError, RuntimeError, NetlinkError) as exc:
        print(f"egress setup: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
