"""The command line's flags against the model: every limit a job has is a flag of run and
submit, and the limits the flags give are those the user typed, no more."""

from __future__ import annotations

import argparse

import pytest

from sandbox.cli.job_flags import add_job_arguments, limits_from_args
from sandbox.models import LIMIT_NAMES


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_job_arguments(parser, languages=True)
    return parser


def test_every_limit_is_a_flag(parser: argparse.ArgumentParser) -> None:
    dests = {action.dest for action in parser._actions}
    assert set(LIMIT_NAMES) <= dests, set(LIMIT_NAMES) - dests


def test_only_the_limits_typed_are_given(parser: argparse.ArgumentParser) -> None:
    limits = limits_from_args(parser.parse_args(["--memory", "256M", "--cpu-time", "none", "--", "true"]))
    assert limits.given == {"memory", "cpu_time"}
    assert (limits.memory_bytes, limits.cpu_time_ms) == (256 << 20, None)
