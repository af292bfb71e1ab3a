"""A session's writable layer becomes an image (``Session.commit``, the worker's
``session_commit``, ``POST /v1/sessions/ID/commit``, ``sandbox commit``): what its execs changed - a file made, a file of
the image removed (a whiteout), a directory of the image replaced (an opaque one) - is
exactly what a job on the new image sees, the layer says so in the tar's own terms, and
the image travels through a real registry unchanged. A host-image session, or one whose
exec runs, is refused."""

from __future__ import annotations

import gzip
import os
import subprocess
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from imagebuild import Entry, busybox_entries, layer_tar, oci_layout
from test_http import start_http  # noqa: F401 - a fixture used here
from test_images_registry import cli as image_cli
from test_images_registry import env, images_work, registry  # noqa: F401 - fixtures used here
from workerutil import SANDBOX_CLI

from sandbox.images.config import load
from sandbox.images.errors import ImageNotFound
from sandbox.images.pull import pull
from sandbox.images.push import push
from sandbox.images.store import ImageRecord, Store
from sandbox.models import Job, SessionSpec, Status
from sandbox.runner import Runner
from sandbox.session import CommitRefused, Session, SessionGone
from worker.client import Client, WorkerError

pytestmark = pytest.mark.cgroup

DIR = tarfile.DIRTYPE
# tmpfs stores user.* xattrs - so an overlay upper on a session's scratch can hold an
# opaque directory - from Linux 6.6 on (the cgroup v2 guest runs 6.1).
OPAQUE_ON_TMPFS = tuple(map(int, os.uname().release.split("-")[0].split(".")[:2])) >= (6, 6)
# What the execs change: one file made, one of the image's removed, and where the kernel
# can say it, one of its directories replaced by a new one of the same name (before 6.6
# that fails in the exec, with EIO: test_a_commit_is_the_sessions_changes...).
MAKE_AND_REMOVE = "echo made > /made && rm /motd"
REPLACE_DIRECTORY = "rm -rf /dir && mkdir /dir && echo fresh > /dir/fresh"
CHANGES = f"{MAKE_AND_REMOVE} && {REPLACE_DIRECTORY}" if OPAQUE_ON_TMPFS else MAKE_AND_REMOVE
# What a job on the committed image sees of those changes, and of what it kept.
LOOK = "cat /made; test -e /motd || echo motd-gone; ls /dir; cat /kept"
SEEN = b"made\nmotd-gone\n" + (b"fresh\n" if OPAQUE_ON_TMPFS else b"old\n") + b"kept\n"
# The committed layer: exactly the changes, in the tar's terms.
LAYER_ENTRIES = {"made", ".wh.motd"} | ({"dir", "dir/.wh..wh..opq", "dir/fresh"} if OPAQUE_ON_TMPFS else set())


def sh(script: str) -> Job:
    return Job(cmd=["sh", "-c", script])


@pytest.fixture
def base_image(env: Callable[..., Path], tmp_path: Path) -> Store:  # noqa: F811 - the imported fixture
    """``base:1``, imported into this test's store: busybox, a file and a directory the
    execs change, and one they keep. The store. (An exec runs as an id of its own, which
    owns the root directory but not the image's files: the directory it empties is
    writable to all.)"""
    store = env()
    layer = layer_tar(busybox_entries() + [
        Entry("motd", data=b"from the image\n"), Entry("dir", DIR, mode=0o777), Entry("dir/old", data=b"old\n"),
        Entry("kept", data=b"kept\n"),
    ])
    done = image_cli("import", str(oci_layout(tmp_path / "layout", [layer])), "base:1")
    assert done.returncode == 0, done.stderr
    return Store(store)


def layer_names(store: Store, record: ImageRecord) -> set[str]:
    """The entries of the image's top layer, as its blob holds them."""
    with gzip.open(store.blob_path(record.layers[-1].digest)) as raw, tarfile.open(fileobj=raw) as tar:
        return set(tar.getnames())


def test_a_commit_is_the_sessions_changes_and_travels_through_a_registry(
        base_image, runner: Runner, registry, tmp_path):  # noqa: F811 - the imported fixture
    session = Session(runner, SessionSpec(image="base:1"))
    try:
        changed = session.exec(sh(CHANGES))
        assert changed.status is Status.OK, changed.stderr
        committed = session.commit("committed:1")
        after = session.exec(sh("cat /made"))  # the session goes on
        assert (after.status, after.stdout) == (Status.OK, b"made\n"), after
        if not OPAQUE_ON_TMPFS:  # refused in the exec, so never in a commit half made
            replaced = session.exec(sh(REPLACE_DIRECTORY))
            assert replaced.status is Status.RUNTIME_ERROR, replaced
            assert b"I/O error" in replaced.stderr or b"Input/output error" in replaced.stderr, replaced.stderr
    finally:
        session.delete()
        runner.tidy()
    with pytest.raises(SessionGone):
        session.commit("too-late:1")
    assert committed.reference == "docker.io/library/committed:1"
    _, record = base_image.lookup("committed:1")
    assert record.id == committed.image_id
    _, parent = base_image.lookup("base:1")
    assert [layer.digest for layer in record.layers[:-1]] == [layer.digest for layer in parent.layers]
    assert layer_names(base_image, record) == LAYER_ENTRIES

    seen = runner.run(Job(cmd=["sh", "-c", LOOK], image="committed:1", require_cgroups=True))
    runner.tidy()
    assert (seen.status, seen.stdout) == (Status.OK, SEEN), seen
    untouched = runner.run(Job(cmd=["sh", "-c", "cat /motd; ls /dir"], image="base:1", require_cgroups=True))
    runner.tidy()
    assert untouched.stdout == b"from the image\nold\n", untouched

    destination = f"{registry.host}/test/committed:1"
    push(base_image, load(), "committed:1", destination)
    fresh = Store(tmp_path / "fresh")
    _, pulled = pull(fresh, load(), destination)
    assert fresh.read_blob(pulled.manifest_digest) == base_image.read_blob(record.manifest_digest)
    assert [layer.digest for layer in pulled.layers] == [layer.digest for layer in record.layers]
    assert [layer.diff_id for layer in pulled.layers] == [layer.diff_id for layer in record.layers]


