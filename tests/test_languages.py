"""Every language preset in the image built from Debian's packages: hello world, threads,
stdin, a compile error, a runtime error - compiled in `compile`, run in `default`.

The image is built once per machine (``sandbox languages build``: mmdebstrap, cached
under ~/.cache/sandbox-images by recipe hash, then imported into the user's store);
later runs find it in the store and start at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.languages import load_preset, preset_names, run_source
from sandbox.languages_image import build
from sandbox.models import Blob, Limits, Status

SOURCES = Path(__file__).parent / "languages"
LANGUAGES = ["c", "cpp", "python3", "java", "go", "rust", "javascript"]
EXT = {"c": "c", "cpp": "cpp", "python3": "py", "java": "java", "go": "go", "rust": "rs", "javascript": "js"}
FAILURE_TEXT = {"c": b"failing", "cpp": b"failing", "python3": b"RuntimeError: failing",
                "java": b"IllegalStateException: failing", "go": b"panic: failing", "rust": b"failing",
                "javascript": b"Error: failing"}


@pytest.fixture(scope="session")
def language_image() -> str:
    return build(lambda line: None)


@pytest.fixture
def run_lang(runner, language_image):
    def _run(lang: str, case: str, stdin: bytes | None = None):
        try:
            return run_source(runner, load_preset(lang), SOURCES / lang / f"{case}.{EXT[lang]}",
                              stdin=None if stdin is None else Blob(data=stdin), limits=Limits(memory="512M"))
        finally:
            runner.tidy()

    return _run


def test_every_preset_is_covered():
    assert preset_names() == sorted(LANGUAGES)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_language(run_lang, lang):
    hello = run_lang(lang, "hello")
    assert hello.status is Status.OK, (hello.compile, hello.run)
    assert hello.run.stdout == b"hello, world\n"

    threads = run_lang(lang, "threads")
    assert threads.status is Status.OK, (threads.compile.stderr, threads.run)
    assert threads.run.stdout == b"threads 10\n"

    stdin = run_lang(lang, "stdin", stdin=b"40 2\n")
    assert stdin.status is Status.OK, stdin.run
    assert stdin.run.stdout == b"42\n"

    broken = run_lang(lang, "compile_error")
    assert broken.status is Status.COMPILE_ERROR, broken.compile
    assert broken.run is None and broken.compile.stderr  # the compiler's diagnostics, separately

    failing = run_lang(lang, "runtime_error")
    assert failing.status in (Status.RUNTIME_ERROR, Status.SIGNALED), failing.run
    assert FAILURE_TEXT[lang] in failing.run.stderr, failing.run.stderr
