"""The peers every figure is compared with, run by one timing loop so the harness costs
the same for all of them: native fork+exec (the floor), bubblewrap, crun, podman and
`sandbox run` (our CLI: a Python start-up per job, as a user of the CLI pays it).

The loop runs in a child process (``python bench/peers.py loop ...``) so a peer can be
given a wrapper: crun 1.8 refuses to start at all on a hybrid cgroup host whose cgroup2
mount has any controller ("drop all controllers from cgroupv2"), even with
``--cgroup-manager=disabled``. Its loop therefore runs in a user+mount namespace of its
own with a tmpfs over /sys/fs/cgroup/unified, where crun sees a plain v1 host and runs
without cgroups (rootless crun cannot use v1 cgroups anyway); the wrapper is paid once,
not per job. podman's own crun hits the same check, so podman runs with runc.

A peer's CPU per job is what a cgroup of the loop's own counts (``Peer.counted_by``):
bwrap's outer process exits as soon as its sandbox's init reports the program's end,
without waiting for it, so the init - and the program it reaped, and the teardown of
every namespace as it exits - is reparented away from the loop, and the loop's
RUSAGE_CHILDREN never sees that time (most of a static job's: the CHANGELOG has the
figures). A cgroup counts every process in it, whoever reaps it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.cgroups import open_backend
from sandbox.cpucounter import read_cpu_ns
from sandbox.linux.readiness import readable

BWRAP = [
    "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
    "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
]
CRUN_WRAPPER = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                'mount -t tmpfs none /sys/fs/cgroup/unified && exec "$@"', "sh"]


@dataclass
class Peer:
    """How to run one command under one peer; ``{n}`` in the argv is the job's number."""

    name: str
    prefix: list[str] = field(default_factory=list)
    wrapper: list[str] = field(default_factory=list)
    bundles: dict[tuple[str, ...], list[str]] = field(default_factory=dict)  # crun: cmd -> argv
    # How its CPU per job is counted: "cgroup", every process in a cgroup the loop joins
    # (see the module's docstring); "rusage", every process the loop waited for, down the
    # tree - for a peer that moves its jobs into cgroups of its own, out of the loop's
    # (`sandbox run`; podman where it can), and reaps what it starts.
    counted_by: str = "cgroup"

    def argv(self, cmd: list[str]) -> list[str]:
        return self.bundles[tuple(cmd)] if self.bundles else [*self.prefix, *cmd]


