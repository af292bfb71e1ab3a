"""Every language preset in the image built from Debian's packages: hello world, threads,
stdin, a compile error, a runtime error - compiled in `compile`, run in `default`.

The image is built once per machine (``sandbox languages build``: mmdebstrap, cached
under ~/.cache/sandbox-images by recipe hash, then imported into the user's store);
later runs find it in the store and start at once.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from workerutil import SANDBOX_CLI

from sandbox.languages import RunnerStages, load_preset, preset_names, run_source
from sandbox.models import Blob, Limits, Status
from worker.client import Client

SOURCES = Path(__file__).parent / "languages"
LANGUAGES = ["c", "cpp", "python3", "java", "go", "rust", "javascript"]
EXT = {"c": "c", "cpp": "cpp", "python3": "py", "java": "java", "go": "go", "rust": "rs", "javascript": "js"}
FAILURE_TEXT = {"c": b"failing", "cpp": b"failing", "python3": b"RuntimeError: failing",
                "java": b"IllegalStateException: failing", "go": b"panic: failing", "rust": b"failing",
                "javascript": b"Error: failing"}


@pytest.fixture
def run_lang(runner, language_image):
    def _run(lang: str, case: str, stdin: bytes | None = None):
        try:
            return run_source(RunnerStages(runner), load_preset(lang), SOURCES / lang / f"{case}.{EXT[lang]}",
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


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*SANDBOX_CLI, *args], capture_output=True, timeout=300)


def test_cli_languages_lists_presets_with_their_image(language_image):
    rows = json.loads(cli("languages", "--json").stdout)
    assert [row["language"] for row in rows] == sorted(LANGUAGES)
    assert all(row["image"] == language_image and row["present"] for row in rows)


def test_cli_run_lang_compiles_then_runs(language_image, tmp_path):
    stdin = tmp_path / "in.txt"
    stdin.write_text("40 2\n")
    done = cli("run", "--lang", "cpp", "--source", str(SOURCES / "cpp" / "stdin.cpp"), "--stdin", str(stdin))
    assert (done.returncode, done.stdout) == (0, b"42\n"), done.stderr
    broken = cli("run", "--lang", "cpp", "--source", str(SOURCES / "cpp" / "compile_error.cpp"))
    assert broken.returncode == 1 and broken.stdout == b""
    assert broken.stderr.startswith(b"== compile (cpp) ==\n") and b"undefined_name" in broken.stderr
    assert broken.stderr.endswith(b"sandbox: compile_error (compile)\n")
    as_json = json.loads(cli("run", "--json", "--lang", "python3", "--source",
                             str(SOURCES / "python3" / "compile_error.py")).stdout)
    assert as_json["status"] == "compile_error" and as_json["run"] is None
    assert "SyntaxError" in as_json["compile"]["stderr"]


def test_compiler_options_and_program_arguments(language_image):
    """--compile-option reaches the compiler (a define changes the program), what follows
    -- reaches the program, and an option off the preset's allow-list never compiles."""
    source = str(SOURCES / "cpp" / "options.cpp")
    plain = cli("run", "--lang", "cpp", "--source", source)
    assert (plain.returncode, plain.stdout) == (0, b"greeting off\n"), plain.stderr
    both = cli("run", "--lang", "cpp", "--source", source, "--compile-option=-DGREETING",
               "--compile-option=-O0", "--", "one", "two words")
    assert (both.returncode, both.stdout) == (0, b"greeting on\narg one\narg two words\n"), both.stderr
    refused = cli("run", "--lang", "cpp", "--source", source, "--compile-option=-fplugin=/tmp/x.so")
    assert refused.returncode == 125 and refused.stdout == b""
    assert b"'-fplugin=/tmp/x.so' is not allowed for cpp" in refused.stderr


def multi_file_programs(directory: Path) -> dict[str, Path]:
    """A C++ program whose main includes a header of its own, and a Python program that
    imports a module of its own and reads a data file and a variable: what --file and
    --env carry into the compile and the run."""
    (directory / "main.cpp").write_text('#include "answer.h"\n#include <cstdlib>\n#include <iostream>\n'
                                        'int main() { std::cout << answer() << getenv("WHO") << "\\n"; }\n')
    (directory / "answer.h").write_text("inline int answer() { return 42; }\n")
    (directory / "main.py").write_text("import os, helper\nprint(helper.read('/work/data.txt'), os.environ['WHO'])\n")
    (directory / "helper.py").write_text("def read(path):\n    return open(path).read().strip()\n")
    (directory / "data.txt").write_text("data\n")
    return {name: directory / name for name in ("main.cpp", "answer.h", "main.py", "helper.py", "data.txt")}


