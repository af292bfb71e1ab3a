"""Pull from real registries (docker-registry started here: anonymous, basic auth,
bearer tokens), run on the overlay, and the faults: digest mismatch, registry down,
interrupted download resumed, concurrent pulls, gc while a job runs, a full disk.

The tests marked ``kernel`` also run in the cgroup v2 guest (tests/vm/run), whose
kernel (Debian 12's 6.1) mounts image roots by the mount(2) fallback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from imagebuild import Entry, busybox_entries, layer_tar, oci_index, oci_layout
from registries import Registry, free_port, skopeo_push, start_proxy, start_registry, start_token_server
from workerutil import SANDBOX_CLI

from sandbox.errors import JobError
from sandbox.ids import plan_ids
from sandbox.images.config import load
from sandbox.images.errors import DigestMismatch, RegistryError
from sandbox.images.pull import pull
from sandbox.images.runtime import lease_image
from sandbox.images.store import Store
from sandbox.models import Blob, Job, Limits, Status
from sandbox.overlay import LOWERDIR_PLUS, MOUNT_SYSCALL
from sandbox.zygote import Zygote

DIR, SYM, LNK = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


@pytest.fixture(scope="session")
def images_work(tmp_path_factory):
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def registry(images_work):
    reg = start_registry(images_work / "anon")
    yield reg
    reg.stop()


def feature_layers() -> list[bytes]:
    base = busybox_entries() + [
        Entry("opt", DIR), Entry("opt/old", data=b"old"), Entry("gone", data=b"gone"),
        Entry("data", DIR), Entry("data/file", data=b"from layer 1\n"),
    ]
    top = [
        Entry("opt", DIR), Entry("opt/.wh..wh..opq"), Entry("opt/new", data=b"new"),
        Entry(".wh.gone"), Entry("data/file", data=b"from layer 2\n"),
        Entry("data/hard", LNK, linkname="data/file"), Entry("data/link", SYM, linkname="file"),
        Entry("data/hard2", LNK, linkname="data/file"),
    ]
    return [layer_tar(base), layer_tar(top)]


def features_layout(path: Path) -> Path:
    return oci_layout(path, feature_layers(), config={"WorkingDir": "/srv/app", "Env": ["PATH=/bin", "GREETING=hello"]})


def zstd_layout(path: Path) -> Path:
    return oci_layout(path, [layer_tar(busybox_entries()), layer_tar([Entry("z", data=b"zstd\n")])],
                      compression="zstd")


def multi_layout(path: Path) -> Path:
    return oci_index(path, [
        dict(layers=[layer_tar([Entry("arch", data=b"amd64\n")])], arch="amd64"),
        dict(layers=[layer_tar([Entry("arch", data=b"arm64\n")])], arch="arm64"),
    ], platforms=[{"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64", "variant": "v8"}])


def big_layout(path: Path) -> Path:
    return oci_layout(path, [layer_tar(busybox_entries() + [Entry("big", data=os.urandom(3 << 20))])])


TEST_IMAGES = {"features": features_layout, "zstd": zstd_layout, "multi": multi_layout, "big": big_layout}


class PushedImages:
    """The test images in the anonymous registry, name -> reference, each built and
    pushed when a test first asks for it: the cgroup v2 guest, under emulation, needs
    only one of them."""

    def __init__(self, registry: Registry, work: Path) -> None:
        self.registry, self.work = registry, work
        self.references: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        if name not in self.references:
            layout = TEST_IMAGES[name](self.work / "layouts" / name)
            reference = f"{self.registry.host}/test/{name}:1"
            skopeo_push(f"oci:{layout}", reference, self.work, all_platforms=name == "multi")
            self.references[name] = reference
        return self.references[name]


@pytest.fixture(scope="session")
def pushed(registry, images_work) -> PushedImages:
    return PushedImages(registry, images_work)


@pytest.fixture
def env(tmp_path, registry, monkeypatch):
    """A fresh store and config for one test; returns a function to rewrite the config."""
    store = tmp_path / "store"
    config = tmp_path / "images.toml"

    def configure(extra: str = "", insecure: tuple[str, ...] = ()) -> Path:
        hosts = ", ".join(f'"{h}"' for h in (registry.host, *insecure))
        config.write_text(f"insecure = [{hosts}]\n{extra}")
        return store

    configure()
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", str(store))
    monkeypatch.setenv("SANDBOX_IMAGES_CONFIG", str(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return configure


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SANDBOX_CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.kernel
def test_pull_and_run_applies_layers_and_config(env, pushed):
    done = cli("pull", pushed["features"])
    assert done.returncode == 0, done.stderr
    script = ("cat /data/file /data/hard /data/link; ls /opt; test -e /gone || echo gone-is-gone; "
              "pwd; echo $GREETING; test /data/hard -ef /data/hard2 && echo same-inode; "
              "echo w > /written && cat /written")
    done = cli("run", "--image", "test/features:1", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == [
        "from layer 2", "from layer 2", "from layer 2", "new", "gone-is-gone", "/srv/app", "hello", "same-inode",
        "w", ""]
    done = cli("run", "--image", pushed["features"])  # no command: the image's Cmd
    assert (done.returncode, done.stdout) == (0, "default-cmd\n"), done.stderr


# Overlayfs takes layers by ``lowerdir+`` from Linux 6.8 on.
LOWERDIR_PLUS_SINCE = (6, 8)
PROBE_MOUNT_METHOD = "from sandbox.overlay import mount_method; print(mount_method())"


def root_mount_options(mountinfo: str) -> list[str]:
    """The superblock options of the mount at / in a /proc/self/mountinfo."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[fields.index("-") + 3].split(",")
    raise AssertionError(f"no root mount in {mountinfo!r}")


