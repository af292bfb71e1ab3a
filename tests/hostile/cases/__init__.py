"""Every hostile case, by class. Each module holds a ``CASES`` list."""

from __future__ import annotations

from hostile.case import Case
from hostile.cases import escape, io, leak, resource, supervisor

ALL: list[Case] = [*resource.CASES, *escape.CASES, *leak.CASES, *supervisor.CASES, *io.CASES]

_names = [case.name for case in ALL]
assert len(_names) == len(set(_names)), "duplicate hostile case names"