def multi_file_flags(files: dict[str, Path]) -> list[list[str]]:
    """The two programs' flags for run and submit, the expected output last."""
    return [
        ["--lang", "cpp", "--source", str(files["main.cpp"]), "--file", f"{files['answer.h']}:/work/answer.h",
         "--env", "WHO=!"],
        ["--lang", "python3", "--source", str(files["main.py"]), "--file", f"{files['helper.py']}:/work/helper.py",
         "--file", f"{files['data.txt']}:/work/data.txt", "--env", "WHO=env"],
    ]


def test_lang_takes_files_and_env_into_both_stages(language_image, tmp_path):
    files = multi_file_programs(tmp_path)
    cpp, python = multi_file_flags(files)
    done = cli("run", *cpp)
    assert (done.returncode, done.stdout) == (0, b"42!\n"), done.stderr
    done = cli("run", *python)
    assert (done.returncode, done.stdout) == (0, b"data env\n"), done.stderr
    # A --file may not take the place of the source or of the compile's output.
    clash = cli("run", "--lang", "cpp", "--source", str(files["main.cpp"]), "--file", f"{files['answer.h']}:/work/main")
    assert clash.returncode == 125 and b"--file: /work/main is the cpp preset's source or build output" in clash.stderr


def test_submit_lang_compiles_and_runs_through_the_worker(language_image, worker, tmp_path):
    files = multi_file_programs(tmp_path)
    cpp, python = multi_file_flags(files)
    done = cli("submit", "--socket", worker.socket_path, *cpp)
    assert (done.returncode, done.stdout) == (0, b"42!\n"), done.stderr
    as_json = json.loads(cli("submit", "--socket", worker.socket_path, "--json", *python).stdout)
    assert as_json["status"] == "ok" and as_json["run"]["stdout"] == "data env\n"
    broken = cli("submit", "--socket", worker.socket_path, "--lang", "cpp", "--source",
                 str(SOURCES / "cpp" / "compile_error.cpp"))
    assert broken.returncode == 1 and broken.stderr.startswith(b"== compile (cpp) ==\n")
    # Both stages ran as the worker's jobs (2 + 2 + a compile alone), not in this process.
    with Client(worker.socket_path) as client:
        assert client.stats()["submitted"] == 5


def test_without_the_language_image_the_remedy_is_named(tmp_path):
    """Listing exits 1 when no language is usable; a --lang run says to build the image."""
    env = {**os.environ, "SANDBOX_IMAGE_STORE": str(tmp_path / "empty-store")}
    listed = subprocess.run([*SANDBOX_CLI, "languages"], capture_output=True, env=env, timeout=60)
    assert listed.returncode == 1 and b"MISSING" in listed.stdout
    assert b"sandbox languages build" in listed.stderr
    assert subprocess.run([*SANDBOX_CLI, "languages", "--json"], capture_output=True, env=env,
                          timeout=60).returncode == 1
    source = tmp_path / "main.py"
    source.write_text("print(1)\n")
    done = subprocess.run([*SANDBOX_CLI, "run", "--lang", "python3", "--source", str(source)], capture_output=True,
                          env=env, timeout=60)
    assert done.returncode == 125
    assert b"--lang: the language image judge/languages:" in done.stderr
    assert b"build it with 'sandbox languages build'" in done.stderr


def test_compile_violations_are_reported_like_any_other(runner, language_image, tmp_path):
    # A "compiler" that calls ptrace: the compile stage is a named violation, no run.
    source = tmp_path / "evil.py"
    source.write_text("x = 1\n")
    preset = load_preset("python3")
    preset.compile = ["python3", "-c", "import ctypes; ctypes.CDLL(None).syscall(101, 0, 0, 0)"]
    try:
        outcome = run_source(RunnerStages(runner), preset, source)
    finally:
        runner.tidy()
    assert outcome.status is Status.SYSCALL_VIOLATION and outcome.run is None
    assert outcome.compile.violation == {"syscall": "ptrace", "number": 101, "arch": "x86_64"}
