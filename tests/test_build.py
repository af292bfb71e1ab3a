"""``sandbox build`` end to end: a Sandboxfile on the busybox test image, built by the CLI
into a fresh store and run with ``sandbox run``; the cache, a failing RUN, hostile
contexts, multi-stage builds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from imagebuild import busybox_entries, layer_tar, oci_layout
from workerutil import SANDBOX_CLI

SANDBOXFILE = """\
# the grader's image
ARG GREETING=hello
FROM base:1
ARG GREETING
ENV GREETING=$GREETING APP=/srv/app
WORKDIR $APP
ARG LEVEL=basic
COPY app/ ./
COPY data.txt /srv/data/
RUN echo made > /tmp/made && mkdir -p /var/x && echo y > /var/x/y && id -u > /uid && \\
    rm /etc/passwd && touch gone && rm gone && /bin/busybox chown 42:42 /tmp/made && /bin/busybox chmod 600 /tmp/made
RUN cat /tmp/made > /var/made && test ! -e gone && echo "$LEVEL" > /var/level
CMD ["sh", "main.sh"]
"""
MAIN = """\
cat /var/made /var/x/y /uid /var/level
echo "level=${LEVEL:-unset}"
test -e /etc/passwd || echo passwd-gone
pwd
echo $GREETING
ls /srv/app /srv/data
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SANDBOX_CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def base(image_store: Path) -> Path:
    """The busybox test image stored as base:1; returns the store's directory."""
    layout = oci_layout(image_store / "layout", [layer_tar(busybox_entries())])
    done = cli("import", str(layout), "base:1")
    assert done.returncode == 0, done.stderr
    return image_store / "store"


def context(root: Path, sandboxfile: str, files: dict[str, str]) -> Path:
    directory = root / "context"
    directory.mkdir(exist_ok=True)
    (directory / "Sandboxfile").write_text(sandboxfile)
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


def grader_context(root: Path) -> Path:
    return context(root, SANDBOXFILE, {"app/main.sh": MAIN, "app/lib.txt": "lib", "app/secret.txt": "no",
                                       "data.txt": "data", ".dockerignore": "# not for the image\napp/secret.txt\n"})


@pytest.mark.kernel
def test_a_built_image_runs_with_its_files_and_config(base):
    directory = grader_context(base.parent)
    done = cli("build", "-t", "grader:1", "--build-arg", "GREETING=hi", str(directory))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("docker.io/library/grader:1 sha256:"), done.stdout
    assert "10 steps: 0 cached, 4 written" in done.stderr
    ran = cli("run", "--image", "grader:1")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split("\n") == ["made", "y", "0", "basic", "level=unset", "passwd-gone", "/srv/app", "hi", "/srv/app:", "lib.txt",
                                      "main.sh", "", "/srv/data:", "data.txt", ""]
    assert not list((base / "tmp").iterdir()), "the build left its workspace"


@pytest.mark.kernel
def test_a_second_build_takes_every_layer_from_the_cache(base):
    directory = grader_context(base.parent)
    first = cli("build", "-t", "grader:1", str(directory))
    assert first.returncode == 0, first.stderr
    second = cli("build", "-t", "grader:2", str(directory))
    assert second.returncode == 0, second.stderr
    assert "10 steps: 4 cached, 0 written" in second.stderr
    # A changed source is a miss for its step and every layer after it.
    (directory / "data.txt").write_text("new data")
    third = cli("build", "-t", "grader:3", str(directory))
    assert "10 steps: 1 cached, 3 written" in third.stderr, third.stderr
    ran = cli("run", "--image", "grader:3", "--", "cat", "/srv/data/data.txt")
    assert ran.stdout == "new data"


@pytest.mark.kernel
def test_a_failing_run_leaves_no_image_and_no_workspace(base):
    directory = context(base.parent, "FROM base:1\nCOPY data.txt /\nRUN echo partial > /partial && false\n",
                        {"data.txt": "data"})
    done = cli("build", "-t", "broken:1", str(directory))
    assert done.returncode == 125
    assert "exit status 1" in done.stderr
    listed = cli("images")
    assert "broken" not in listed.stdout
    assert not list((base / "tmp").iterdir()), "the failed build left its workspace"