def test_a_host_image_session_is_not_committed(runner: Runner, image_store):
    session = Session(runner, SessionSpec())
    try:
        assert session.exec(sh("echo x > /work/x")).status is Status.OK
        with pytest.raises(CommitRefused, match="host image"):
            session.commit("host-copy:1")
    finally:
        session.delete()
        runner.tidy()
    assert not (image_store / "store" / "refs").exists() or not list((image_store / "store" / "refs").iterdir())


def test_a_commit_while_an_exec_runs_is_refused(base_image, runner: Runner):
    session = Session(runner, SessionSpec(image="base:1"))
    started = threading.Event()
    outcome: list[object] = []
    try:
        running = threading.Thread(target=lambda: outcome.append(
            session.exec(sh("echo late > /late && echo written && exec sleep 60"),
                         on_output=lambda stream, offset, data: started.set())))
        running.start()
        assert started.wait(30)
        with pytest.raises(CommitRefused, match="exec is running"):
            session.commit("mid-exec:1")
        assert session.stop(grace_s=0)
        running.join(30)
        committed = session.commit("after-exec:1")  # once it has ended
    finally:
        session.delete()
        runner.tidy()
    assert outcome and outcome[0].status is not Status.OK  # type: ignore[attr-defined]
    with pytest.raises(ImageNotFound):
        base_image.lookup("mid-exec:1")
    _, record = base_image.lookup("after-exec:1")
    assert record.id == committed.image_id and "late" in layer_names(base_image, record)


def test_commit_through_the_worker_and_the_cli(base_image, start_worker):
    worker = start_worker("--slots", "1")
    with Client(worker.socket_path) as client:
        assert "session-commit" in client.hello["capabilities"]
        session = client.session_create(SessionSpec(image="base:1"))
        host_session = client.session_create(SessionSpec())
        try:
            assert client.session_exec(session, sh(CHANGES)).status is Status.OK
            answer = client.session_commit(session, "via-worker:1")
            assert answer["session"] == session
            assert answer["reference"] == "docker.io/library/via-worker:1"
            with pytest.raises(WorkerError) as refused:
                client.session_commit(host_session, "host-copy:1")
            assert refused.value.code == "session_error" and "host image" in str(refused.value)
            with pytest.raises(WorkerError) as bad:
                client.session_commit(session, "Not A Reference")
            assert (bad.value.code, bad.value.field) == ("invalid_job", "reference")

            by_cli = subprocess.run([*SANDBOX_CLI, "commit", "--socket", worker.socket_path, session, "via-cli:1"],
                                    capture_output=True, text=True, timeout=120)
            assert by_cli.returncode == 0, by_cli.stderr
            _, cli_record = base_image.lookup("via-cli:1")
            assert by_cli.stdout.split() == ["docker.io/library/via-cli:1", cli_record.id]
            by_group = subprocess.run([*SANDBOX_CLI, "session", "commit", "--socket", worker.socket_path,
                                       host_session, "host-copy:1"], capture_output=True, text=True, timeout=120)
            assert by_group.returncode == 125 and "host image" in by_group.stderr, by_group
        finally:
            client.session_delete(session)
            client.session_delete(host_session)
        for reference in ("via-worker:1", "via-cli:1"):
            _, record = base_image.lookup(reference)
            assert layer_names(base_image, record) == LAYER_ENTRIES
            seen = client.run(Job(cmd=["sh", "-c", LOOK], image=reference))
            assert (seen.status, seen.stdout) == (Status.OK, SEEN), seen


def test_commit_over_http(base_image, start_http):  # noqa: F811 - the imported fixture
    http = start_http("--slots", "1")
    with http.client() as client:
        made = client.post("/v1/sessions", json={"image": "base:1"})
        assert made.status_code == 201, made.text
        session = made.json()["session"]
        try:
            changed = client.post(f"/v1/sessions/{session}/exec?wait=true", json={"job": {"cmd": ["sh", "-c", CHANGES]}})
            assert changed.json()["result"]["status"] == "ok", changed.text
            unnamed = client.post(f"/v1/sessions/{session}/commit")
            assert (unnamed.status_code, unnamed.json()["field"]) == (422, "reference"), unnamed.text
            done = client.post(f"/v1/sessions/{session}/commit", json={"reference": "via-http:1"})
            assert done.status_code == 200, done.text
        finally:
            client.delete(f"/v1/sessions/{session}")
    _, record = base_image.lookup("via-http:1")
    assert (done.json()["reference"], done.json()["image_id"]) == ("docker.io/library/via-http:1", record.id)
    assert layer_names(base_image, record) == LAYER_ENTRIES