def base_mountinfo(zygote: Zygote, base: int) -> list[str]:
    """The fields of the root's line in the mountinfo of an image's base (a mount
    namespace of the zygote's user namespace), as a process that entered it sees it:
    read from here, for the base's /proc is of a pid namespace with no process left."""
    entered = subprocess.Popen(["nsenter", "--preserve-credentials", f"--user=/proc/{zygote.process.pid}/ns/user",
                                f"--mount=/proc/self/fd/{base}", "sh", "-c", "echo in; exec cat"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(base,))
    assert entered.stdin is not None and entered.stdout is not None
    try:
        assert entered.stdout.readline() == b"in\n"
        mountinfo = Path(f"/proc/{entered.pid}/mountinfo").read_text()
    finally:
        entered.stdin.close()
        entered.wait()
        entered.stdout.close()
    return next(line.split() for line in mountinfo.splitlines() if line.split()[4] == "/")


@pytest.mark.kernel
def test_the_image_root_is_mounted_the_way_this_kernel_takes_layers(env, pushed, runner):
    """Before 6.8 (Debian 12's 6.1 in the cgroup v2 guest) an image's base must come from
    the mount(2) fallback, after it from ``lowerdir+``: the kernel shows which in the
    base's mountinfo - mount(2) options as given (``lowerdir=`` with the fd numbers of
    the base's changes, the sandbox's own layer and the image's two), one ``lowerdir+=``
    per layer otherwise. ``mount_method`` (what doctor says) names the same one, and
    whiteouts and opaque directories hide lower content on it. The job's root is its own
    writable layer over the base, and names no host path."""
    release = os.uname().release
    expected = LOWERDIR_PLUS if tuple(map(int, release.split("-")[0].split(".")[:2])) >= LOWERDIR_PLUS_SINCE \
        else MOUNT_SYSCALL
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c",
                            PROBE_MOUNT_METHOD], capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).resolve().parent.parent)
    assert (probe.returncode, probe.stdout) == (0, f"{expected}\n"), (release, probe.stderr)

    pull(Store(env()), load(), pushed["features"])
    script = ("cat /proc/self/mountinfo; echo ==; ls -a /opt; test -e /opt/old || echo old-is-hidden; "
              "test -e /gone || echo gone-is-gone")
    result = runner.run(Job(cmd=["sh", "-c", script], image="test/features:1", require_cgroups=True))
    runner.tidy()
    assert result.status is Status.OK, result
    mountinfo, listing = result.stdout.decode().split("==\n")
    options = root_mount_options(mountinfo)
    assert {"lowerdir=/", "upperdir=upper", "workdir=upper.work", "userxattr"} <= set(options), (release, options)
    # /opt is opaque in the top layer (old is the bottom layer's); /gone a whiteout.
    assert listing == ".\n..\nnew\nold-is-hidden\ngone-is-gone\n", listing

    zygote = Zygote(plan_ids().zygote_argument())
    try:
        image = lease_image("test/features:1")
        try:
            base = base_mountinfo(zygote, zygote.image_base(image.layer_dirs, "/work"))
        finally:
            image.release()
    finally:
        zygote.close()
    lowers = [option for option in base[base.index("-") + 3].split(",") if option.startswith("lowerdir")]
    if expected == MOUNT_SYSCALL:
        assert len(lowers) == 1 and re.fullmatch(r"lowerdir=\d+:\d+:\d+:\d+", lowers[0]), (release, lowers)
    else:
        assert len(lowers) == 4 and all(option.startswith("lowerdir+=") for option in lowers), (release, lowers)
    assert "ro" in base[5].split(","), base


