"""The layer writer on an upper directory a real overlay mount made (whiteouts, an
opaque directory, hard links), committed onto its image and run."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from imagebuild import Entry, busybox_entries, layer_tar, oci_layout

from sandbox.images.compose import commit_upper, write_upper_as_range_root
from sandbox.images.config import load
from sandbox.images.importer import import_image
from sandbox.images.layer_writer import LayerError, write_upper
from sandbox.images.reference import parse
from sandbox.images.store import Store
from sandbox.models import Job, Status

DIR = tarfile.DIRTYPE
# What a session does to the image through its overlay: delete a file of the lower,
# replace a directory by a new one, add a file and a hard link to it.
CHANGES = ("rm M/data/gone && rm -r M/olddir && mkdir M/olddir && echo new > M/olddir/c && "
           "echo hi > M/new && ln M/new M/newlink && "
           "python3 -c 'import os, sys; os.setxattr(sys.argv[1], \"user.note\", b\"kept\")' M/new && "
           # a job's files: a subordinate id's, which the supervisor cannot read as itself
           "mkdir M/private && echo mine > M/private/secret && chmod 600 M/private/secret && chmod 700 M/private && "
           "chown -R 5:5 M/private")


def _lower_image(work: Path) -> tuple[Store, str]:
    entries = busybox_entries() + [
        Entry("data", DIR), Entry("data/gone", data=b"gone"), Entry("data/keep", data=b"keep\n"),
        Entry("olddir", DIR), Entry("olddir/a", data=b"a"), Entry("olddir/b", data=b"b"),
    ]
    layout = oci_layout(work / "layout", [layer_tar(entries)])
    config = load()
    store = Store(config.store)
    _, record = import_image(store, config, layout, "lower:1")
    return store, str(store.layer_path(record.layers[0].chain_id))


def _overlay_upper(work: Path, lower: str, script: str) -> Path:
    """An upper directory changed through a real overlay mount (userxattr, in a user
    and mount namespace of this user's, as a rootless session makes one)."""
    upper, overlay_work, merged = work / "upper", work / "work", work / "merged"
    for directory in (upper, overlay_work, merged):
        directory.mkdir()
    mount = (f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={overlay_work},userxattr "
             f"{merged} && ")
    done = in_namespace(mount + script.replace("M/", f"{merged}/"))
    assert done.returncode == 0, done.stderr
    return upper


def in_namespace(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` as root of a user namespace of this user's and its subordinate ids."""
    return subprocess.run(["unshare", "--user", "--map-root-user", "--map-auto", "--mount", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.kernel
def test_an_overlay_upper_commits_to_an_image_that_runs_with_the_change(image_store, runner):
    store, lower = _lower_image(image_store)
    upper = _overlay_upper(image_store, lower, CHANGES)
    upper_fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(PermissionError):
            write_upper(upper_fd, image_store / "as-myself.tar.gz")
        blob = write_upper_as_range_root(upper_fd, image_store / "layer.tar.gz")
        _, parent = store.lookup("lower:1")
        record = commit_upper(store, load(), upper_fd, parent, "session changes")
    finally:
        os.close(upper_fd)
        done = in_namespace(f"rm -rf {upper} {image_store / 'work'}")
        assert done.returncode == 0, done.stderr
    with tarfile.open(blob.path) as tar:
        members = {member.name: member for member in tar.getmembers()}
    assert "data/.wh.gone" in members and "olddir/.wh..wh..opq" in members
    assert members["private/secret"].size == 5 and members["private"].mode == 0o700
    assert members["newlink"].islnk() and members["newlink"].linkname == "new"
    assert members["new"].pax_headers.get("SCHILY.xattr.user.note") == "kept"
    assert not any("overlay" in key for member in members.values() for key in member.pax_headers)
    assert len(record.layers) == 2 and record.layers[1].diff_id == blob.diff_id
    store.set_ref(parse("committed:1"), record.id)

    script = "ls /data; ls /olddir; cat /new; test /new -ef /newlink && echo linked; echo $PATH; cat /private/secret || echo private"
    try:
        result = runner.run(Job(cmd=["sh", "-c", script], image="committed:1", require_cgroups=True))
    finally:
        runner.tidy()
    assert result.status is Status.OK, result
    assert result.stdout.decode().split("\n")[:6] == ["keep", "c", "hi", "linked", "/bin:/usr/bin", "private"]


@pytest.mark.kernel
def test_devices_and_sockets_in_an_upper_are_refused_by_name(tmp_path):
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "fine").write_text("x")
    done = subprocess.run(["python3", "-c", f"import socket; socket.socket(socket.AF_UNIX).bind('{upper}/sock')"],
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    upper_fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(LayerError, match="sock: a socket cannot go into an image layer"):
            write_upper(upper_fd, tmp_path / "layer.tar.gz")
    finally:
        os.close(upper_fd)
