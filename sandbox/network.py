"""The job's network: a fresh network namespace with only ``lo`` up.

Nothing outside is reachable (no interface leads out) while programs that talk to
themselves over 127.0.0.1 still work. pyroute2 is imported at module load so that the
supervisor pays for it once, before forking, not every sandbox.
"""

from __future__ import annotations

from pyroute2 import IPRoute


def bring_up_loopback() -> None:
    """Set ``lo`` up in the current network namespace (needs CAP_NET_ADMIN there)."""
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname="lo")
        ipr.link("set", index=index, state="up")
