"""The built-in checkers: does a solution's output answer the test?

Pure functions of two byte strings. A solution's output is untrusted and can be as large
as its output limit, binary, or a flood of whitespace, so nothing here makes an object
per token or line: texts are normalised by one regular-expression pass each (whitespace
runs to one space, or trailing spaces off every line) and compared as whole byte
strings, which runs at memory speed; only the float checker walks tokens, and only when
the texts differ.

Verdicts follow what judges show: a byte-exact or line-exact comparison that fails only
on whitespace (the tokens agree) is a presentation error, not a wrong answer.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import zip_longest

_TOKEN = re.compile(rb"[^ \t\n\r\f\v]+")
_NEWLINE = b"\n"
_TO_SPACE = bytes.maketrans(b"\t\n\r\f\v", b"     ")
_SPACES = re.compile(rb"  +")
_LINE_END_SPACE = re.compile(rb"[ \t\r\f\v]+\n")
_DECIMAL = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SHOWN = 32  # bytes of a token quoted in a message


class CheckerKind(str, enum.Enum):
    EXACT = "exact"  # the bytes
    LINES = "lines"  # lines, ignoring trailing whitespace on each and trailing blank lines
    TOKENS = "tokens"  # whitespace-separated tokens
    FLOAT = "float"  # tokens; numbers within an absolute or relative tolerance
    CUSTOM = "custom"  # a program of the problem's (sandbox.judge.custom)


class CheckStatus(str, enum.Enum):
    ACCEPTED = "accepted"
    WRONG_ANSWER = "wrong_answer"
    PRESENTATION_ERROR = "presentation_error"
    PARTIAL = "partial"


@dataclass(frozen=True)
class Checked:
    """A checker's decision: ``score`` is the fraction of the test's points, 0..1."""

    status: CheckStatus
    score: float
    message: str

    @classmethod
    def accepted(cls, message: str = "ok") -> Checked:
        return cls(CheckStatus.ACCEPTED, 1.0, message)

    @classmethod
    def wrong(cls, message: str) -> Checked:
        return cls(CheckStatus.WRONG_ANSWER, 0.0, message)


def check(kind: CheckerKind, output: bytes, answer: bytes, *, abs_tol: float = 1e-6, rel_tol: float = 1e-6) -> Checked:
    """Compare ``output`` with the expected ``answer`` by a built-in checker."""
    if kind is CheckerKind.EXACT:
        return _exact(output, answer)
    if kind is CheckerKind.LINES:
        return _lines(output, answer)
    if kind is CheckerKind.TOKENS:
        return _tokens_equal(output, answer)
    if kind is CheckerKind.FLOAT:
        return _tokens_close(output, answer, abs_tol, rel_tol)
    raise ValueError(f"{kind.value} is not a built-in checker")


def _exact(output: bytes, answer: bytes) -> Checked:
    if output == answer:
        return Checked.accepted()
    return _whitespace_only(output, answer, f"bytes differ at offset {_first_difference(output, answer)}")


def _lines(output: bytes, answer: bytes) -> Checked:
    got, want = _trimmed_lines(output), _trimmed_lines(answer)
    if got == want:
        return Checked.accepted()
    offset = _position(got, want, _NEWLINE)
    line = max(got, want, key=len).count(_NEWLINE, 0, offset) + 1
    return _whitespace_only(output, answer, f"line {line}: {_describe(got, want, offset, _NEWLINE)}")


def _whitespace_only(output: bytes, answer: bytes, message: str) -> Checked:
    """A failed exact or line comparison: a presentation error when the tokens agree."""
    if _normalized(output) == _normalized(answer):
        return Checked(CheckStatus.PRESENTATION_ERROR, 0.0, f"{message} (whitespace only)")
    return Checked.wrong(message)


def _tokens_equal(output: bytes, answer: bytes) -> Checked:
    got, want = _normalized(output), _normalized(answer)
    if got == want:
        count = want.count(b" ") + 1 if want else 0
        return Checked.accepted(f"ok {count} token{'s' if count != 1 else ''}")
    offset = _position(got, want, b" ")
    number = max(got, want, key=len).count(b" ", 0, offset) + 1
    return Checked.wrong(f"token {number}: {_describe(got, want, offset, b' ')}")


def _tokens_close(output: bytes, answer: bytes, abs_tol: float, rel_tol: float) -> Checked:
    if _normalized(output) == _normalized(answer):
        return _tokens_equal(output, answer)
    count = 0
    for count, (got, want) in enumerate(zip_longest(_tokens(output), _tokens(answer)), 1):
        if got is None:
            return Checked.wrong(f"token {count}: output ended, expected {_show(want)}")
        if want is None:
            return Checked.wrong(f"token {count}: extra output {_show(got)}")
        if not _close(got, want, abs_tol, rel_tol):
            return Checked.wrong(f"token {count}: {_show(got)} instead of {_show(want)}")
    return Checked.accepted(f"ok {count} tokens")


def _close(got: bytes, want: bytes, abs_tol: float, rel_tol: float) -> bool:
    """Decimal numbers within either tolerance (of the expected value); anything else -
    words, ``nan``, ``inf``, Python's ``1_000`` - exactly."""
    if not (_DECIMAL.fullmatch(got) and _DECIMAL.fullmatch(want)):
        return got == want
    expected, actual = float(want), float(got)
    if math.isinf(expected) or math.isinf(actual):  # beyond a double's range, like 1e999
        return expected == actual
    return abs(actual - expected) <= max(abs_tol, rel_tol * abs(expected))


