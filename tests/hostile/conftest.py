"""Fixtures of the hostile suite (one worker for the module, a host canary, listeners)
and the report: a table of every hostile case - and of the protocol-abuse and
hostile-image tests run in the same session - printed at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from workerutil import WorkerProcess

from hostile.harness import Canary, Harness, Listeners

# Tests outside tests/hostile that are attacks too; they join the report with their class.
OTHER_ATTACKS = {"test_worker.py": "protocol", "test_protocol.py": "protocol", "test_images_unpack.py": "image",
                 "test_images_registry.py": "image"}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    worker = WorkerProcess(tmp_path_factory.mktemp("hostile-worker"), "--slots", "2")
    listeners = Listeners()
    harness = Harness(worker, Canary(tmp_path_factory.mktemp("canary") / "tree"), listeners,
                      tmp_path_factory.mktemp("hostile-build"))
    yield harness
    harness.close()
    listeners.close()
    assert worker.stop() == 0, worker.log_path.read_text()


def _row(report: pytest.TestReport) -> tuple[str, str, str, str, str] | None:
    props = dict(report.user_properties)
    if "hostile_class" in props:
        return (props["hostile_case"], props["hostile_class"], props["expected"], props.get("got", report.outcome),
                "yes" if report.passed else "NO")
    module = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
    if module in OTHER_ATTACKS:
        return (report.nodeid.split("::", 1)[1], OTHER_ATTACKS[module], "passes", report.outcome,
                "yes" if report.passed else "NO")
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport) and (report.when == "call" or report.outcome != "passed"):
                if (row := _row(report)) is not None:
                    rows.append(row)
    if not any(row[1] not in OTHER_ATTACKS.values() for row in rows):
        return
    rows.sort(key=lambda row: (row[1], row[0]))
    widths = [max(len(header), *(len(row[i]) for row in rows)) for i, header in
              enumerate(("case", "class", "expected", "got", "contained"))]
    write = terminalreporter.write_line
    terminalreporter.section("hostile report")
    header = ("case", "class", "expected", "got", "contained")
    write("  ".join(text.ljust(width) for text, width in zip(header, widths, strict=True)))
    for row in rows:
        write("  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)))
    contained = sum(row[4] == "yes" for row in rows)
    write(f"{contained}/{len(rows)} contained")
