"""What a Redis Streams queue of jobs looks like in Redis: the key names, the Redis
Functions that change them atomically, and the outcome a job leaves behind.

Shared by the worker's consumer (worker/queue_consumer.py) and the producers'
client (worker/queue_client.py), and documented in docs/queue.md for producers in other
languages. Nothing here does I/O.

Every change that must not be seen half done is one Redis Function call: Redis runs a
function as it runs a MULTI/EXEC transaction - nothing else interleaves - and a function
can also check before it writes. That is how a result is fenced: ``sandbox_finish``
writes it (result key, results stream, XACK, XDEL) only while its writer still owns the
delivery, so a worker that lost a job to another (it stalled past the claim timeout, or
Redis was unreachable for that long) can never overwrite the newer result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from sandbox.models import Result
from worker.protocol import result_from_wire

GROUP = "sandbox"  # the consumer group every worker of a stream joins
RESULTS_MAXLEN = 100_000  # the results stream is a feed, trimmed; the result keys are the record
PROGRESS_MAXLEN = 10_000  # a judge's progress stream: one entry per test, and a package has fewer
LIBRARY_NAME = "sandbox"
# Raised by sandbox_submit: the first word of the error is the code, as Redis errors go.
QUEUE_FULL = "queue_full"

LIBRARY = """#!lua name=sandbox
-- The sandbox job queue (docs/queue.md). Each function is atomic, as MULTI/EXEC is.

local function owner(stream, group, entry)
  local pending = redis.call('XPENDING', stream, group, entry, entry, 1)
  if #pending == 0 then return false end
  return pending[1][2]
end

-- KEYS: stream, id key, config hash. ARGV: job id, job (msgpack), and the entry's field
-- for it: 'job' (the default) or 'judge' (a judge request).
-- {'queued', entry} or {'known', entry}; the error 'queue_full ...' when the stream holds
-- max_queue jobs (waiting or running: a finished job's entry is deleted).
local function submit(keys, args)
  local known = redis.call('GET', keys[2])
  if known then return {'known', known} end
  local limit = tonumber(redis.call('HGET', keys[3], 'max_queue') or '0')
  local held = redis.call('XLEN', keys[1])
  if limit > 0 and held >= limit then
    return redis.error_reply('queue_full ' .. keys[1] .. ' holds ' .. held ..
                             ' jobs, the most its workers allow (--max-queue); retry later')
  end
  local entry = redis.call('XADD', keys[1], '*', 'id', args[1], args[3] or 'job', args[2])
  redis.call('SET', keys[2], entry)
  return {'queued', entry}
end

-- KEYS: stream, result key, results stream, id key, dead-letter stream.
-- ARGV: group, consumer, entry, job id, outcome (msgpack), ttl seconds, results maxlen,
--       then for a dead letter: reason, deliveries.
-- 1 if written; 0 if the consumer no longer owns the delivery (nothing is written).
local function finish(keys, args)
  if owner(keys[1], args[1], args[3]) ~= args[2] then return 0 end
  if args[8] then
    local job = redis.call('XRANGE', keys[1], args[3], args[3])
    local payload = (#job > 0) and job[1][2] or {}
    local fields = {'id', args[4], 'entry', args[3], 'reason', args[8], 'deliveries', args[9]}
    for i = 1, #payload, 2 do
      if payload[i] == 'job' or payload[i] == 'judge' then
        table.insert(fields, payload[i]); table.insert(fields, payload[i + 1])
      end
    end
    redis.call('XADD', keys[5], '*', unpack(fields))
  end
  if args[4] ~= '' then
    redis.call('SET', keys[2], args[5], 'EX', args[6])
    redis.call('XADD', keys[3], 'MAXLEN', '~', args[7], '*', 'id', args[4], 'outcome', args[5])
    redis.call('EXPIRE', keys[4], args[6])
  end
  redis.call('XACK', keys[1], args[1], args[3])
  redis.call('XDEL', keys[1], args[3])
  return 1
end

-- KEYS: stream. ARGV: group, consumer, entries... Resets the idle time of the entries
-- the consumer still owns (a long job is not claimed from a live worker); returns the
-- entries it no longer owns.
local function heartbeat(keys, args)
  local lost = {}
  for i = 3, #args do
    if owner(keys[1], args[1], args[i]) == args[2] then
      redis.call('XCLAIM', keys[1], args[1], args[2], 0, args[i], 'JUSTID')
    else
      table.insert(lost, args[i])
    end
  end
  return lost
end

redis.register_function('sandbox_submit', submit)
redis.register_function('sandbox_finish', finish)
redis.register_function('sandbox_heartbeat', heartbeat)
"""


@dataclass
class QueueConfig:
    url: str
    stream: str
    claim_idle_s: float = 60.0  # a delivery this long without a heartbeat is another worker's to claim
    max_deliveries: int = 3  # then the job is dead-lettered instead of run again
    max_queue: int = 1024  # jobs the stream may hold (waiting or running); sandbox_submit refuses more
    result_ttl_s: int = 86_400  # how long a result (and its id's claim) stays in Redis


@dataclass(frozen=True)
class QueueKeys:
    """The keys of one queue, all named after its stream."""

    stream: str

    @property
    def results(self) -> str:
        return f"{self.stream}:results"

    @property
    def dead(self) -> str:
        return f"{self.stream}:dead"

    @property
    def config(self) -> str:
        return f"{self.stream}:config"

    def result(self, job_id: str) -> str:
        return f"{self.stream}:result:{job_id}"

    def id(self, job_id: str) -> str:
        return f"{self.stream}:id:{job_id}"

    def progress(self, job_id: str) -> str:
        """A queued judge's ``test_finished`` events, for its producer to follow."""
        return f"{self.stream}:progress:{job_id}"


class QueueError(Exception):
    """A job's outcome that is not a result (``code``: ``invalid_job``, ``dead_letter``),
    or a refusal at submit (``queue_full``)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field


class QueueFull(QueueError):
    """The stream holds its workers' ``--max-queue`` jobs: retry later."""


def outcome_of_result(job_id: str, result: dict[str, Any]) -> bytes:
    """A job's outcome: the Result map exactly as the socket's ``finished`` event has it."""
    return bytes(msgpack.packb({"id": job_id, "result": result}, use_bin_type=True))


def outcome_of_error(job_id: str, code: str, message: str, field: str | None = None) -> bytes:
    """The outcome of a job that produced no result, so a waiting producer still hears."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    return bytes(msgpack.packb({"id": job_id, "error": error}, use_bin_type=True))


def outcome_of_report(judge_id: str, report: dict[str, Any]) -> bytes:
    """A judge's outcome: the report exactly as the socket's ``judged`` event has it."""
    return bytes(msgpack.packb({"id": judge_id, "report": report}, use_bin_type=True))


def decode_outcome(data: bytes | str) -> Result:
    """The Result of an outcome; raises QueueError for an outcome that is an error."""
    return result_from_wire(_decoded(data)["result"])


def decode_report(data: bytes | str) -> dict[str, Any]:
    """The report of a judge's outcome; raises QueueError for an outcome that is an error."""
    report: dict[str, Any] = _decoded(data)["report"]
    return report


def _decoded(data: bytes | str) -> dict[str, Any]:
    outcome: dict[str, Any] = msgpack.unpackb(data.encode() if isinstance(data, str) else data, raw=False)
    if "error" in outcome:
        error = outcome["error"]
        raise QueueError(error["code"], error["message"], error.get("field"))
    return outcome

