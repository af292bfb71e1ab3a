"""The job's network: a fresh network namespace with only ``lo`` up.

Nothing outside is reachable (no interface leads out) while programs that talk to
themselves over 127.0.0.1 still work. pyroute2 builds the RTM_NEWLINK request and
decodes the kernel's answer; the request is encoded once, at import, in the supervisor,
and the sandbox only sends those bytes on a plain netlink socket - its IPRoute object
would cost the sandbox several milliseconds per job for one message.
"""

from __future__ import annotations

import os
import socket

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, nlmsgerr
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

LOOPBACK_INDEX = 1  # lo is always the first interface of a new network namespace


def _encode_link_up(index: int) -> bytes:
    message = ifinfmsg()
    message["index"] = index
    message["flags"] = IFF_UP
    message["change"] = IFF_UP
    message["header"]["type"] = RTM_NEWLINK
    message["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    message["header"]["sequence_number"] = 1
    message.encode()
    return bytes(message.data)


def _decode_ack(reply: bytes) -> int:
    """The (negative) errno of a netlink ack; 0 is success."""
    ack = nlmsgerr(reply)
    ack.decode()
    return int(ack["error"])


_LINK_UP = _encode_link_up(LOOPBACK_INDEX)

def _warm_up_parser() -> None:
    """Decode one ack here so pyroute2's parser is initialised before any fork."""
    ack = nlmsgerr()
    ack["error"] = 0
    ack.encode()
    _decode_ack(bytes(ack.data))


_warm_up_parser()


def bring_up_loopback() -> None:
    """Set ``lo`` up in the current network namespace (needs CAP_NET_ADMIN there)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as netlink:
        netlink.sendto(_LINK_UP, (0, 0))
        reply = netlink.recv(4096)
    error = _decode_ack(reply)
    if error:
        raise OSError(-error, f"bringing lo up: {os.strerror(-error)}")

