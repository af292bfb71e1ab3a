"""The built-in checkers, on their own: no sandbox needed."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.judge.checkers import CheckerKind, CheckStatus, check

ACCEPTED, WRONG, PRESENTATION = CheckStatus.ACCEPTED, CheckStatus.WRONG_ANSWER, CheckStatus.PRESENTATION_ERROR
tokens = st.lists(st.binary(min_size=1, max_size=8).map(lambda b: re.sub(rb"\s", b"x", b)), max_size=20)
whitespace = st.text(alphabet=" \t\n\r\f\v", min_size=1, max_size=3).map(str.encode)


@pytest.mark.parametrize(("kind", "output", "answer", "status"), [
    (CheckerKind.EXACT, b"1 2\n", b"1 2\n", ACCEPTED),
    (CheckerKind.EXACT, b"1 2", b"1 2\n", PRESENTATION),
    (CheckerKind.EXACT, b"1  2\n", b"1 2\n", PRESENTATION),
    (CheckerKind.EXACT, b"1 3\n", b"1 2\n", WRONG),
    (CheckerKind.LINES, b"1 2  \r\n\n\n", b"1 2\n", ACCEPTED),
    (CheckerKind.LINES, b"1 2", b"1 2\n", ACCEPTED),
    (CheckerKind.LINES, b"1\n2\n", b"1 2\n", PRESENTATION),
    (CheckerKind.LINES, b"1 2\n3\n", b"1 2\n", WRONG),
    (CheckerKind.TOKENS, b"  1\n\n2\t", b"1 2\n", ACCEPTED),
    (CheckerKind.TOKENS, b"12", b"1 2", WRONG),
    (CheckerKind.TOKENS, b"", b"", ACCEPTED),
    (CheckerKind.TOKENS, b"\xff\x00 x", b"\xff\x00 x", ACCEPTED),
    (CheckerKind.FLOAT, b"0.3333334 abc", b"0.333333333 abc", ACCEPTED),
    (CheckerKind.FLOAT, b"1000000.5", b"1000000", ACCEPTED),   # relative
    (CheckerKind.FLOAT, b"0.0000005", b"0", ACCEPTED),          # absolute
    (CheckerKind.FLOAT, b"0.34", b"0.333333333", WRONG),
    (CheckerKind.FLOAT, b"abd", b"abc", WRONG),
    (CheckerKind.FLOAT, b"1_0", b"10", WRONG),                  # not a decimal: compared exactly
    (CheckerKind.FLOAT, b"nan", b"0", WRONG),
    (CheckerKind.FLOAT, b"1e999", b"1e308", WRONG),
    (CheckerKind.FLOAT, b"1", b"1 2", WRONG),
])
def test_each_checker_decides(kind: CheckerKind, output: bytes, answer: bytes, status: CheckStatus) -> None:
    checked = check(kind, output, answer)
    assert checked.status is status, checked
    assert checked.score == (1.0 if status is ACCEPTED else 0.0)


@pytest.mark.parametrize(("kind", "output", "answer", "message"), [
    (CheckerKind.TOKENS, b"1 2 4", b"1 2 3", "token 3: '4' instead of '3'"),
    (CheckerKind.TOKENS, b"1\n2 3", b"1 2\n", "token 3: extra output '3'"),
    (CheckerKind.TOKENS, b"1", b"1 2\n", "token 2: output ended, expected '2'"),
    (CheckerKind.LINES, b"a\nb\nc\n", b"a\nb\n", "line 3: extra output 'c'"),
    (CheckerKind.LINES, b"a\n", b"a\nb\n", "line 2: output ended, expected 'b'"),
    # A unit that is a prefix of the other's is a different unit, not the text's end.
    (CheckerKind.TOKENS, b"1 2", b"1 23", "token 2: '2' instead of '23'"),
    (CheckerKind.TOKENS, b"1 23", b"1 2", "token 2: '23' instead of '2'"),
    (CheckerKind.LINES, b"ab\n", b"abc\n", "line 1: 'ab' instead of 'abc'"),
    (CheckerKind.EXACT, b"ab", b"ac", "bytes differ at offset 1"),
    (CheckerKind.FLOAT, b"1 2.5", b"1 2", "token 2: '2.5' instead of '2'"),
])
def test_messages_name_the_first_difference(kind: CheckerKind, output: bytes, answer: bytes, message: str) -> None:
    assert check(kind, output, answer).message == message


def test_a_long_token_is_shortened_in_the_message() -> None:
    message = check(CheckerKind.TOKENS, b"x" * 1000, b"y").message
    assert len(message) < 100 and message.endswith("instead of 'y'")


@given(tokens, st.lists(whitespace, min_size=40, max_size=40))
def test_tokens_ignore_how_whitespace_is_laid_out(words: list[bytes], gaps: list[bytes]) -> None:
    answer = b" ".join(words) + b"\n"
    output = gaps[0] + b"".join(w + g for w, g in zip(words, gaps[1:], strict=False))
    assert check(CheckerKind.TOKENS, output, answer).status is ACCEPTED
    assert check(CheckerKind.FLOAT, output, answer).status is ACCEPTED


@given(tokens, st.integers(min_value=0, max_value=19), st.binary(min_size=1, max_size=4))
def test_tokens_catch_any_changed_token(words: list[bytes], index: int, extra: bytes) -> None:
    if not words:
        return
    changed = list(words)
    changed[index % len(words)] += re.sub(rb"\s", b"y", extra)
    assert check(CheckerKind.TOKENS, b" ".join(changed), b" ".join(words)).status is WRONG


def test_a_huge_wrong_output_is_decided_quickly() -> None:
    """A solution flooding its output limit must not make the checker the slow part:
    64 MiB of tokens against a short answer is decided by whole-string passes."""
    flood = b"7 " * (32 << 20)
    assert check(CheckerKind.TOKENS, flood, b"7\n").message == "token 2: extra output '7'"
    assert check(CheckerKind.LINES, flood, b"7\n").status is WRONG
    assert check(CheckerKind.EXACT, flood, b"7\n").status is WRONG