@pytest.mark.kernel
def test_multi_stage_copies_only_what_it_names(base):
    sandboxfile = ("FROM base:1 AS builder\nRUN mkdir /out && echo built > /out/result && echo junk > /junk\n"
                   "RUN rm /etc/passwd && echo other > /etc/other\n"
                   "FROM base:1\nCOPY --from=builder /out /opt/\nCOPY --from=builder /etc /etc-then/\n")
    done = cli("build", "-t", "staged:1", str(context(base.parent, sandboxfile, {})))
    assert done.returncode == 0, done.stderr
    ran = cli("run", "--image", "staged:1", "--", "sh", "-c", "cat /opt/result; test -e /junk || echo no-junk; "
                                                             "ls /etc-then")
    # The builder stage's view of /etc, its whiteout applied: passwd deleted, other added.
    assert ran.stdout == "built\nno-junk\nother\n", ran.stderr
    inspected = cli("inspect", "staged:1")
    assert inspected.stdout.count('"diff_id"') == 3  # the base's layer and the two COPYs


@pytest.mark.kernel
@pytest.mark.parametrize("case", ["dotdot", "symlinked_directory", "huge_file", "url"])
def test_hostile_contexts_are_refused(base, case):
    files = {"data.txt": "data"}
    line = {"dotdot": "COPY ../outside /", "symlinked_directory": "COPY linked/file /",
            "huge_file": "COPY huge /", "url": "ADD http://127.0.0.1:1/x /"}[case]
    directory = context(base.parent, f"FROM base:1\n{line}\n", files)
    (base.parent / "outside").write_text("host secret")
    if case == "symlinked_directory":
        os.symlink(str(base.parent), directory / "linked")
    if case == "huge_file":
        (base.parent / "images.toml").write_text('[limits]\nmax_bytes = "1M"\n')
        with open(directory / "huge", "wb") as huge:
            huge.truncate(2 << 20)  # sparse: the cap is by size, nothing read
    done = cli("build", "-t", "hostile:1", str(directory))
    assert done.returncode == 125, done.stdout
    expected = {"dotdot": "'..' leaves the build context", "symlinked_directory": "reached through a symlink",
                "huge_file": "more than 1048576 bytes", "url": "local paths only"}[case]
    assert expected in done.stderr
    assert "Sandboxfile line 2" in done.stderr
    assert "hostile" not in cli("images").stdout


@pytest.mark.kernel
def test_a_symlink_in_the_context_is_copied_as_a_symlink_never_followed(base):
    directory = context(base.parent, "FROM base:1\nCOPY tree /tree/\n", {"tree/file": "in"})
    (base.parent / "outside").write_text("host secret")
    os.symlink(str(base.parent / "outside"), directory / "tree" / "escape")
    done = cli("build", "-t", "links:1", str(directory))
    assert done.returncode == 0, done.stderr
    ran = cli("run", "--image", "links:1", "--", "sh", "-c", "readlink /tree/escape; cat /tree/escape || true")
    assert ran.stdout.split("\n")[0] == str(base.parent / "outside")
    assert "host secret" not in ran.stdout


@pytest.mark.kernel
def test_gc_drops_the_cache_of_layers_no_image_keeps(base):
    directory = context(base.parent, "FROM base:1\nCOPY data.txt /\n", {"data.txt": "data"})
    assert cli("build", "-t", "kept:1", str(directory)).returncode == 0
    assert len(list((base / "build-cache").iterdir())) == 1
    assert cli("rmi", "kept:1").returncode == 0
    assert cli("gc").returncode == 0
    assert not list((base / "build-cache").iterdir())
    again = cli("build", "-t", "kept:1", str(directory))
    assert "2 steps: 0 cached, 1 written" in again.stderr, again.stderr


