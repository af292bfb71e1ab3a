"""``sandbox volume ls|rm|prune``: the named volumes under the data directory
(``sandbox/volumes.py``)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sandbox.volumes import GiveBack


def add_commands(commands: Any) -> None:
    volume = commands.add_parser("volume", help="list and remove named volumes (--volume NAME:PATH)")
    actions = volume.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("ls", help="every volume: its size on disk and whether a running job uses it")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(handler=_cmd_ls)
    remove = actions.add_parser("rm", help="remove volumes no running job uses")
    remove.add_argument("names", nargs="+", metavar="NAME")
    remove.set_defaults(handler=_cmd_rm)
    prune = actions.add_parser("prune", help="remove every volume no running job uses; prints their names")
    prune.set_defaults(handler=_cmd_prune)


def _cmd_ls(args: argparse.Namespace) -> int:
    from sandbox.volumes import list_volumes, volumes_root

    found = list_volumes(volumes_root())
    if args.json:
        print(json.dumps([{"name": v.name, "size_bytes": v.size_bytes, "in_use": v.in_use} for v in found]))
    else:
        for v in found:
            print(f"{v.name}\t{v.size_bytes}\t{'in use' if v.in_use else '-'}")
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    from sandbox.volumes import remove, volumes_root

    with _giving_back() as give_back:
        for name in args.names:
            remove(volumes_root(), name, give_back)
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from sandbox.volumes import prune, volumes_root

    with _giving_back() as give_back:
        for name in prune(volumes_root(), give_back):
            print(name)
    return 0


@contextmanager
def _giving_back() -> Iterator[GiveBack]:
    """A zygote's way of giving a volume's files back to this user (they belong to the
    id of the last job that wrote them, which this user cannot override): started on
    first use, stopped at the end."""
    from sandbox.rootfs import SANDBOX_UID
    from sandbox.zygote import StartedZygote

    started: list[StartedZygote] = []

    def give_back(root: str, name: str) -> None:
        if not started:
            started.append(StartedZygote())
        os.close(started[0].zygote.clone_volume(root, name, SANDBOX_UID))

    try:
        yield give_back
    finally:
        for zygote in started:
            zygote.zygote.close()
