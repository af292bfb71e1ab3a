"""The launcher's frames to the worker, from every thread that has something to say.

A launcher supervises many jobs at once, each on a thread of its own (worker/launcher.py),
and all of them talk to the worker over one channel: their frames must go out whole and
in order, however the threads interleave. ``JobStarted``, ``JobResult`` and offers always
go out, waiting for room if need be; streamed output only as far as the channel takes it
without waiting, so a worker slow to read can never stall the supervision of a job (its
limits, its kill) - not even behind another job's result waiting for room.

Two locks make that so: ``_lock`` guards the queue of frames and is never held across a send,
so adding to the queue never waits; ``_sending`` is held by the one thread writing the
queue to the socket. A thread that cannot take ``_sending`` at once leaves its bytes to the
writer, which only lets go of it once the queue is empty (checked under ``_lock``): no
byte is left behind unsent.
"""

from __future__ import annotations

import socket
import threading
from collections import deque

from worker.launcher_channel import JobOutput, ToWorker, encode

# Streamed output waiting for room in the channel; more is dropped (the offsets of the
# next chunks show the gap, the result has it all).
MAX_PENDING_OUTPUT = 1 << 20


class Outbox:
    """Frames to the worker, in order, from any thread. Never raises: once the channel is
    broken (the worker is gone) every frame is dropped, and the launcher's main thread,
    which reads the same channel, sees it closed and ends the jobs."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        # Whole frames (a result may be most of a GiB: sent from where it lies, never copied).
        self._frames: deque[bytes] = deque()
        self._head = 0  # bytes of the first frame already sent
        self._queued = 0  # bytes queued and not sent
        self._lock = threading.Lock()
        self._sending = threading.Lock()
        self._broken = False

    def send(self, message: ToWorker) -> None:
        """Send the message, waiting for room if need be."""
        frame = encode(message)
        with self._lock:
            self._frames.append(frame)
            self._queued += len(frame)
        self._sending.acquire()
        self._flush(wait=True)

    def send_fds(self, message: ToWorker, fds: list[int]) -> None:
        """``send``, the fds attached to the message's first byte (so everything queued
        before it goes out first)."""
        frame = encode(message)
        self._sending.acquire()
        self._flush(wait=True, release=False)
        try:
            sent = len(frame) if self._broken else socket.send_fds(self.channel, [frame], fds)
        except OSError:
            self._broken, sent = True, len(frame)
        if sent < len(frame):
            with self._lock:  # before what other threads queued meanwhile (the queue was empty)
                self._frames.appendleft(frame[sent:])
                self._queued += len(frame) - sent
        self._flush(wait=True)

    def offer(self, message: JobOutput) -> None:
        """Send a piece of streamed output if the channel has room for it now."""
        frame = encode(message)
        with self._lock:
            if self._queued >= MAX_PENDING_OUTPUT:
                return
            self._frames.append(frame)
            self._queued += len(frame)
        if self._sending.acquire(blocking=False):  # else the thread sending sends it too
            self._flush(wait=False)

    def _flush(self, wait: bool, release: bool = True) -> None:
        """Write the queue (the caller holds ``_sending``) until it is empty - or, without
        ``wait``, until the channel is full: the next frame's sender writes the rest -
        then let go of ``_sending``, unless told not to."""
        while True:
            with self._lock:
                if self._broken:
                    self._frames.clear()
                    self._head = self._queued = 0
                if not self._frames:
                    if release:
                        self._sending.release()
                    return
                first, head = self._frames[0], self._head
            try:
                sent = self.channel.send(memoryview(first)[head:], 0 if wait else socket.MSG_DONTWAIT)
            except BlockingIOError:
                if release:
                    self._sending.release()
                return
            except OSError:
                self._broken = True
                continue
            with self._lock:
                self._head += sent
                self._queued -= sent
                if self._head == len(first):
                    self._frames.popleft()
                    self._head = 0
