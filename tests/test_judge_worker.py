"""Judging inside a worker: one ``judge`` request carries the package and the
submission; the worker compiles once, runs each test as a job of its pool and streams a
``test_finished`` event per test - the same report as judging in this process."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from workerutil import SANDBOX_CLI

from sandbox.judge.problem import load_problem, read_package
from sandbox.judge.run import Submission, judge
from sandbox.languages import RunnerStages
from worker.client import Client, WorkerError

PROBLEMS = Path(__file__).parent / "problems"
SOLUTIONS = PROBLEMS / "solutions"
# Right only when compiled with -DRIGHT: the submission's compiler options reach the compiler.
SUM_IF_RIGHT = b"""#include <cstdio>
int main() { long long a, b; std::scanf("%lld %lld", &a, &b);
#ifdef RIGHT
std::printf("%lld\\n", a + b);
#else
std::printf("%lld\\n", a - b);
#endif
}
"""


def test_a_judge_request_streams_each_test_and_reports_as_in_process(runner, language_image, worker) -> None:
    package = read_package(PROBLEMS / "sum")
    heard: list[dict[str, Any]] = []
    with Client(worker.socket_path) as client:
        report = client.judge(package, "cpp", (SOLUTIONS / "sum_wrong.cpp").read_bytes(), on_test=heard.append)
    local = judge(RunnerStages(runner), load_problem(PROBLEMS / "sum"),
                  Submission.from_file("cpp", SOLUTIONS / "sum_wrong.cpp")).to_json_dict()
    runner.tidy()
    assert heard == report["tests"]
    assert [t["name"] for t in heard] == ["1", "2", "10"]
    assert (report["verdict"], report["score"]) == (local["verdict"], local["score"]) == ("wrong_answer", round(200 / 3, 6))
    assert [t["status"] for t in report["tests"]] == [t["status"] for t in local["tests"]]


def test_a_python_submission_in_the_interpreter_mode_through_the_worker(language_image, worker) -> None:
    with Client(worker.socket_path) as client:
        report = client.judge(read_package(PROBLEMS / "sum"), "python3", (SOLUTIONS / "sum_ok.py").read_bytes(),
                              interpreter=["sys"], parallel=2)
        with pytest.raises(WorkerError, match="interpreter"):
            client.judge(read_package(PROBLEMS / "sum"), "python3", b"print(1)", interpreter=[1])  # type: ignore[list-item]
    assert (report["verdict"], [t["status"] for t in report["tests"]]) == ("accepted", ["accepted"] * 3), report


def test_a_custom_checker_and_compiler_options_through_the_worker(language_image, worker, tmp_path: Path) -> None:
    source = tmp_path / "sum.cpp"
    source.write_bytes(SUM_IF_RIGHT)
    with Client(worker.socket_path) as client:
        plain = client.judge(read_package(PROBLEMS / "sum"), "cpp", SUM_IF_RIGHT)
        right = client.judge(read_package(PROBLEMS / "sum"), "cpp", SUM_IF_RIGHT, compile_options=["-DRIGHT"])
        custom = client.judge(read_package(PROBLEMS / "anyorder"), "python3",
                              (SOLUTIONS / "anyorder_reversed.py").read_bytes())
    assert plain["verdict"] == "wrong_answer" and right["verdict"] == "accepted"
    assert (custom["verdict"], custom["score"]) == ("partial", 70), custom  # the custom checker gave half a test
    done = subprocess.run([*SANDBOX_CLI, "judge", str(PROBLEMS / "sum"), "--lang", "cpp", "--source", str(source),
                           "--compile-option=-DRIGHT", "--json", "--socket", worker.socket_path],
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "accepted"


@pytest.mark.parametrize(("change", "field", "text"), [
    ({"../escape": b"x"}, "problem", "not a package file name"),
    ({"tests": b"x"}, "problem", "not a package file name"),
    ({"problem.toml": b"[limits\n"}, None, "problem.toml"),
    ({"tests/1.out": None}, None, "needs exactly one answer file"),
    # Values only a TOML parser gives (no msgpack one): each ended the worker, every job with it.
    ({"problem.toml": b"[checker]\nkind = 'float'\nabs = 1" + b"0" * 400 + b"\n"}, None, "abs is too large"),
    ({"problem.toml": b"[checker]\nkind = 'custom'\nsource = \"a\\u0000b\"\nlang = 'cpp'\n"}, None,
     "needs source (a file name)"),
])
def test_a_broken_package_is_refused_by_name(worker, change: dict[str, Any], field: str | None, text: str) -> None:
    package = read_package(PROBLEMS / "sum")
    for name, data in change.items():
        if data is None:
            del package[name]
        else:
            package[name] = data
    with Client(worker.socket_path) as client, pytest.raises(WorkerError) as raised:
        client.judge(package, "python3", b"print(1)")
    assert raised.value.code == "invalid_job" and (field is None or raised.value.field == field)
    assert text in raised.value.reply["message"] and "sandbox-judge-" not in raised.value.reply["message"]


def test_an_unknown_language_is_refused(worker) -> None:
    with Client(worker.socket_path) as client, pytest.raises(WorkerError) as raised:
        client.judge(read_package(PROBLEMS / "sum"), "cobol", b"")
    assert (raised.value.code, raised.value.field) == ("invalid_job", "lang")


def test_cancel_stops_a_judge_and_its_running_test(language_image, worker) -> None:
    """Cancelled after the first test's report: the second test's job is cancelled (the
    slow solution would run a second of CPU), no more are started, the judge says so."""
    heard: list[str] = []
    with Client(worker.socket_path) as client:
        def cancel_after_first(test: dict[str, Any]) -> None:
            heard.append(test["status"])
            client.cancel("slow")

        with pytest.raises(WorkerError) as raised:
            client.judge(read_package(PROBLEMS / "sum"), "cpp", (SOLUTIONS / "sum_slow.cpp").read_bytes(),
                         judge_id="slow", on_test=cancel_after_first)
        assert raised.value.code == "cancelled"
        assert heard == ["time_limit"]
        stats = client.stats()
    assert stats["running"] == 0


def test_a_client_that_leaves_mid_judge_leaves_nothing_running(language_image, worker) -> None:
    """The client goes away while the second test runs: that job is cancelled, and no
    third is started (submitted stops at compile + two tests)."""
    client = Client(worker.socket_path)
    try:
        client._send({"type": "judge", "id": "gone", "problem": read_package(PROBLEMS / "sum"),
                      "submission": {"lang": "cpp", "source": (SOLUTIONS / "sum_slow.cpp").read_bytes()}})
        while not any(m.get("event") == "test_finished" for m in client._mail.events["gone"]):
            client._receive()
    finally:
        client.close()
    with Client(worker.socket_path) as observer:
        deadline = time.monotonic() + 60
        while (stats := observer.stats())["running"] or stats["queued"]:
            assert time.monotonic() < deadline, stats
            time.sleep(0.05)  # polling the worker's state, bounded by the deadline
        # compile, the first test (its time limit) and at most the second, cancelled
        assert stats["submitted"] <= 3 and stats["by_status"] == {"ok": 1, "time_limit": 1} | (
            {"cancelled": 1} if "cancelled" in stats["by_status"] else {}), stats


def test_a_package_file_may_be_one_put_before(language_image, worker) -> None:
    """A big input goes in once (put_file) and judges name it by id: the same report as
    with its bytes; an id the worker does not have names its file."""
    package: dict[str, Any] = dict(read_package(PROBLEMS / "sum"))
    with Client(worker.socket_path) as client:
        package["tests/10.in"] = {"file_id": client.put_file(package["tests/10.in"])}
        report = client.judge(package, "python3", (SOLUTIONS / "sum_ok.py").read_bytes())
        assert report["verdict"] == "accepted", report
        package["tests/10.in"] = {"file_id": "sha256:" + "0" * 64}
        with pytest.raises(WorkerError) as raised:
            client.judge(package, "python3", (SOLUTIONS / "sum_ok.py").read_bytes())
    assert (raised.value.code, raised.value.field) == ("invalid_job", "problem.tests/10.in.file_id")
