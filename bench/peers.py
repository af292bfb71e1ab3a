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
        Peer("sandbox run", prefix=[sandbox_cli, "run", "--"]),
    ]
    if with_podman:
        peers.append(Peer("podman", prefix=["podman", "--runtime", "runc", "run", "--rm", "--network", "none",
                                            "-v", "/usr:/usr:ro", "--rootfs", str(rootfs)]))
    return peers


def measure(peer: Peer, cmd: list[str], count: int, *, pause: float = 0.0, concurrency: int = 0) -> dict:
    """Run the loop below for ``peer``: latencies in ms (concurrency 0) or jobs/s."""
    argv = [*peer.wrapper, sys.executable, __file__, "loop", "--count", str(count), "--pause", str(pause),
            "--concurrency", str(concurrency), "--", *peer.argv(cmd)]
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def _loop(argv: list[str], count: int, pause: float, concurrency: int) -> dict:
    def one(n: int) -> float:
        start = time.perf_counter()
        subprocess.run([a.replace("{n}", f"{os.getpid()}-{n}") for a in argv], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return (time.perf_counter() - start) * 1000

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Every process of the job that was waited for, down the tree (the peer's own
    # helpers, the program): what a job costs the machine's CPUs, beside its latency.
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**out, "cpu_ms_per_job": 1000 * used / count}


def main() -> int:
    """``peers.py loop --count N [--pause S] [--concurrency C] -- CMD...``: prints JSON."""
    split = sys.argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["loop"])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=0)
    args = parser.parse_args(sys.argv[1:split])
    print(json.dumps(_loop(sys.argv[split + 1:], args.count, args.pause, args.concurrency)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
