"""The queue's outcomes and key names, as producers in other languages read them
(docs/queue.md): pure encoding, no Redis."""

from __future__ import annotations

import msgpack
import pytest

from sandbox.models import Result, Status, Usage
from worker.protocol import result_to_wire
from worker.queue_schema import QueueError, QueueKeys, decode_outcome, outcome_of_error, outcome_of_result


def test_a_result_outcome_is_the_sockets_result_map() -> None:
    result = Result(Status.RUNTIME_ERROR, exit_code=3, stdout=b"\xff out", usage=Usage(cpu_ms=1.5))
    outcome = outcome_of_result("job-1", result_to_wire(result))
    assert msgpack.unpackb(outcome, raw=False) == {"id": "job-1", "result": result_to_wire(result)}
    assert decode_outcome(outcome) == result


def test_an_error_outcome_raises_with_its_code_and_field() -> None:
    outcome = outcome_of_error("job-2", "invalid_job", "no image 'x' in the store", "image")
    assert msgpack.unpackb(outcome, raw=False) == {
        "id": "job-2", "error": {"code": "invalid_job", "message": "no image 'x' in the store", "field": "image"}}
    with pytest.raises(QueueError) as caught:
        decode_outcome(outcome)
    assert (caught.value.code, caught.value.field) == ("invalid_job", "image")
    assert "field" not in msgpack.unpackb(outcome_of_error("job-3", "dead_letter", "gave up"), raw=False)["error"]


def test_every_key_is_named_after_the_stream() -> None:
    keys = QueueKeys("judge")
    assert [keys.stream, keys.results, keys.dead, keys.config, keys.result("a"), keys.id("a")] == [
        "judge", "judge:results", "judge:dead", "judge:config", "judge:result:a", "judge:id:a"]


def test_a_judges_stage_ids_fit_the_queues_id_whatever_the_judges_id():
    from worker.queue_stages import stage_prefix

    assert stage_prefix("sum-1", 2) == "sum-1/2"
    long_prefix = stage_prefix("j" * 128, 3)
    assert len(f"{long_prefix}/9999") <= 128 and long_prefix != stage_prefix("k" * 128, 3)