def _tokens(data: bytes) -> Iterator[bytes]:
    return (match.group() for match in _TOKEN.finditer(data))


def _trimmed_lines(data: bytes) -> bytes:
    """The text without trailing whitespace on any line, nor trailing blank lines."""
    return _LINE_END_SPACE.sub(b"\n", data).rstrip()


def _normalized(data: bytes) -> bytes:
    """The tokens, one space between each: equal exactly when the token lists are.
    (Each pass here touches only the runs that need it: a translation of every
    whitespace byte to a space, then the runs of two or more.)"""
    return _SPACES.sub(b" ", data.translate(_TO_SPACE)).strip(b" ")


def _position(got: bytes, want: bytes, separator: bytes) -> int:
    """Where the first differing unit (token or line) starts to differ; where one text is
    a prefix of the other up to a separator, the first unit after it."""
    offset = _first_difference(got, want)
    longer = got if offset >= len(want) else want
    if offset >= min(len(got), len(want)) and longer[offset:offset + 1] == separator:
        offset += 1
    return offset


def _describe(got: bytes, want: bytes, offset: int, separator: bytes) -> str:
    """The unit (token or line) around the first difference, in both texts; "ended" or
    "extra" only where one text has no unit there at all (not where a unit of it is a
    prefix of the other's: "2" against "23")."""
    start = max(got.rfind(separator, 0, offset), want.rfind(separator, 0, offset)) + 1
    if start >= len(got):
        return f"output ended, expected {_show(_unit_at(want, offset, separator))}"
    if start >= len(want):
        return f"extra output {_show(_unit_at(got, offset, separator))}"
    return f"{_show(_unit_at(got, offset, separator))} instead of {_show(_unit_at(want, offset, separator))}"


def _first_difference(one: bytes, other: bytes) -> int:
    """Offset of the first differing byte: compared a block at a time, then within the block."""
    block = 1 << 16
    start = 0
    while start < min(len(one), len(other)) and one[start:start + block] == other[start:start + block]:
        start += block
    end = min(len(one), len(other), start + block)
    return next((i for i in range(start, end) if one[i] != other[i]), end)


def _unit_at(text: bytes, offset: int, separator: bytes) -> bytes:
    start = text.rfind(separator, 0, offset) + 1
    end = text.find(separator, offset)
    return text[start:len(text) if end < 0 else end]


def _show(token: bytes | None) -> str:
    assert token is not None
    shown = repr(token[:_SHOWN])[1:]
    return shown + ("..." if len(token) > _SHOWN else "")
