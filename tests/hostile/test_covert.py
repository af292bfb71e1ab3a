"""A covert channel between two concurrent jobs: file locks on an inode both can see.

The sender holds an exclusive flock on a host file that every job's root shares (a
read-only bind of /usr); the receiver, running at the same time in another sandbox,
probes it with LOCK_NB. A lock seen across sandboxes is one bit per probe between jobs
that must not talk (isolate fixed this class by giving each box its own inodes).

The default profile closes it by refusing the lock calls (flock and the locking fcntl
commands fail with ENOLCK; docs/profiles.md): the sender cannot take the lock, and the
receiver can never see one.
"""

from __future__ import annotations

from hostile.harness import Harness
from sandbox.models import Job, Limits

SHARED = "/usr/bin/env"  # any file of the host image; the same inode in every sandbox
SENDER = f"""
import errno, fcntl, sys, time
f = open("{SHARED}", "rb")
try:
    fcntl.flock(f, fcntl.LOCK_EX)
except OSError as exc:
    print("refused", errno.errorcode[exc.errno], flush=True)
else:
    print("locked", flush=True)
time.sleep(3)
"""
RECEIVER = f"""
import fcntl, time
f = open("{SHARED}", "rb")
deadline = time.monotonic() + 2.5
seen = "never blocked"
while time.monotonic() < deadline:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f, fcntl.LOCK_UN)
    except BlockingIOError:
        seen = "BLOCKED: the other job's lock is visible"
        break
    except OSError:
        pass  # refused outright: no lock state to read
    time.sleep(0.01)
print(seen)
"""


def test_flock_channel_between_concurrent_jobs(harness: Harness, record_property) -> None:
    record_property("hostile_case", "covert_flock_shared_inode")
    record_property("hostile_class", "leak")
    record_property("expected", "lock refused, never blocked")
    limits = Limits(wall_time="10s")
    client = harness.client
    sender = client.submit(Job(cmd=["python3", "-c", SENDER], limits=limits))
    receiver = client.submit(Job(cmd=["python3", "-c", RECEIVER], limits=limits))
    sent, received = client.wait(sender), client.wait(receiver)
    record_property("got", received.stdout.decode().strip())
    assert sent.stdout == b"refused ENOLCK\n", sent
    assert received.stdout == b"never blocked\n", received
