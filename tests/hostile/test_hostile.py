"""Every hostile case of the table, each followed by the harness's containment checks."""

from __future__ import annotations

import pytest

from hostile.case import Case
from hostile.cases import ALL
from hostile.harness import Harness


@pytest.mark.parametrize("case", ALL, ids=[case.name for case in ALL])
def test_hostile_case(case: Case, harness: Harness, record_property) -> None:
    record_property("hostile_case", case.name)
    record_property("hostile_class", case.cls)
    record_property("expected", case.expected)
    verdict = harness.run_case(case)
    record_property("got", verdict.got)
    assert not verdict.escapes, f"NOT CONTAINED: {verdict.escapes}"
    assert not verdict.problems, f"unexpected outcome: {verdict.problems}"
