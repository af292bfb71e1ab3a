"""The layers the architecture promises, checked on what a fresh interpreter imports.

The worker's trio process only talks: it must not load what starts sandboxes (the
seccomp compiler, the zygote, the supply, the cgroup backends, the image pull and
unpack code). It may read the image store's index (JSON files, the standard library) to
refuse a job on a missing image at once. The zygote is forked for every image sandbox:
it must stay the standard library plus the few modules a sandbox's set-up runs."""

from __future__ import annotations

import json
import subprocess
import sys

ENGINE = ("pyseccomp", "httpx", "sandbox.zygote", "sandbox.supply", "sandbox.prepare", "sandbox.runner",
          "sandbox.cgroups", "sandbox.seccomp", "sandbox.profile", "sandbox.images.pull", "sandbox.images.unpack",
          "sandbox.images.registry", "sandbox.supervise", "worker.launcher")
ZYGOTE_MODULES = {"sandbox", "sandbox.child", "sandbox.errors", "sandbox.fspath", "sandbox.linux",
                  "sandbox.linux.syscalls", "sandbox.overlay", "sandbox.rootfs", "sandbox.stages", "sandbox.template", "sandbox.init_abi", "sandbox.volume_layer",
                  "sandbox.zygote"}


def modules_after(statement: str, *flags: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout))


def test_the_worker_process_loads_no_engine() -> None:
    loaded = modules_after("import worker.server")
    engine = sorted(m for m in loaded if any(m == e or m.startswith(f"{e}.") for e in ENGINE))
    assert engine == [], engine
    assert "sandbox.job_message" in loaded  # (the one piece it shares with the runner)
    assert "coredis" not in loaded  # (only a worker with a Redis queue loads its client)


def test_the_http_front_door_loads_no_engine_but_its_callback_client() -> None:
    """``--http`` adds hypercorn, starlette and httpx (for callbacks) to the worker's
    process, loaded only then; still nothing that starts sandboxes."""
    assert "worker.http" not in modules_after("import worker.server")
    loaded = modules_after("import worker.http")
    engine = sorted(m for m in loaded if any(m == e or m.startswith(f"{e}.") for e in ENGINE if e != "httpx"))
    assert engine == [], engine
    assert {"hypercorn", "starlette", "httpx"} <= loaded


def test_the_zygote_is_the_standard_library_and_its_own_few_modules() -> None:
    path = [p for p in sys.path if p]
    loaded = modules_after(f"sys.path[:0] = {path!r}; import sandbox.zygote", "-S")
    ours = {m for m in loaded if m.split(".")[0] in ("sandbox", "worker")}
    assert ours == ZYGOTE_MODULES, ours ^ ZYGOTE_MODULES
    foreign = sorted(m for m in loaded - ours - {"__main__"} if m.split(".")[0] not in sys.stdlib_module_names)
    assert foreign == [], foreign