def make_rootfs(directory: Path) -> Path:
    """An OCI rootfs for crun and podman: empty mount points and the usual /usr symlinks;
    /usr itself is bound read-only by each runtime, as bwrap and our host image do."""
    rootfs = directory / "rootfs"
    for sub in ("usr", "proc", "dev", "tmp", "sys"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        if not (rootfs / link).is_symlink():
            (rootfs / link).symlink_to(f"usr/{link}")
    return rootfs


def crun_bundle(directory: Path, rootfs: Path, cmd: list[str]) -> list[str]:
    """A rootless bundle for ``cmd`` whose id mappings point at uid 0 of CRUN_WRAPPER's
    namespace (which is the invoking user on the host)."""
    bundle = directory / f"crun-{len(list(directory.glob('crun-*')))}"
    bundle.mkdir()
    subprocess.run(["crun", "spec", "--rootless"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["root"] = {"path": str(rootfs), "readonly": True}
    config["process"].update(args=cmd, terminal=False, cwd="/")
    config["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr",
                             "options": ["rbind", "ro", "nosuid", "nodev"]})
    for key in ("uidMappings", "gidMappings"):
        config["linux"][key] = [{"containerID": 0, "hostID": 0, "size": 1}]
    config["linux"].pop("resources", None)
    (bundle / "config.json").write_text(json.dumps(config))
    return ["crun", "--root", str(directory / "crun-state"), "--cgroup-manager=disabled", "run",
            "-b", str(bundle), "bench-{n}"]


def all_peers(directory: Path, cmds: list[list[str]], with_podman: bool = True) -> list[Peer]:
    """Every peer, ready to run each of ``cmds``."""
    rootfs = make_rootfs(directory)
    sandbox_cli = str(Path(sys.executable).with_name("sandbox"))
    peers = [
        Peer("native"),
        Peer("bwrap", prefix=BWRAP),
        Peer("crun", wrapper=CRUN_WRAPPER, bundles={tuple(c): crun_bundle(directory, rootfs, c) for c in cmds}),
        Peer("sandbox run", prefix=[sandbox_cli, "run", "--"], counted_by="rusage"),
    ]
    if with_podman:
        peers.append(Peer("podman", prefix=["podman", "--runtime", "runc", "run", "--rm", "--network", "none",
                                            "-v", "/usr:/usr:ro", "--rootfs", str(rootfs)], counted_by="rusage"))
    return peers


def measure(peer: Peer, cmd: list[str], count: int, *, pause: float = 0.0, concurrency: int = 0) -> dict:
    """Run the loop below for ``peer``: latencies in ms (concurrency 0) or jobs/s, and
    the CPU per job (counted as ``peer.counted_by`` says)."""
    options = ["--count", str(count), "--pause", str(pause), "--concurrency", str(concurrency)]
    cgroup = open_backend().create_job(cpu_quota=False) if peer.counted_by == "cgroup" else None
    try:
        if cgroup is not None:
            options += ["--counter", os.readlink(f"/proc/self/fd/{cgroup.cpu_counter_fd}")]
        argv = [*peer.wrapper, sys.executable, __file__, "loop", *options, "--", *peer.argv(cmd)]
        # The loop (with its wrapper) starts in the cgroup: the child joins it before its
        # exec, single-threaded as ``JobCgroup.join`` wants (this process runs no threads here).
        done = subprocess.run(argv, check=True, capture_output=True, text=True,
                              preexec_fn=None if cgroup is None else cgroup.join)
    finally:
        if cgroup is not None:
            cgroup.destroy()
    return json.loads(done.stdout)


def _loop(argv: list[str], count: int, pause: float, concurrency: int, counter: str | None) -> dict:
    def one(n: int) -> float:
        start = time.perf_counter()
        subprocess.run([a.replace("{n}", f"{os.getpid()}-{n}") for a in argv], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return (time.perf_counter() - start) * 1000

    before = _jobs_cpu_ms(counter)
    if concurrency:
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(count)))
        out: dict = {"jobs_per_s": count / (time.perf_counter() - start)}
    else:
        latencies = []
        for n in range(count):
            latencies.append(one(n))
            if pause:
                time.sleep(pause)
        out = {"ms": latencies}
    if counter is not None:
        _await_leftovers(os.path.join(os.path.dirname(counter), "cgroup.procs"))
    return {**out, "cpu_ms_per_job": (_jobs_cpu_ms(counter) - before) / count}


def _jobs_cpu_ms(counter: str | None) -> float:
    """CPU ms so far of the jobs' processes (the peer's own helpers, the program): with
    ``counter``, the CPU counter of a cgroup the loop joined, all of the cgroup's but the
    loop's own; without, every child the loop waited for, down the tree."""
    if counter is None:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return 1000 * (children.ru_utime + children.ru_stime)
    fd = os.open(counter, os.O_RDONLY | os.O_CLOEXEC)
    try:
        total_ns = read_cpu_ns(fd, os.path.basename(counter))
    finally:
        os.close(fd)
    own = resource.getrusage(resource.RUSAGE_SELF)
    return total_ns / 1e6 - 1000 * (own.ru_utime + own.ru_stime)


def _await_leftovers(procs: str, timeout_s: float = 2.0) -> None:
    """Wait (at most ``timeout_s`` in all) for the processes of the loop's cgroup but the
    loop: the last job's processes that nobody waits for (bwrap's sandbox init) may
    still be exiting, and their exit is part of the job's cost."""
    deadline = time.monotonic() + timeout_s
    with open(procs) as listing:
        others = [int(pid) for pid in listing.read().split() if int(pid) != os.getpid()]
    for pid in others:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # gone meanwhile
        try:
            readable(pidfd, max(0.0, deadline - time.monotonic()))  # a pidfd turns readable at the exit
        finally:
            os.close(pidfd)


def main() -> int:
    """``peers.py loop --count N [--pause S] [--concurrency C] [--counter FILE] -- CMD...``:
    prints JSON."""
    split = sys.argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["loop"])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=0)
    parser.add_argument("--counter", help="the CPU counter of the cgroup this loop runs in (CPU per job from it)")
    args = parser.parse_args(sys.argv[1:split])
    print(json.dumps(_loop(sys.argv[split + 1:], args.count, args.pause, args.concurrency, args.counter)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
