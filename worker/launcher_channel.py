"""What the worker and its launchers agree on about the channel between them, apart from
the process that runs jobs: the trio side (slots, admission, the server) imports this,
never the launcher module, which loads the engine.

A job's result comes back in one frame of the channel, both output streams in it: a job
whose output limit would let its result outgrow that frame is refused before it runs
(by its launcher, which knows the limits its profile gives).
"""

from __future__ import annotations

import enum

from sandbox.errors import JobError
from sandbox.models import Limits


class Kind(str, enum.Enum):
    """The "type" of each message on the channel (frames of the public protocol's
    encoding: a str enum goes on the wire as its string)."""

    # worker -> launcher
    RUN = "run"  # a job ("job") or a group ("group") to run, or a job handed to an offered sandbox ("sandbox")
    DROP = "drop"  # an offered sandbox the worker could not use: retire it
    CANCEL = "cancel"  # kill the job of that id, if it still runs
    # launcher -> worker
    READY = "ready"  # started: modules imported, filters compiled
    OFFER = "offer"  # a warm sandbox for the worker to hand a job to itself (its fds attached)
    STARTED = "started"  # the job was handed to its sandbox
    OUTPUT = "output"  # a piece of the job's output, as it came
    RESULT = "result"  # the job's Result ("result"), or a group's, one per member ("results")
    REJECTED = "rejected"  # the job's content was found wrong here: invalid_job for its id


LAUNCHER_MAX_FRAME = 1 << 30  # the worker already enforced the public limit
# Both streams at the limit, and room for the rest of the result.
MAX_OUTPUT = (LAUNCHER_MAX_FRAME - (1 << 20)) // 2


def check_output_limit(limits: Limits) -> None:
    """Raise the job's error (``limits.output``) for an output limit no result frame carries."""
    if limits.output_bytes > MAX_OUTPUT:
        raise JobError(f"at most {MAX_OUTPUT >> 20}M through the worker (a result carries both streams)",
                       field="limits.output")
