"""Docker's reference normalisation."""

from __future__ import annotations

import pytest

from sandbox.images.errors import BadReference
from sandbox.images.reference import parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, expected", [
    ("python", "docker.io/library/python:latest"),
    ("python:3.12", "docker.io/library/python:3.12"),
    ("judge/python:3.11", "docker.io/judge/python:3.11"),
    ("index.docker.io/library/gcc:13", "docker.io/library/gcc:13"),
    ("ghcr.io/org/judge-cpp", "ghcr.io/org/judge-cpp:latest"),
    ("localhost/x", "localhost/x:latest"),
    ("localhost:5000/a/b:c", "localhost:5000/a/b:c"),
    ("127.0.0.1:5000/judge/python:3.11", "127.0.0.1:5000/judge/python:3.11"),
    (f"ghcr.io/org/judge-cpp@{DIGEST}", f"ghcr.io/org/judge-cpp@{DIGEST}"),
    (f"python:3@{DIGEST}", f"docker.io/library/python:3@{DIGEST}"),
])
def test_normalisation(text, expected):
    assert str(parse(text)) == expected


def test_parts_and_what_to_ask_for():
    ref = parse(f"localhost:5000/a/b:c@{DIGEST}")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == ("localhost:5000", "a/b", "c", DIGEST)
    assert ref.version == DIGEST
    assert parse("python").api_host == "registry-1.docker.io"


@pytest.mark.parametrize("text", ["", "UPPER/case", "a//b", "a:b:c", "x@sha256:short", "a/../b", " py", "py:tag!", "/abs"])
def test_invalid_references(text):
    with pytest.raises(BadReference):
        parse(text)