@pytest.mark.kernel
def test_a_step_killed_mid_run_leaves_no_process_and_no_workspace(base):
    """The step's process killed before its own clean-up (as the OOM killer might): its
    command dies with it, and the builder removes what it left - files of a subordinate
    id in a 0700 directory, which the supervisor cannot remove as itself."""
    sandboxfile = ("FROM base:1\nRUN mkdir /d && touch /d/f && /bin/busybox chown -R 5:5 /d && "
                   "/bin/busybox chmod 700 /d && touch /ready && sleep 600\n")
    build = subprocess.Popen([*SANDBOX_CLI, "build", "-t", "killed:1", str(context(base.parent, sandboxfile, {}))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list((base / "tmp").glob("run-*/upper/ready")):
            assert time.monotonic() < deadline and build.poll() is None, "the step never got to its sleep"
            time.sleep(0.05)
        tasks = Path(f"/proc/{build.pid}/task")
        steps = [int(pid) for task in tasks.iterdir() for pid in (task / "children").read_text().split()]
        assert len(steps) == 1
        os.kill(steps[0], signal.SIGKILL)
        _, stderr = build.communicate(timeout=60)
    finally:
        build.kill()
        build.wait()
    assert build.returncode == 125, stderr
    assert "killed:1" not in cli("images").stdout
    assert not list((base / "tmp").iterdir()), "the killed step left its workspace"


@pytest.mark.kernel
@pytest.mark.parametrize(("flags", "command", "expected"), [
    (["--timeout", "1s"], "touch /started && sleep 600", "ran past its time limit (1 s)"),
    (["--memory", "16M"], "dd if=/dev/zero of=/dev/null bs=64M count=1", "out of memory"),
])
def test_a_run_step_is_held_to_the_build_limits(base, flags, command, expected):
    """A RUN step runs in a cgroup with the build's limits: past its wall time or its
    memory it fails the build, naming the limit, and leaves no image, no process and no
    workspace behind."""
    directory = context(base.parent, f"FROM base:1\nRUN {command}\n", {})
    done = cli("build", *flags, "-t", "limited:1", str(directory))
    assert done.returncode == 125, done.stderr
    assert expected in done.stderr
    assert "limited:1" not in cli("images").stdout
    assert not list((base / "tmp").iterdir()), "the step left its workspace"


def test_a_build_limit_flag_is_checked_and_named():
    done = cli("build", "--memory", "lots", "-t", "x:1", ".")
    assert done.returncode != 0
    assert "--memory" in done.stderr


def test_an_image_built_on_the_language_image_runs_judges_and_language_runs(language_image, tmp_path):
    """A course's image - the language image plus a module its programs import - built
    with a Sandboxfile, then named by ``sandbox judge --image`` and ``sandbox run --lang
    --image``: the submission compiles and runs there (without the image, the import
    fails)."""
    directory = context(tmp_path, f"FROM {language_image}\nCOPY course.py /usr/local/lib/python3.11/dist-packages/\n",
                        {"course.py": "def add(a, b):\n    return a + b\n"})
    solution = tmp_path / "sum_course.py"
    solution.write_text("import course\na, b = map(int, input().split())\nprint(course.add(a, b))\n")
    built = cli("build", "-t", "course-python:1", str(directory))
    assert built.returncode == 0, built.stderr
    try:
        problem = str(Path(__file__).parent / "problems" / "sum")
        judged = cli("judge", problem, "--lang", "python3", "--source", str(solution), "--image", "course-python:1",
                     "--json")
        assert judged.returncode == 0, judged.stderr
        assert json.loads(judged.stdout)["verdict"] == "accepted", judged.stdout
        without = cli("judge", problem, "--lang", "python3", "--source", str(solution), "--json")
        assert json.loads(without.stdout)["verdict"] == "runtime_error", without.stdout
        (tmp_path / "in.txt").write_text("20 22\n")
        ran = cli("run", "--lang", "python3", "--image", "course-python:1", "--source", str(solution),
                  "--stdin", str(tmp_path / "in.txt"))
        assert (ran.returncode, ran.stdout) == (0, "42\n"), ran.stderr
    finally:
        cli("rmi", "course-python:1")


@pytest.mark.kernel
def test_a_build_asked_for_egress_gives_its_run_steps_the_stack(base):
    """``--network egress``: a RUN step's namespace has the stack's link with its default
    route and the private ranges unreachable, and its /etc/resolv.conf names the stack's
    resolver (bound over the image's: the layer keeps the image's own). Without it, a
    step has no route at all. (What egress reaches is the egress jobs' tests': they run
    in a network of the test's own, where a build has no subordinate ids to be root of.)"""
    sandboxfile = "FROM base:1\nRUN cat /proc/net/route > /routes && cat /etc/resolv.conf > /resolver\n"
    directory = context(base.parent, sandboxfile, {})
    with_egress = cli("build", "--network", "egress", "--allow-net", "10.9.0.0/16", "-t", "online:1", str(directory))
    assert with_egress.returncode == 0, with_egress.stderr
    shown = cli("run", "--image", "online:1", "--", "sh", "-c", "cat /routes /resolver")
    routes, resolver = shown.stdout.split("nameserver", 1)
    table = [line.split()[:2] for line in routes.splitlines()[1:]]  # (interface, destination in hex)
    assert ["tap0", "00000000"] in table, routes  # the default route, through the stack
    assert any(destination == "0000000A" for _, destination in table), routes  # 10.0.0.0/8 cut off
    assert resolver.strip() == "10.0.2.3"
    offline = cli("build", "-t", "offline:1", str(context(base.parent, "FROM base:1\nRUN cat /proc/net/route > /none\n",
                                                          {})))
    assert offline.returncode == 0, offline.stderr
    assert cli("run", "--image", "offline:1", "--", "cat", "/none").stdout.splitlines()[1:] == []


def test_allowed_ranges_need_egress_in_a_build():
    done = cli("build", "--allow-net", "10.0.0.0/8", "-t", "x:1", ".")
    assert done.returncode != 0 and "--network egress" in done.stderr
