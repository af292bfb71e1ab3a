"""What `sandbox run` loads costs every run its start-up: every dataclass among it has
a docstring of its own. Without one, the dataclass decorator makes one from the class's
signature through ``inspect``, at every start of every process that imports it (the
figure is in the CHANGELOG)."""

from __future__ import annotations

import json
import subprocess
import sys

# The modules a one-shot `sandbox run` imports (sandbox/cli/__init__.py, run.py), and
# every module of the package they load, checked in an interpreter of their own.
CHECK = """
import dataclasses, importlib, inspect, json, sys
for name in ("sandbox.cli", "sandbox.zygote", "sandbox.ids", "sandbox.cli.run", "sandbox.runner"):
    importlib.import_module(name)
loaded = [m for n, m in list(sys.modules.items()) if n == "sandbox" or n.startswith("sandbox.")]
classes = {c for m in loaded for c in vars(m).values()
           if inspect.isclass(c) and dataclasses.is_dataclass(c) and c.__module__ == m.__name__}
generated = [c.__qualname__ for c in classes
             if c.__doc__ == c.__name__ + str(inspect.signature(c)).replace(" -> None", "")]
print(json.dumps({"classes": len(classes), "generated": sorted(generated)}))
"""


def test_every_dataclass_sandbox_run_loads_has_its_own_docstring():
    found = json.loads(subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                                      check=True).stdout)
    assert found["classes"] > 20  # (the check sees them)
    assert found["generated"] == []