@pytest.mark.kernel
def test_each_job_writes_a_layer_of_its_own_over_the_shared_base(env, pushed, runner):
    """Jobs on one image share its read-only base, never a writable layer: what one job
    writes in its root or the image's working directory (both its own, whatever id it
    runs as), the next one does not see. The root's writes count against --disk with
    /work's."""
    pull(Store(env()), load(), pushed["features"])
    writes = "echo x > /marker && echo y > /srv/app/y && mkdir /new && cat /marker /srv/app/y && ls /"
    first = runner.run(Job(cmd=["sh", "-c", writes], image="test/features:1", require_cgroups=True))
    runner.tidy()
    assert first.status is Status.OK and first.stdout.startswith(b"x\ny\n"), first
    assert b"new" in first.stdout.split(b"\n")[2:], first
    looks = "ls /srv/app; test -e /marker || echo no-marker; test -e /new || echo no-new"
    second = runner.run(Job(cmd=["sh", "-c", looks], image="test/features:1", require_cgroups=True))
    runner.tidy()
    assert (second.status, second.stdout) == (Status.OK, b"no-marker\nno-new\n"), second
    fill = "dd if=/dev/zero of=/work/half bs=1M count=3 2>/dev/null && dd if=/dev/zero of=/big bs=1M count=3 || echo full"
    full = runner.run(Job(cmd=["sh", "-c", fill], image="test/features:1", limits=Limits(disk="4M"),
                          require_cgroups=True))
    runner.tidy()
    assert (full.status, full.stdout.splitlines()[-1:]) == (Status.OK, [b"full"]), full


def test_a_name_pulled_anew_runs_what_it_names_at_each_job(env, registry, images_work, runner, tmp_path):
    """A runner orders a job's sandbox from the root the job's image name last leased,
    and leases the name while that sandbox is cloned: a tag pulled again, removed, or
    collected and pulled back runs what the name means when the job starts."""
    store = Store(env())
    reference = f"{registry.host}/test/retagged:1"
    features, zstd = features_layout(tmp_path / "features"), zstd_layout(tmp_path / "zstd")

    def push_and_pull(layout: Path) -> None:
        skopeo_push(f"oci:{layout}", reference, images_work)
        pull(store, load(), reference)

    def seen() -> bytes:
        result = runner.run(Job(cmd=["sh", "-c", "cat /data/file /z 2>/dev/null; true"], image="test/retagged:1"))
        runner.tidy()
        assert result.status is Status.OK, result
        return result.stdout

    push_and_pull(features)
    assert [seen(), seen()] == [b"from layer 2\n"] * 2
    push_and_pull(zstd)
    assert seen() == b"zstd\n"
    assert cli("rmi", "test/retagged:1").returncode == 0
    with pytest.raises(JobError, match="no image"):
        runner.run(Job(cmd=["true"], image="test/retagged:1"))
    runner.tidy()
    assert cli("gc").returncode == 0
    push_and_pull(features)
    assert seen() == b"from layer 2\n"


