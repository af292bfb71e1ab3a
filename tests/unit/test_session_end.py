"""How a session tells why its init is gone (``sandbox/session.py``): the exit of a
child read without reaping it, which stays the supply's to do."""

from __future__ import annotations

import os
import signal

from sandbox.session import _exit_status


def _child(then: int) -> int:
    pid = os.fork()
    if pid == 0:
        if then < 0:
            os.kill(os.getpid(), -then)
        os._exit(then)
    return pid


def test_an_exit_status_is_told_and_the_child_left_unreaped():
    pid = _child(3)
    assert _exit_status(pid) == "exited with status 3"
    assert os.waitpid(pid, 0) == (pid, 3 << 8)  # still ours to reap


def test_a_killing_signal_is_named():
    pid = _child(-signal.SIGKILL)
    assert _exit_status(pid) == "was killed by signal 9 (Killed)"
    os.waitpid(pid, 0)

