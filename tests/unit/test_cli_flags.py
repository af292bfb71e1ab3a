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


def commands_of(parser: argparse.ArgumentParser) -> set[str]:
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(subparsers.choices)


def test_a_command_loads_only_its_group_and_every_command_is_found() -> None:
    """``sandbox run`` builds only run's flags; the table naming each command's group
    is complete (help lists every command) and true (each group makes the commands the
    table gives it)."""
    from sandbox.cli import COMMAND_GROUPS, MODULE_OF_COMMAND, make_parser

    assert commands_of(make_parser(["--help"])) == set(MODULE_OF_COMMAND)
    assert commands_of(make_parser(["no-such-command"])) == set(MODULE_OF_COMMAND)
    for command, group in MODULE_OF_COMMAND.items():
        assert commands_of(make_parser([command, "--json"])) == {c for c, g in MODULE_OF_COMMAND.items() if g == group}
    assert set(MODULE_OF_COMMAND.values()) == set(COMMAND_GROUPS)
    args = make_parser(["run", "--memory", "1G", "--", "true"]).parse_args(["run", "--memory", "1G", "--", "true"])
    assert (args.command, args.memory, args.cmd) == ("run", "1G", ["--", "true"])
