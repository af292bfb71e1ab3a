"""What the worker and its launchers agree on about the channel between them, apart from
the process that runs jobs: the trio side (slots, admission, the server) imports this,
never the launcher module, which loads the engine.

A job's result comes back in one frame of the channel, both output streams in it: a job
whose output limit would let its result outgrow that frame is refused before it runs
(by its launcher, which knows the limits its profile gives).
"""

from __future__ import annotations

from sandbox.errors import JobError
from sandbox.models import Limits

LAUNCHER_MAX_FRAME = 1 << 30  # the worker already enforced the public limit
# Both streams at the limit, and room for the rest of the result.
MAX_OUTPUT = (LAUNCHER_MAX_FRAME - (1 << 20)) // 2


def check_output_limit(limits: Limits) -> None:
    """Raise the job's error (``limits.output``) for an output limit no result frame carries."""
    if limits.output_bytes > MAX_OUTPUT:
        raise JobError(f"at most {MAX_OUTPUT >> 20}M through the worker (a result carries both streams)",
                       field="limits.output")
