"""The Sandboxfile parser, its variables, and .dockerignore's rules: pure logic."""

from __future__ import annotations

import pytest

from sandbox.build.context import IgnoreRules
from sandbox.build.sandboxfile import (
    SandboxfileError,
    assignments,
    command,
    copy_arguments,
    parse,
    split_stages,
    substitute,
    words,
)


def test_lines_join_comments_drop_and_keywords_are_case_insensitive():
    text = "# syntax=docker/dockerfile:1\nfrom base:1 as Build\nrun echo a \\\n  # a comment inside\n  && echo b\n\nCMD x"
    instructions = parse(text)
    assert [(i.keyword, i.text, i.line) for i in instructions] == [
        ("FROM", "base:1 as Build", 2), ("RUN", "echo a && echo b", 3), ("CMD", "x", 7)]
    stages = split_stages(instructions).stages
    assert (stages[0].base, stages[0].name, len(stages[0].instructions)) == ("base:1", "build", 2)


@pytest.mark.parametrize(("text", "message"), [
    ("FROM a\nHEALTHCHECK CMD true", "line 2: HEALTHCHECK is not supported"),
    ("ENV A=1\nFROM a", "line 1: ENV before the first FROM"),
    ("ARG X", "no FROM"),
    ("FROM a b", "FROM takes an image"),
    ("FROM a AS x\nFROM b AS x", "two stages have the same name"),
    ("FROM a\nCOPY", "COPY needs arguments"),
])
def test_what_cannot_be_built_is_refused_with_its_line(text, message):
    with pytest.raises(SandboxfileError, match=message):
        split_stages(parse(text))


def test_variables_are_replaced_outside_single_quotes_only():
    variables = {"A": "1", "EMPTY": ""}
    assert substitute("$A ${A} ${B:-dflt} ${A:+alt} ${EMPTY:-e} '$A' \"$A\"", variables, 1) == \
        "1 1 dflt alt e '$A' \"1\""
    assert words(substitute("a\\$A b", variables, 1), 1) == ["a$A", "b"]
    with pytest.raises(SandboxfileError, match="names no variable"):
        substitute("cost $5", variables, 1)


def test_env_and_label_forms():
    assert assignments('A=1 B="two words" C=', 1, "ENV") == [("A", "1"), ("B", "two words"), ("C", "")]
    assert assignments("NAME some value here", 1, "ENV") == [("NAME", "some value here")]
    with pytest.raises(SandboxfileError):
        assignments("justakey", 1, "LABEL")


def test_commands_json_or_shell_form():
    assert command('["python3", "-m", "grader"]', 1) == ["python3", "-m", "grader"]
    assert command("make test", 1) == ["/bin/sh", "-c", "make test"]
    assert command("[not json", 1) == ["/bin/sh", "-c", "[not json"]


def test_copy_arguments_take_from_and_the_json_form():
    parsed = copy_arguments('--from=Build ["a b", "c", "/dest/"]', 1, "COPY")
    assert (parsed.sources, parsed.destination, parsed.from_stage) == (["a b", "c"], "/dest/", "build")
    with pytest.raises(SandboxfileError, match="--chown is not supported"):
        copy_arguments("--chown=1:1 a /b", 1, "COPY")
    with pytest.raises(SandboxfileError, match="--from is not supported"):
        copy_arguments("--from=x a /b", 1, "ADD")
    with pytest.raises(SandboxfileError, match="a source and a destination"):
        copy_arguments("onlyone", 1, "COPY")


def test_dockerignore_rules_as_docker_reads_them():
    rules = IgnoreRules("# comment\n*.log\n!keep.log\nsecret/\n**/*.pyc\n/build\nd?ta[0-9].txt\n")
    ignored = {path: rules.ignored(path) for path in (
        "a.log", "keep.log", "x/a.log", "secret", "secret/key", "o.pyc", "m/n/o.pyc", "build/x", "src/build",
        "data1.txt", "data.txt")}
    assert ignored == {"a.log": True, "keep.log": False, "x/a.log": False, "secret": True, "secret/key": True,
                       "o.pyc": True, "m/n/o.pyc": True, "build/x": True, "src/build": False, "data1.txt": True,
                       "data.txt": False}