def test_images_inspect_rmi_gc(env, pushed):
    assert cli("pull", pushed["features"]).returncode == 0
    assert cli("pull", pushed["zstd"]).returncode == 0
    rows = json.loads(cli("images", "--json").stdout)
    assert {row["repository"].split("/", 1)[1] for row in rows} == {"test/features", "test/zstd"}
    assert all(row["layers"] == 2 and row["size"] > 0 for row in rows)
    shown = json.loads(cli("inspect", "test/zstd:1").stdout)
    assert shown["config"]["Cmd"] == ["sh", "-c", "echo default-cmd"]
    assert cli("run", "--image", "test/zstd:1", "--", "cat", "/z").stdout == "zstd\n"
    assert cli("rmi", "test/features:1").returncode == 0
    assert "removed 1 images, 2 layers" in cli("gc").stdout
    assert cli("run", "--image", "test/zstd:1", "--", "cat", "/z").stdout == "zstd\n"
    done = cli("run", "--image", "test/features:1", "--", "true")
    assert done.returncode == 125 and "no image" in done.stderr


def test_platform_is_picked_from_the_index(env, pushed):
    store = Store(env())
    _, amd = pull(store, load(), pushed["multi"], platform="linux/amd64")
    _, arm = pull(store, load(), pushed["multi"], platform="linux/arm64")
    for record, arch in ((amd, b"amd64\n"), (arm, b"arm64\n")):
        assert (store.layer_path(record.layers[0].chain_id) / "arch").read_bytes() == arch
    with pytest.raises(Exception, match="no linux/s390x image"):
        pull(store, load(), pushed["multi"], platform="linux/s390x")


def test_pull_by_digest_and_mismatch_is_refused(env, pushed, registry):
    store = Store(env())
    _, record = pull(store, load(), pushed["features"])
    by_digest = f"{registry.host}/test/features@{record.manifest_digest}"
    assert pull(store, load(), by_digest)[1].id == record.id
    with pytest.raises(RegistryError, match=r"not found|expected"):
        pull(store, load(), f"{registry.host}/test/features@sha256:{'0' * 64}")


def test_corrupt_blob_is_retried_then_refused_and_nothing_published(env, pushed, registry, images_work):
    store = Store(env())
    manifest_layers = _layers_of(pushed["big"])
    blob = registry.blob_file(manifest_layers[-1])
    original = blob.read_bytes()
    blob.write_bytes(original[:-10] + b"X" * 10)
    try:
        with pytest.raises(DigestMismatch, match="after 4 attempts"):
            pull(store, load(), pushed["big"])
    finally:
        blob.write_bytes(original)
    assert not store.refs() and not store.records()
    assert not store.has_blob(manifest_layers[-1])
    assert not list((store.root / "layers").iterdir()) and not list((store.root / "partial").iterdir())


def _layers_of(reference: str) -> list[str]:
    """The layer digests of a pushed image (host/repository:tag), as the registry has them."""
    import httpx
    host, name = reference.split("/", 1)
    repository, tag = name.rsplit(":", 1)
    accept = "application/vnd.oci.image.manifest.v1+json"
    manifest = httpx.get(f"http://{host}/v2/{repository}/manifests/{tag}", headers={"Accept": accept}).json()
    return [layer["digest"] for layer in manifest["layers"]]


def test_registry_down_is_a_clear_error(env):
    port = free_port()
    env(insecure=(f"127.0.0.1:{port}",))
    done = cli("pull", f"127.0.0.1:{port}/x/y:1")
    assert done.returncode == 125
    assert f"cannot reach 127.0.0.1:{port}" in done.stderr and "after 4 attempts" in done.stderr


def test_https_is_required_unless_listed_insecure(env, pushed, registry, tmp_path):
    (tmp_path / "images.toml").write_text("")
    done = cli("pull", pushed["features"])
    assert done.returncode == 125 and "cannot reach" in done.stderr


def test_interrupted_download_resumes_with_range(env, pushed, registry):
    proxy = start_proxy(registry.host)
    try:
        env(insecure=(proxy.host,))
        big_layer = _layers_of(pushed["big"])[-1]
        proxy.cut_blobs_after[big_layer] = 1 << 20
        store = Store(env(insecure=(proxy.host,)))
        _, record = pull(store, load(), pushed["big"].replace(registry.host, proxy.host))
        gets = [entry for entry in proxy.blob_gets() if big_layer in entry[0]]
        assert [(rng, status) for _, rng, status in gets] == [("", 200), (f"bytes={1 << 20}-", 206)]
        assert store.has_layer(record.layers[-1].chain_id)
    finally:
        proxy.stop()


