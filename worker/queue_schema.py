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
# Raised by sandbox_put_blob for a file bigger than the workers take.
BLOB_TOO_BIG = "blob_too_big"
# Raised by sandbox_submit for another job under an id the queue knows.
ID_CONFLICT = "id_conflict"
# Raised by sandbox_submit for an id out of bounds, and by sandbox_cancel for a bad ttl.
INVALID_JOB = "invalid_job"
CANCELLED_MESSAGE = "cancelled by its producer"

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
-- max_queue jobs (waiting or running: a finished job's entry is deleted), 'invalid_job ...'
-- for an id of no character or more than 128 (counted as UTF-8: a worker refuses it).
-- The id key holds the entry and a digest of what was submitted under the id, so that
-- another job under a known id is refused ('id_conflict ...'), as on a worker's socket.
local function submit(keys, args)
  local _, characters = string.gsub(args[1], '[^\\128-\\191]', '')
  if characters == 0 or characters > 128 then
    return redis.error_reply('invalid_job the id must be 1 to 128 characters')
  end
  local known = redis.call('GET', keys[2])
  local digest = redis.sha1hex((args[3] or 'job') .. args[2])
  if known then
    local entry, held = string.match(known, '^(%S+) ?(%S*)$')
    if held ~= '' and held ~= digest then
      return redis.error_reply('id_conflict the id ' .. args[1] .. ' names another job (or judge) already')
    end
    return {'known', entry}
  end
  local limit = tonumber(redis.call('HGET', keys[3], 'max_queue') or '0')
  local held = redis.call('XLEN', keys[1])
  if limit > 0 and held >= limit then
    return redis.error_reply('queue_full ' .. keys[1] .. ' holds ' .. held ..
                             ' jobs, the most its workers allow (--max-queue); retry later')
  end
  local entry = redis.call('XADD', keys[1], '*', 'id', args[1], args[3] or 'job', args[2])
  redis.call('SET', keys[2], entry .. ' ' .. digest)
  return {'queued', entry}
end

-- KEYS: stream, id key, result key, results stream, cancels stream, cancel mark, config.
-- ARGV: group, job id, outcome (msgpack: the error 'cancelled'), ttl seconds if no worker
-- has said (their result_ttl), results maxlen.
-- 'unknown' (no such id), 'finished' (its outcome is in: too late), 'cancelled' (no
-- worker had taken it: it never runs, and the outcome is written here), 'cancelling' (a
-- worker holds it: told on the cancels stream, and by the mark, a worker that claims it
-- later; the outcome comes from the worker, once the job has stopped).
local function cancel(keys, args)
  local known = redis.call('GET', keys[2])
  if not known then return 'unknown' end
  if redis.call('EXISTS', keys[3]) == 1 then return 'finished' end
  local entry = string.match(known, '^(%S+)')
  local ttl = tonumber(redis.call('HGET', keys[7], 'result_ttl') or args[4])
  -- Checked before any write: an error does not undo a function's writes before it.
  if not ttl or ttl < 1 or ttl ~= math.floor(ttl) then
    return redis.error_reply('invalid_job the ttl must be a whole number of seconds, 1 or more')
  end
  local pending = redis.pcall('XPENDING', keys[1], args[1], entry, entry, 1)
  if pending.err or #pending == 0 then  -- (no group yet: no worker has come, nor taken it)
    redis.call('XDEL', keys[1], entry)
    redis.call('SET', keys[3], args[3], 'EX', ttl)
    redis.call('XADD', keys[4], 'MAXLEN', '~', args[5], '*', 'id', args[2], 'outcome', args[3])
    redis.call('EXPIRE', keys[2], ttl)
    return 'cancelled'
  end
  redis.call('SET', keys[6], '1', 'EX', ttl)
  redis.call('XADD', keys[5], 'MAXLEN', '~', args[5], '*', 'id', args[2])
  return 'cancelling'
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

-- KEYS: the streams a worker serves, the ones served first ("urgent": a judge's stage
-- jobs) before the others. ARGV: group, consumer, count, the number of urgent streams,
-- the virtual clock, then each other stream's weight and virtual time.
-- Takes up to count new entries (XREADGROUP, as the worker's own read would): every urgent
-- stream in order first, then one entry at a time from the stream whose virtual time
-- (never behind the clock: a stream idle for long gets no credit for it) is least, which
-- then moves on by 1/weight - a weighted fair share among the streams that have jobs.
-- Returns {taken, clock, times, last}: taken is {stream index, entry, fields} each; times
-- the streams' virtual times after; last, when nothing was taken, each stream's last
-- entry id, for the worker to wait for newer ones (XREAD BLOCK) without missing one
-- added in between.
local function take(keys, args)
  local group, consumer, count, urgent = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local clock = tonumber(args[5])
  local weights, times, dry, taken = {}, {}, {}, {}
  for i = urgent + 1, #keys do
    weights[i] = tonumber(args[6 + 2 * (i - urgent - 1)])
    times[i] = tonumber(args[7 + 2 * (i - urgent - 1)])
  end
  local function read(i)
    local got = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', keys[i], '>')
    if not got or #got == 0 or #got[1][2] == 0 then dry[i] = true; return false end
    local entry = got[1][2][1]
    table.insert(taken, {i, entry[1], entry[2]})
    return true
  end
  for i = 1, urgent do
    while #taken < count and read(i) do end
  end
  while #taken < count do
    local best, start = nil, nil
    for i = urgent + 1, #keys do
      if not dry[i] then
        local s = math.max(times[i], clock)
        if best == nil or s < start then best, start = i, s end
      end
    end
    if best == nil then break end
    if read(best) then
      clock = start
      times[best] = start + 1 / weights[best]
    end
  end
  local out_times = {}
  for i = urgent + 1, #keys do table.insert(out_times, tostring(times[i])) end
  local last = {}
  if #taken == 0 then
    for i = 1, #keys do
      local info = redis.call('XINFO', 'STREAM', keys[i])
      for j = 1, #info, 2 do
        if info[j] == 'last-generated-id' then table.insert(last, info[j + 1]) end
      end
    end
  end
  return {taken, tostring(clock), out_times, last}
end

-- KEYS: blob key, config hash. ARGV: the bytes, ttl seconds if no worker has said. A file
-- for the jobs of any worker, named by its SHA-256 (checked by the worker that fetches it,
-- not here: Lua has no SHA-256). Bounded by the workers' max_blob, kept as long as their
-- results; a blob kept already has its time renewed.
local function put_blob(keys, args)
  local limit = tonumber(redis.call('HGET', keys[2], 'max_blob') or '0')
  local ttl = redis.call('HGET', keys[2], 'result_ttl') or args[2]
  if limit > 0 and #args[1] > limit then
    return redis.error_reply('blob_too_big the file is ' .. #args[1] .. ' bytes, more than the ' .. limit ..
                             ' the workers take (--max-blob)')
  end
  if redis.call('SET', keys[1], args[1], 'NX', 'EX', ttl) then return 'stored' end
  redis.call('EXPIRE', keys[1], ttl)
  return 'known'
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
redis.register_function('sandbox_take', take)
redis.register_function('sandbox_cancel', cancel)
redis.register_function('sandbox_put_blob', put_blob)
"""


@dataclass(frozen=True)
class Share:
    """A stream a worker serves, and its weight: among streams that all have jobs
    waiting, a worker takes from each in proportion to its weight (a stream per tenant
    or contest, so one producer's flood does not starve another)."""

    stream: str
    weight: int = 1


@dataclass
class QueueConfig:
    url: str
    shares: tuple[Share, ...]
    claim_idle_s: float = 60.0  # a delivery this long without a heartbeat is another worker's to claim
    max_deliveries: int = 3  # then the job is dead-lettered instead of run again
    max_queue: int = 1024  # jobs the stream may hold (waiting or running); sandbox_submit refuses more
    result_ttl_s: int = 86_400  # how long a result (and its id's claim, and a blob) stays in Redis
    max_blob: int = 64 << 20  # the largest file a producer may put for the jobs (sandbox_put_blob)

    @property
    def streams(self) -> list[str]:
        return [share.stream for share in self.shares]


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

    @property
    def stages(self) -> QueueKeys:
        """The queue of the jobs of this stream's judges (a compile, a test, a checker):
        served before the stream itself by every worker, so a judge under way finishes
        before new work starts, whichever workers its tests land on."""
        return QueueKeys(f"{self.stream}:stages")

    def result(self, job_id: str) -> str:
        return f"{self.stream}:result:{job_id}"

    def id(self, job_id: str) -> str:
        return f"{self.stream}:id:{job_id}"

    def progress(self, job_id: str) -> str:
        """A queued judge's ``test_finished`` events, for its producer to follow."""
        return f"{self.stream}:progress:{job_id}"

    @property
    def cancels(self) -> str:
        """The ids of jobs cancelled while a worker held them, for the workers to hear."""
        return f"{self.stream}:cancels"

    def cancel_mark(self, job_id: str) -> str:
        """Set while a cancelled job may still be held or claimed."""
        return f"{self.stream}:cancel:{job_id}"

    def blob(self, file_id: str) -> str:
        """A file put for the jobs of any worker (``sandbox_put_blob``), by its id."""
        return f"{self.stream}:blob:{file_id}"


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


def parse_share(text: str) -> Share:
    """``NAME`` or ``NAME=WEIGHT`` (a whole number from 1 to 1000), as ``--stream`` takes it."""
    name, _, weight = text.rpartition("=") if "=" in text else (text, "", "1")
    if not name or not weight.isdigit() or not 1 <= int(weight) <= 1000:
        raise ValueError(f"--stream {text!r}: give NAME or NAME=WEIGHT, a weight from 1 to 1000")
    return Share(name, int(weight))


def cancel_call(keys: QueueKeys, job_id: str, ttl_s: int) -> tuple[list[str], list[str | bytes | int]]:
    """The keys and arguments of ``sandbox_cancel`` for a job."""
    outcome = outcome_of_error(job_id, "cancelled", CANCELLED_MESSAGE)
    return ([keys.stream, keys.id(job_id), keys.result(job_id), keys.results, keys.cancels, keys.cancel_mark(job_id),
             keys.config], [GROUP, job_id, outcome, ttl_s, RESULTS_MAXLEN])


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
    """The Result of an outcome; raises QueueError for an outcome that is an error, or
    a judge's (``unknown_id``: the id names no job)."""
    return result_from_wire(_decoded(data, "result", "a judge, not a job"))


def decode_report(data: bytes | str) -> dict[str, Any]:
    """The report of a judge's outcome; raises QueueError for an outcome that is an error,
    or a job's (``unknown_id``: the id names no judge)."""
    report: dict[str, Any] = _decoded(data, "report", "a job, not a judge")
    return report


def _decoded(data: bytes | str, part: str, other: str) -> Any:
    """The ``part`` of an outcome ("result" or "report"); ``other``: what the id names
    when the outcome has the other part."""
    outcome: dict[str, Any] = msgpack.unpackb(data.encode() if isinstance(data, str) else data, raw=False)
    if "error" in outcome:
        error = outcome["error"]
        raise QueueError(error["code"], error["message"], error.get("field"))
    if part not in outcome:
        raise QueueError("unknown_id", f"the id names {other}", "id")
    return outcome[part]

