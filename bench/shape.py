"""The floor of the warm pool's shape: how fast a server of this design runs the static
job on this machine with nothing of the product in it, beside the worker and bwrap in
the same run.

`bench/programs/shape.c` keeps boxes ready - pid 1 of six new namespaces and a stage
waiting to exec `busybox true` - and answers a one-byte request on a unix socket by
releasing one, reading the program's output to EOF and pid 1's report of its wait
status. Its rows, each timed by the same Python client loop (send, receive) as the
worker's client times a job:

- straight to the stage, every box made before the first job: the chain's floor;
- through pid 1 (the release forwarded, as the worker's goes through the sandbox init),
  every box made before the first job;
- through pid 1, with the kernel work of one of the product's sandboxes - six
  namespaces, a memory and a pids cgroup made for the box and removed after it, a tmpfs
  and a /proc, the default profile's filter with a listener - and a spawner process
  making a box after every job, 4 kept ready, as the worker's launchers refill its pool.

The product's sandboxes do more (a root of bind mounts, a user namespace per job id,
the loopback up, stderr and a CPU counter): the rows are a floor, not a peer. The worker
row is `sandbox serve` with 2 slots and 4 warm, as in the latency table; bwrap has the
latency table's flags. The five take turns in blocks, so drift hits them alike.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import PROGRAMS, Worker, compile_program, percentile, wall_ms
from bench.peers import BWRAP
from bench.worker import STATIC, worker_latency
from sandbox.cgroups import open_backend
from sandbox.cgroups.v1 import V1Backend
from sandbox.cgroups.v2 import V2Backend
from sandbox.profile_cache import ProfileCache

BLOCK = 200  # jobs per row per turn
BLOCKS = 5
STRAIGHT = "shape: straight to the stage, made ahead"
THROUGH_INIT = "shape: through pid 1, made ahead"
REFILLED = "shape: through pid 1, refilled, the sandbox's kernel work"


def _cgroup_arguments() -> list[str]:
    """The join file and the parents under which the shape makes a box's cgroups: the
    memory and pids hierarchies of the user's delegated subtree on v1, its directory on v2."""
    backend = open_backend()
    if isinstance(backend, V1Backend):
        return ["tasks", backend.parent_dirs["memory"], backend.parent_dirs["pids"]]
    if isinstance(backend, V2Backend):
        return ["cgroup.procs", backend.parent]
    raise RuntimeError(f"no cgroup layout for {type(backend).__name__}")


def _shape_latency(binary: Path, place: str, jobs: int, *, via_init: bool, refill: bool,
                   kernel_work: list[str]) -> list[float]:
    path = os.path.join(place, "shape.sock")
    argv = [str(binary), path, str(jobs), str(int(via_init)), str(int(refill)), *(kernel_work or ["-"])]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as server:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"shape server failed ({server.wait()})")
        latencies = []
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            for _ in range(jobs):
                start = time.perf_counter()
                client.sendall(b"x")
                status = client.recv(4)
                latencies.append((time.perf_counter() - start) * 1000)
                if status != b"\0\0\0\0":
                    raise RuntimeError(f"shape job failed: wait status {status!r}")
        if server.wait() != 0:
            raise RuntimeError(f"shape server ended with {server.returncode}")
    os.unlink(path)
    return latencies


def run(quick: bool) -> dict[str, Any]:
    block, blocks = (20, 1) if quick else (BLOCK, BLOCKS)
    ms: dict[str, list[float]] = {STRAIGHT: [], THROUGH_INIT: [], REFILLED: [], "worker": [], "bwrap": []}
    with tempfile.TemporaryDirectory(prefix="bench-shape-") as place:
        binary = compile_program(PROGRAMS / "shape.c", Path(place))
        filter_path = os.path.join(place, "default.bpf")
        Path(filter_path).write_bytes(ProfileCache().get("default").bpf)
        kernel_work = [filter_path, *_cgroup_arguments()]
        with Worker(slots=2, warm=4) as worker:
            worker_latency(worker.socket, STATIC, block)  # warm: the pool, the caches
            for _ in range(blocks):
                ms[STRAIGHT] += _shape_latency(binary, place, block, via_init=False, refill=False, kernel_work=[])
                ms[THROUGH_INIT] += _shape_latency(binary, place, block, via_init=True, refill=False, kernel_work=[])
                ms[REFILLED] += _shape_latency(binary, place, block, via_init=True, refill=True,
                                               kernel_work=kernel_work)
                ms["worker"] += worker_latency(worker.socket, STATIC, block)
                ms["bwrap"] += [wall_ms([*BWRAP, *STATIC]) for _ in range(block)]
    bwrap_p50, bwrap_p99 = statistics.median(ms["bwrap"]), percentile(ms["bwrap"], 99)
    rows = {name: {"p50": statistics.median(values), "p99": percentile(values, 99)} for name, values in ms.items()}
    for name, row in rows.items():
        print(f"{name}: p50 {row['p50']:.2f} ms ({row['p50'] / bwrap_p50:.3f} of bwrap's), "
              f"p99 {row['p99']:.2f} ms ({row['p99'] / bwrap_p99:.3f})")
    return {"jobs_per_row": block * blocks, "block": block, "rows": rows, "ms": ms}
