"""Readiness by poll(2): fd numbers past select(2)'s FD_SETSIZE, as a launcher running
hundreds of jobs holds."""

from __future__ import annotations

import os
import resource
import time

import pytest

from sandbox.linux.readiness import readable, wait_readable

HIGH_FD = 1500  # past FD_SETSIZE (1024)


@pytest.fixture
def high_pipe():
    """A pipe whose read end is fd HIGH_FD: (read end, write end); the test may close the
    write end."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= HIGH_FD:
        pytest.fail(f"the hard open-files limit ({hard}) leaves no fd {HIGH_FD} to test with")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, HIGH_FD + 1), hard))
    read_end, write_end = os.pipe()
    high = os.dup2(read_end, HIGH_FD)
    os.close(read_end)
    try:
        yield high, write_end
    finally:
        os.close(high)
        try:
            os.close(write_end)
        except OSError:
            pass  # the test closed it
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_high_fd_is_readable_once_written(high_pipe):
    read_end, write_end = high_pipe
    assert not readable(read_end)
    os.write(write_end, b"x")
    assert readable(read_end) and readable(read_end, timeout_s=1.0)
    wait_readable([read_end])  # returns at once: there is data


def test_eof_counts_as_readable(high_pipe):
    read_end, write_end = high_pipe
    os.close(write_end)
    assert readable(read_end)


def test_a_wait_with_a_timeout_ends_with_nothing_readable(high_pipe):
    read_end, _ = high_pipe
    start = time.monotonic()
    wait_readable([read_end], 0.02)
    assert time.monotonic() - start >= 0.02 and not readable(read_end)
