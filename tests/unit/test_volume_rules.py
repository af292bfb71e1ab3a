"""Binds and volumes without a kernel sandbox: the mount entries' rules and defaults,
their wire form, the CLI's flags, a worker's allow list, and the merge of a job's
layer into its volume as hostile input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import volume_layer
from sandbox.cli import make_parser
from sandbox.cli.job_flags import mounts_from_args
from sandbox.errors import JobError
from sandbox.models import Job, Mount
from worker.launcher import HostPaths
from worker.protocol import job_from_wire, job_to_wire

GIB = 1 << 30


def mounts(*entries: Mount) -> list[Mount]:
    return Job(cmd=["true"], mounts=list(entries)).mounts


def field_of(*entries: Mount) -> str | None:
    with pytest.raises(JobError) as caught:
        mounts(*entries)
    return caught.value.field


def test_a_bind_is_read_only_and_a_volume_read_write_and_capped_unless_told() -> None:
    bind, volume, shared = mounts(Mount("/work/d", bind="/srv/d"), Mount("/work/v", volume="pip"),
                                  Mount("/tmp/s", volume="pip.old", writable=False))
    assert (bind.writable, bind.size) == (False, None)
    assert (volume.writable, volume.size) == (True, GIB)
    assert (shared.writable, shared.size) == (False, None)
    assert mounts(Mount("/work/v", volume="v", size="2M"))[0].size == 2 << 20


@pytest.mark.parametrize(("entry", "field"), [
    (Mount("/work/d", bind="relative/path"), "mounts.0.bind"),
    (Mount("/work/d", bind="/srv/../etc"), "mounts.0.bind"),
    (Mount("/work/d", bind="/srv//d"), "mounts.0.bind"),
    (Mount("/work/d", bind="/srv/d/"), "mounts.0.bind"),
    (Mount("/work/d", bind="/srv/d", size="1G"), "mounts.0.size"),
    (Mount("/work/v", volume=".."), "mounts.0.volume"),
    (Mount("/work/v", volume="a/b"), "mounts.0.volume"),
    (Mount("/work/v", volume=".hidden"), "mounts.0.volume"),
    (Mount("/work/v", volume="v", writable=False, size="1G"), "mounts.0.size"),
    (Mount("/work/v", volume="v", size="lots"), "mounts.0.size"),
    (Mount("/work/v", volume="v", size=0), "mounts.0.size"),
    (Mount("/work/v", volume="v", bind="/srv"), "mounts.0.tree_id"),
    (Mount("/work/t", tree_id="tree:sha256:" + "a" * 64, writable=True), "mounts.0.writable"),
    (Mount("/etc/v", volume="v"), "mounts.0.path"),
])
def test_a_malformed_bind_or_volume_names_its_field(entry: Mount, field: str) -> None:
    assert field_of(entry) == field


def test_binds_and_volumes_on_the_wire() -> None:
    job = Job(cmd=["true"], mounts=[Mount("/work/d", bind="/srv/d", writable=True),
                                    Mount("/work/v", volume="pip", size="64M")])
    wire = job_to_wire(job)
    assert wire["mounts"] == [{"path": "/work/d", "bind": "/srv/d", "writable": True},
                              {"path": "/work/v", "volume": "pip", "writable": True, "size": 64 << 20}]
    assert job_from_wire(wire).mounts == job.mounts


def test_the_flags_give_binds_and_volumes() -> None:
    def parsed(*flags: str) -> list[Mount]:
        return mounts_from_args(make_parser(["run"]).parse_args(["run", *flags, "--", "true"]))

    assert parsed("--bind", "/srv/a:b:/work/d:rw", "--volume", "pip:/work/c:size=2M",
                  "--volume", "ro:/tmp/r:ro") == [
        Mount("/work/d", bind="/srv/a:b", writable=True), Mount("/work/c", volume="pip", writable=None, size="2M"),
        Mount("/tmp/r", volume="ro", writable=False)]
    for flags, field in ((["--bind", "/srv/a"], "bind"), (["--bind", "/srv/a:/work/d:size=1M"], "bind"),
                         (["--volume", "v:/work/c:rw:rw"], "volume")):
        with pytest.raises(JobError) as caught:
            parsed(*flags)
        assert caught.value.field == field


def test_a_worker_allows_binds_at_or_below_its_directories_only() -> None:
    paths = HostPaths("", ["/srv/data", "/mnt/x/"])
    assert paths.allows("/srv/data") and paths.allows("/srv/data/set/1") and paths.allows("/mnt/x/y")
    assert not paths.allows("/srv/data-other") and not paths.allows("/srv") and not paths.allows("/mnt/xy")
    assert not HostPaths("", []).allows("/srv/data")


def test_a_layer_merges_removals_opaque_directories_and_replacements_never_through_a_symlink(
        tmp_path: Path) -> None:
    volume, upper, outside = tmp_path / "volume", tmp_path / "upper", tmp_path / "outside"
    for directory in (volume / "gone", volume / "opaque" / "old", volume / "kept", volume / "was-dir", upper, outside):
        directory.mkdir(parents=True, exist_ok=True)
    (volume / "gone" / "x").write_text("x")
    (volume / "opaque" / "old" / "y").write_text("y")
    (volume / "kept" / "a").write_text("old")
    (volume / "kept" / "b").write_text("untouched")
    (volume / "escape").symlink_to(outside)
    # The layer: what overlayfs leaves in an upper directory.
    os.mknod(upper / "gone", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
    (upper / "opaque").mkdir()
    os.setxattr(upper / "opaque", volume_layer.OPAQUE, b"y")
    (upper / "opaque" / "new").write_text("new")
    (upper / "kept").mkdir()
    (upper / "kept" / "a").write_text("changed")
    (upper / "kept" / "run.sh").write_text("#!/bin/sh\n")
    (upper / "kept" / "run.sh").chmod(0o755)
    (upper / "was-dir").symlink_to("kept/a")
    (upper / "escape").mkdir()  # over the volume's symlink: a directory of its own, not the link's target
    (upper / "escape" / "planted").write_text("p")
    up, vol = (os.open(path, os.O_RDONLY | os.O_DIRECTORY) for path in (upper, volume))
    try:
        volume_layer.merge(up, vol)
    finally:
        os.close(up)
        os.close(vol)
    found = sorted(str(path.relative_to(volume)) for path in volume.rglob("*"))
    assert found == ["escape", "escape/planted", "kept", "kept/a", "kept/b", "kept/run.sh", "opaque", "opaque/new",
                     "was-dir"]
    assert (volume / "kept" / "a").read_text() == "changed" and (volume / "kept" / "b").read_text() == "untouched"
    assert (volume / "kept" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert os.readlink(volume / "was-dir") == "kept/a"
    assert not (volume / "escape").is_symlink() and list(outside.iterdir()) == []
