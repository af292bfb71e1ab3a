"""What every forked stage of a sandbox needs: report to the supervisor, never unwind
into the parent's code, keep only its own fds and no stdio of the parent."""

from __future__ import annotations

import json
import os

from sandbox import rootfs
from sandbox.linux import syscalls as sc

# Not typing.TYPE_CHECKING: the zygote does without the typing module (see stages.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

MAX_MESSAGE = 3000


def send(fd: int, kind: str, **fields: Any) -> None:
    line = json.dumps({"kind": kind, **fields})
    if len(line) > MAX_MESSAGE:
        line = json.dumps({"kind": kind, **{k: str(v)[:1000] for k, v in fields.items()}})
    os.write(fd, line.encode() + b"\n")


def guard(report_fd: int, body: Any) -> NoReturn:
    """Run a forked stage; any exception becomes a setup_error message, never a return
    into the supervisor's code."""
    try:
        body()
    except BaseException as exc:
        try:
            send(report_fd, "setup_error", message=f"{type(exc).__name__}: {exc}")
        except BaseException:
            pass
    os._exit(125)


def stdio_to_null() -> None:
    null = os.open("/dev/null", os.O_RDWR)
    for stdio in (0, 1, 2):
        if null != stdio:
            os.dup2(null, stdio)
    if null > 2:
        os.close(null)


def close_fds_except(keep: set[int]) -> None:
    """Close every fd but ``keep`` (and stdio), with close_range over the gaps: no /proc
    needed (a sandbox init starts on the template root, whose /proc is not its own)."""
    start = 3
    for fd in sorted(fd for fd in keep if fd >= 3):
        if fd > start:
            sc.close_range(start, fd - 1)
        start = fd + 1
    sc.close_range(start)


def write_id_maps(uid: int, gid: int) -> None:
    with open("/proc/self/setgroups", "w") as handle:
        handle.write("deny")
    with open("/proc/self/uid_map", "w") as handle:
        handle.write(f"{rootfs.SANDBOX_UID} {uid} 1")
    with open("/proc/self/gid_map", "w") as handle:
        handle.write(f"{rootfs.SANDBOX_GID} {gid} 1")
