"""A network world of a test's own, for the egress tests: no packet leaves it.

Run as: python tests/networld.py PORT -- COMMAND... (the command: ``sandbox run ...``)

It makes a user and network namespace (the "host" the sandbox runs on, with a loopback
of its own) and, beside it, a second network namespace (the "world"), joined by a veth
pair: the host is 192.0.2.254/24 and routes 10.0.0.0/8 to the world, which holds
192.0.2.1/24 (a documentation address: "the outside") and 10.1.2.3/8 (a private one).
A TCP server on PORT at each of the world's addresses, and at the host's 127.0.0.1 and
192.0.2.254, answers a connection with the address it was reached at and closes; a DNS
server at 192.0.2.1:53 answers every A query with 192.0.2.1 (and every other query
with no answer), and the host's /etc/resolv.conf names it - in a mount namespace of
this world's own, so the stack forwards the job's lookups there. Then
it runs COMMAND in the host namespace (exec'd by a child: it has no capabilities there,
as an ordinary user on a real host) and exits with its status. The world's process
ends when this one does (its pipe's EOF).

Everything is configured with pyroute2, as the sandbox configures its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyroute2 import IPRoute

from sandbox.linux import syscalls as sc

HOST_ADDRESS = "192.0.2.254"
WORLD_ADDRESSES = ("192.0.2.1", "10.1.2.3")


def serve(address: str, port: int) -> None:
    """Answer every connection at ``address`` with the address, on a thread."""
    listener = socket.create_server((address, port))

    def loop() -> None:
        while True:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(f"reached {address}\n".encode())

    threading.Thread(target=loop, daemon=True).start()


def dns_answer(query: bytes) -> bytes:
    """The reply to one query: its question, and for an A query one answer, 192.0.2.1."""
    end = 12
    while query[end]:
        end += query[end] + 1
    question = query[12:end + 5]
    if question[-4:-2] != b"\x00\x01":  # not A
        return query[:2] + b"\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00" + question
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(WORLD_ADDRESSES[0])
    return query[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer


def serve_dns(address: str) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((address, 53))

    def loop() -> None:
        while True:
            query, client = server.recvfrom(512)
            server.sendto(dns_answer(query), client)

    threading.Thread(target=loop, daemon=True).start()


def own_namespaces() -> None:
    """A user, network and mount namespace; in the last, /etc/resolv.conf names the
    world's DNS server (the host's file is untouched)."""
    uid, gid = os.getuid(), os.getgid()
    sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNET | sc.CLONE_NEWNS)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    # A bind of a file made for it, gone from /tmp once mounted (a clone of a detached
    # tmpfs's file would be tidier, but kernels before 6.x refuse to clone from one).
    descriptor, path = tempfile.mkstemp(prefix="networld-resolv-")
    try:
        os.write(descriptor, f"nameserver {WORLD_ADDRESSES[0]}\n".encode())
        os.fchmod(descriptor, 0o644)
        sc.mount(path, "/etc/resolv.conf", "", sc.MS_BIND, "")
    finally:
        os.close(descriptor)
        os.unlink(path)


def up(routes: IPRoute, name: str) -> int:
    index: int = routes.link_lookup(ifname=name)[0]
    routes.link("set", index=index, state="up")
    return index


def world(port: int, ready_w: int, go_r: int) -> None:
    """The world's process: its own network namespace, the far end of the veth."""
    sc.unshare(sc.CLONE_NEWNET)
    os.write(ready_w, b"1")
    if os.read(go_r, 1) != b"1":  # the host put the veth's far end here
        os._exit(1)
    with IPRoute() as routes:
        up(routes, "lo")
        far = up(routes, "world0")
        routes.addr("add", index=far, address=WORLD_ADDRESSES[0], prefixlen=24)
        routes.addr("add", index=far, address=WORLD_ADDRESSES[1], prefixlen=8)
    for address in WORLD_ADDRESSES:
        serve(address, port)
    serve_dns(WORLD_ADDRESSES[0])
    os.write(ready_w, b"2")
    os.read(go_r, 1)  # EOF: the host is gone
    os._exit(0)


def main(argv: list[str]) -> int:
    port, command = int(argv[0]), argv[2:]
    own_namespaces()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        world(port, ready_w, go_r)
    os.close(ready_w)
    os.close(go_r)
    assert os.read(ready_r, 1) == b"1"
    with IPRoute() as routes:
        up(routes, "lo")
        routes.link("add", ifname="host0", kind="veth", peer={"ifname": "world0", "net_ns_pid": pid})
        near = up(routes, "host0")
        routes.addr("add", index=near, address=HOST_ADDRESS, prefixlen=24)
        routes.route("add", dst="10.0.0.0/8", gateway=WORLD_ADDRESSES[0])
    os.write(go_w, b"1")
    assert os.read(ready_r, 1) == b"2"
    for address in ("127.0.0.1", HOST_ADDRESS):
        serve(address, port)
    sys.stdout.flush()
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
