"""``sandbox doctor``: say exactly what this host supports and what is missing.

Each check prints one line - ok, warn or FAIL - and a remedy for anything not ok. The
last check runs a real job end to end, because a host can pass every individual probe
and still fail in combination (an LSM, a seccomp policy of the container we run in).
Exit status 1 when something essential fails.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from sandbox.errors import CgroupError
from sandbox.init_abi import INIT_BINARY
from sandbox.linux import syscalls as sc
from sandbox.overlay import MOUNT_SYSCALL, mount_method

MIN_KERNEL = (5, 12)  # mount_setattr; openat2 (5.6) and close_range (5.9) come before


@dataclass
class Check:
    level: str  # "ok", "warn", "FAIL"
    what: str
    remedy: str = ""


def run_checks(out: TextIO) -> int:
    checks: list[Callable[[], list[Check]]] = [
        _kernel,
        _init_binary,
        _user_namespaces,
        _overlay_in_userns,
        _cgroups,
        _job_ids,
        _seccomp,
        _egress,
        _end_to_end,
    ]
    failed = False
    for check in checks:
        try:
            results = check()
        except Exception as exc:
            results = [Check("FAIL", f"{check.__name__.strip('_')}: probe crashed: {exc}")]
        for result in results:
            line = f"[{result.level:>4}] {result.what}"
            if result.remedy:
                line += f"\n       -> {result.remedy}"
            print(line, file=out)
            failed |= result.level == "FAIL"
    return 1 if failed else 0


def _kernel() -> list[Check]:
    release = platform.release()
    version = tuple(int(part) for part in release.split("-")[0].split(".")[:2])
    if version < MIN_KERNEL:
        return [Check("FAIL", f"kernel {release}", f"need Linux {'.'.join(map(str, MIN_KERNEL))}+ (mount_setattr)")]
    return [Check("ok", f"kernel {release} ({platform.machine()})")]


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _egress() -> list[Check]:
    """Optional: only ``--network egress`` needs it, so a warning at most."""
    from sandbox.egress import stack_binary

    if stack_binary() is None:
        return [Check("warn", "egress (--network egress): slirp4netns missing", "apt-get install slirp4netns")]
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return [Check("warn", "egress (--network egress): /dev/net/tun is not usable by this user",
                      "chmod 0666 /dev/net/tun (Debian's udev default; scripts/setup does it)")]
    return [Check("ok", "egress (--network egress): slirp4netns and /dev/net/tun")]


def _init_binary(binary: str = INIT_BINARY) -> list[Check]:
    if not os.access(binary, os.X_OK):
        return [Check("FAIL", f"the sandbox init {binary} is not built",
                      "reinstall the package (pip install -e . compiles it; needs gcc and libc6-dev, "
                      "musl-tools preferred)")]
    newer = _sources_newer_than(binary)
    if newer:
        # An editable install runs the binary beside its sources: one built before a change
        # of them speaks an older protocol than the Python side (a session's sandbox fails
        # at its first request, a job may too).
        return [Check("FAIL", f"the sandbox init {binary} is older than its sources ({', '.join(newer)})",
                      "rebuild it: pip install -e . (scripts/setup)")]
    return [Check("ok", f"sandbox init built: {binary}")]


def _sources_newer_than(binary: str) -> list[str]:
    """The C sources beside the init (an editable install's; a wheel has none) changed
    since it was built."""
    directory = os.path.dirname(binary)
    built = os.stat(binary).st_mtime_ns
    return sorted(name for name in os.listdir(directory) if name.endswith((".c", ".h"))
                  and os.stat(os.path.join(directory, name)).st_mtime_ns > built)


def _user_namespaces() -> list[Check]:
    checks = []
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        checks.append(Check(
            "FAIL", "AppArmor restricts unprivileged user namespaces",
            "sysctl kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile allowing userns",
        ))
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        checks.append(Check("FAIL", "kernel.unprivileged_userns_clone=0", "sysctl kernel.unprivileged_userns_clone=1"))
    max_ns = _read("/proc/sys/user/max_user_namespaces")
    if max_ns == "0":
        checks.append(Check("FAIL", "user.max_user_namespaces=0", "sysctl user.max_user_namespaces=15000"))
    flags = sc.CLONE_NEWUSER | sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS
    failed, error = _in_child(lambda: sc.unshare(flags))
    if failed:
        checks.append(Check("FAIL", f"cannot create user+mount+pid+net+ipc+uts namespaces: {error}",
                            "allow unprivileged user namespaces (see the lines above)"))
    else:
        checks.append(Check("ok", f"unprivileged user namespaces (max {max_ns})"))
    return checks


def _overlay_in_userns() -> list[Check]:
    def probe() -> str:
        sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
        return mount_method()

    failed, said = _in_child(probe)
    if failed:
        return [Check("warn", f"overlayfs not usable in a user namespace: {said}", "images need Linux 5.11+ overlay")]
    if said == MOUNT_SYSCALL:
        # The option string of one mount(2) must fit in a page: a few hundred layers.
        return [Check("warn", f"overlayfs in user namespaces; image layers by the {MOUNT_SYSCALL} fallback "
                      "(no overlay 'lowerdir+' before Linux 6.8)")]
    return [Check("ok", f"overlayfs in user namespaces; image layers by {said}")]


def _cgroups() -> list[Check]:
    from sandbox.cgroups import open_backend
    from sandbox.cgroups.systemd import systemd_running
    from sandbox.cgroups.v2 import v2_mount

    if v2_mount() is None:
        version = "v1 (or hybrid)"
    else:
        version = "v2, managed by systemd" if systemd_running() else "v2"
    try:
        backend = open_backend()
    except (CgroupError, OSError) as exc:
        return [Check("FAIL", f"cgroup {version}: no delegated subtree, so memory, pids and cpus are not "
                      "enforced (jobs fall back to rlimits)", str(exc))]
    checks = [Check("ok", f"cgroup {version}: delegated subtree {', '.join(backend.parents())}")]
    for feature, present in backend.features().items():
        checks.append(Check("ok" if present else "warn", f"{feature}: {'yes' if present else 'no'}"))
    return checks


def _job_ids() -> list[Check]:
    from sandbox.ids import plan_ids

    plan = plan_ids()
    if plan.jobs is None:
        return [Check("warn", "jobs run as this user: running jobs share its per-user kernel counters (pipe "
                      "buffers, pending signals) and its files' permissions", plan.problem or "")]
    first, count = plan.jobs.uid, plan.jobs.count
    source = "root's own range" if plan.mapper == "write" else "subordinate ids, newuidmap/newgidmap"
    return [Check("ok", f"each running job is a host user of its own: ids {first}..{first + count - 1} ({source})")]


def _seccomp() -> list[Check]:
    from sandbox.profile import load_profile
    from sandbox.profile_names import builtin_profiles
    from sandbox.seccomp import compile_policy

    actions = (_read("/proc/sys/kernel/seccomp/actions_avail") or "").split()
    # user_notif: violations are named through a notification listener (docs/profiles.md)
    missing = [a for a in ("user_notif", "errno", "allow") if a not in actions]
    if missing:
        return [Check("FAIL", f"seccomp actions missing: {missing}", "need Linux >= 5.19 with CONFIG_SECCOMP_FILTER")]
    sizes = {name: len(compile_policy(load_profile(name).seccomp)) // 8 for name in builtin_profiles()}
    listed = ", ".join(f"{name} {size}" for name, size in sizes.items())
    return [Check("ok", f"seccomp filter mode with notifications; profiles compile to BPF instructions: {listed}")]


def _end_to_end() -> list[Check]:
    from sandbox.models import Job, Status
    from sandbox.runner import Runner

    runner = Runner()
    try:
        result = runner.run(Job(cmd=["/bin/sh", "-c", "echo ok"]))
    finally:
        runner.close()
    if result.status is Status.OK and result.stdout == b"ok\n":
        missing = f" (not enforced: {', '.join(result.limits_not_enforced)})" if result.limits_not_enforced else ""
        level = "warn" if missing else "ok"
        return [Check(level, f"a real job ran in {result.usage.wall_ms:.1f} ms{missing}")]
    return [Check("FAIL", f"a real job failed: {result.status.value}: {result.error or result.stderr!r}")]


def _in_child(action: Callable[[], str | None]) -> tuple[bool, str]:
    """Run ``action`` in a forked child (it may unshare namespaces this process must keep
    out of); return (whether it failed, its error text or else what it returned)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            os.write(write_end, (action() or "").encode()[:500])
            os._exit(0)
        except BaseException as exc:
            os.write(write_end, str(exc).encode()[:500])
            os._exit(1)
    os.close(write_end)
    message = os.read(read_end, 1000).decode()
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) != 0, message