def test_mirrors_in_order_then_upstream(env, pushed, registry):
    proxy = start_proxy(registry.host)
    dead = f"127.0.0.1:{free_port()}"
    try:
        store = Store(env(f'[mirrors]\n"{registry.host}" = ["{dead}", "{proxy.host}"]\n', insecure=(proxy.host, dead)))
        pull(store, load(), pushed["zstd"])
        assert proxy.blob_gets(), "the working mirror served the blobs"
        # A mirror without the image: fall back to the registry itself.
        store2 = Store(env(f'[mirrors]\n"{registry.host}" = ["{dead}"]\n', insecure=(dead,)).with_name("store2"))
        pull(store2, load(), pushed["zstd"])
    finally:
        proxy.stop()


def test_concurrent_pulls_download_each_blob_once(env, pushed, registry):
    proxy = start_proxy(registry.host)
    try:
        env(insecure=(proxy.host,))
        ref = pushed["big"].replace(registry.host, proxy.host)
        procs = [subprocess.Popen([*SANDBOX_CLI, "pull", ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
        results = [proc.communicate(timeout=120) + (proc.returncode,) for proc in procs]
        assert all(code == 0 for _, _, code in results), results
        layer_gets = [path for path, _, status in proxy.blob_gets() if status == 200]
        assert len(layer_gets) == len(set(layer_gets)), layer_gets
    finally:
        proxy.stop()


def test_basic_auth_registry(images_work, env, tmp_path):
    htpasswd = images_work / "htpasswd"
    line = subprocess.run(["htpasswd", "-Bbn", "judge", "s3cret"], check=True, capture_output=True, text=True).stdout
    htpasswd.write_text(line)
    reg = start_registry(images_work / "basic",
                         f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n")
    try:
        oci_layout(images_work / "layouts/basic", [layer_tar(busybox_entries())])
        skopeo_push(f"oci:{images_work / 'layouts/basic'}", f"{reg.host}/private/bb:1", images_work, creds="judge:s3cret")
        env(insecure=(reg.host,))
        done = cli("pull", f"{reg.host}/private/bb:1")
        assert done.returncode == 125 and "wants a user name and password" in done.stderr
        docker = tmp_path / "docker"
        docker.mkdir()
        import base64
        auth = base64.b64encode(b"judge:s3cret").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        done = cli("pull", f"{reg.host}/private/bb:1")
        assert done.returncode == 0, done.stderr
    finally:
        reg.stop()


def test_bearer_token_flow(images_work, env):
    tokens, cert = start_token_server(images_work, "robot", "t0ken", "test-registry", "test-issuer")
    reg = start_registry(images_work / "token", (
        f"auth:\n  token:\n    realm: {tokens.url}\n    service: test-registry\n    issuer: test-issuer\n"
        f"    rootcertbundle: {cert}\n"))
    try:
        oci_layout(images_work / "layouts/token", [layer_tar(busybox_entries())])
        skopeo_push(f"oci:{images_work / 'layouts/token'}", f"{reg.host}/team/bb:1", images_work, creds="robot:t0ken")
        pushed_tokens = len(tokens.issued)
        env(f'[auths."{reg.host}"]\nusername = "robot"\npassword = "t0ken"\n', insecure=(reg.host,))
        done = cli("pull", f"{reg.host}/team/bb:1")
        assert done.returncode == 0, done.stderr
        # One token for the whole pull: cached across manifest and blob requests.
        assert len(tokens.issued) - pushed_tokens == 1
        env(insecure=(reg.host,))
        done = cli("pull", f"{reg.host}/team/bb:1")
        assert done.returncode == 125 and "token server" in done.stderr
    finally:
        reg.stop()
        tokens.stop()


def test_gc_while_a_job_runs_keeps_its_layers(env, pushed, runner, tmp_path):
    store = Store(env())
    _, record = pull(store, load(), pushed["features"])
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    job = Job(cmd=["sh", "-c", "read line; cat /data/file"], image="test/features:1", stdin=Blob(path=str(fifo)),
              require_cgroups=True)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(runner.run, job)
        with open(fifo, "w") as writer:
            deadline = time.monotonic() + 30
            while not store._leased(record.id[7:]):
                assert time.monotonic() < deadline, "the job never leased its image"
                time.sleep(0.01)
            assert cli("rmi", "test/features:1").returncode == 0
            assert cli("gc").returncode == 0
            assert all(store.has_layer(layer.chain_id) for layer in record.layers)
            writer.write("go\n")
        result = future.result(timeout=60)
        runner.tidy()
    assert result.stdout == b"from layer 2\n", result
    assert "removed 1 images, 2 layers" in cli("gc").stdout
    assert not list((store.root / "layers").iterdir())


ENOSPC_SCRIPT = r"""
import json, os, subprocess, sys
sys.path[:0] = sys.argv[3:]
from sandbox.ids import plan_ids
from sandbox.images.config import load
from sandbox.images.errors import UnpackError
from sandbox.images.importer import import_image
from sandbox.images.store import Store
from pathlib import Path
target = Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(target)], check=True)
store = Store(target / "store")
try:
    import_image(store, load(), Path(sys.argv[2]), "full:1")
    print(json.dumps({"error": None}))
except UnpackError as exc:
    leftovers = sorted(str(p.relative_to(store.root)) for sub in ("layers", "tmp", "refs", "images")
                       for p in (store.root / sub).iterdir())
    print(json.dumps({"error": str(exc), "leftovers": leftovers}))
"""


def test_full_disk_during_unpack_publishes_nothing(tmp_path, env):
    """A 2 MiB tmpfs store in a user+mount namespace of our own (rootless)."""
    # The compressed blob fits in the store; the unpacked 3 MiB do not.
    layout = oci_layout(tmp_path / "fat", [layer_tar([Entry("big", data=bytes(3 << 20))])], compression="zstd")
    (tmp_path / "mnt").mkdir()
    repo = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", ENOSPC_SCRIPT,
                           str(tmp_path / "mnt"), str(layout), repo], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["error"] and "no space left on device" in outcome["error"], outcome
    assert "'big'" in outcome["error"] and outcome["leftovers"] == [], outcome


@pytest.mark.kernel
def test_hostile_mount_points_never_touch_the_host(env, tmp_path, runner):
    """An image whose /dev, /proc, /tmp, /work and /etc/hosts are symlinks to a host
    directory: the job runs, and the canary directory stays untouched."""
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "hosts").write_text("precious\n")
    entries = busybox_entries() + [Entry("etc/hosts", SYM, linkname=str(canary / "hosts"))]
    entries = [e for e in entries if e.name not in ("tmp", "work")]
    entries += [Entry(name, SYM, linkname=str(canary)) for name in ("dev", "proc", "tmp", "work")]
    layout = oci_layout(tmp_path / "evil", [layer_tar(entries)])
    assert cli("import", str(layout), "evil:1").returncode == 0
    done = cli("run", "--image", "evil:1", "--", "sh", "-c",
               "echo x > /tmp/t; echo y > /work/w; cat /etc/hosts | head -1; ls /dev/null /proc/self >/dev/null && echo ok")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("ok\n") and "localhost" in done.stdout
    assert sorted(os.listdir(canary)) == ["hosts"] and (canary / "hosts").read_text() == "precious\n"


def test_docker_save_archive_import(env, tmp_path):
    """The legacy `docker save` layout: manifest.json, <id>.json, <dir>/layer.tar."""
    import hashlib
    import io
    layer = layer_tar(busybox_entries() + [Entry("saved", data=b"from docker save\n")])
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["cat", "/saved"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in ((config_name, config), ("abc/layer.tar", layer), ("manifest.json", json.dumps(
                [{"Config": config_name, "RepoTags": ["saved:1"], "Layers": ["abc/layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert cli("import", str(archive), "myimg:1").returncode == 0
    done = cli("run", "--image", "myimg:1")
    assert (done.returncode, done.stdout) == (0, "from docker save\n"), done.stderr


def registry_manifest(host: str, repository: str, tag: str) -> bytes:
    """The manifest's bytes exactly as the registry serves them."""
    import httpx

    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    response = httpx.get(f"http://{host}/v2/{repository}/manifests/{tag}", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    return response.content


def test_push_sends_what_the_registry_lacks_and_pulls_back_byte_for_byte(env, pushed, registry, monkeypatch, tmp_path):
    assert cli("pull", pushed["features"]).returncode == 0
    stored = json.loads(cli("inspect", pushed["features"]).stdout)
    target = f"{registry.host}/pushed/features:2"
    done = cli("push", pushed["features"], target)
    assert done.returncode == 0, done.stderr
    assert "(3 blobs uploaded, 0 there already)" in done.stdout  # two layers and the config
    assert f"@{stored['manifest_digest']}" in done.stdout
    again = cli("push", "test/features:1", target)  # found by its short name too
    assert "(0 blobs uploaded, 3 there already)" in again.stdout, again.stderr
    original = registry_manifest(registry.host, "test/features", "1")
    assert registry_manifest(registry.host, "pushed/features", "2") == original
    # Another machine's store pulls it back: the same image, the same layers.
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", str(tmp_path / "other-store"))
    assert cli("pull", target).returncode == 0
    back = json.loads(cli("inspect", target).stdout)
    assert (back["id"], back["manifest_digest"]) == (stored["id"], stored["manifest_digest"])
    assert cli("run", "--image", target, "--", "cat", "/data/file").stdout == "from layer 2\n"
    done = cli("push", stored["id"])
    assert done.returncode == 125 and "name where to push it" in done.stderr


def test_push_to_a_registry_that_wants_credentials(images_work, env, pushed, tmp_path):
    htpasswd = images_work / "htpasswd-push"
    line = subprocess.run(["htpasswd", "-Bbn", "teacher", "s3cret"], check=True, capture_output=True, text=True).stdout
    htpasswd.write_text(line)
    reg = start_registry(images_work / "basic-push", f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n")
    try:
        assert cli("pull", pushed["zstd"]).returncode == 0
        env(insecure=(reg.host,))
        done = cli("push", pushed["zstd"], f"{reg.host}/grading/zstd:1")
        assert done.returncode == 125 and "wants a user name and password" in done.stderr
        env(f'[auths."{reg.host}"]\nusername = "teacher"\npassword = "s3cret"\n', insecure=(reg.host,))
        done = cli("push", pushed["zstd"], f"{reg.host}/grading/zstd:1")
        assert done.returncode == 0 and "(3 blobs uploaded" in done.stdout, done.stderr
    finally:
        reg.stop()


def test_save_then_load_keeps_the_image_and_its_digests(env, pushed, monkeypatch, tmp_path):
    assert cli("pull", pushed["features"]).returncode == 0
    stored = json.loads(cli("inspect", pushed["features"]).stdout)
    archive = tmp_path / "features.tar"
    done = cli("save", "test/features:1", "-o", str(archive))
    assert done.returncode == 0 and done.stdout.split() == [str(archive), stored["manifest_digest"]], done.stderr
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"oci-layout", "index.json", f"blobs/sha256/{stored['manifest_digest'][7:]}"} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".features.tar")]  # no temporary left
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", str(tmp_path / "other-store"))
    done = cli("load", str(archive), "local/features:1")
    assert done.returncode == 0, done.stderr
    back = json.loads(cli("inspect", "local/features:1").stdout)
    assert (back["id"], back["manifest_digest"]) == (stored["id"], stored["manifest_digest"])
    assert cli("run", "--image", "local/features:1", "--", "cat", "/opt/new").stdout == "new"
    done = cli("save", "nothing/here:1", "-o", str(tmp_path / "nothing.tar"))
    assert done.returncode == 125 and not (tmp_path / "nothing.tar").exists()
    # Paths that cannot be written or read are clear errors, with nothing left behind.
    for argv in (["save", "local/features:1", "-o", str(tmp_path / "no-dir" / "x.tar")],
                 ["save", "local/features:1", "-o", str(tmp_path)],
                 ["load", str(tmp_path / "typo.tar"), "local/typo:1"]):
        done = cli(*argv)
        assert done.returncode == 125 and "Traceback" not in done.stderr and str(tmp_path) in done.stderr, done.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
