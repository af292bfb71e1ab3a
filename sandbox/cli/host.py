"""``sandbox doctor`` and ``sandbox setup-cgroups``: this host, what it supports and the
admin step that delegates cgroups and grants job ids."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_commands(commands: Any) -> None:
    doctor = commands.add_parser("doctor", help="check what this host supports and what is missing")
    doctor.set_defaults(handler=_cmd_doctor)

    setup = commands.add_parser("setup-cgroups", help="(root) delegate a cgroup subtree to a user")
    setup.add_argument("--user", required=True, help="the user who will run sandboxes")
    setup.set_defaults(handler=_cmd_setup_cgroups)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from sandbox.doctor import run_checks

    return run_checks(sys.stdout)


def _cmd_setup_cgroups(args: argparse.Namespace) -> int:
    from sandbox.cgroups.setup import setup_cgroups

    for line in setup_cgroups(args.user):
        print(line)
    return 0
