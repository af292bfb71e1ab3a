"""Builds the sandbox init (sandbox/native/*.c) with the package: a static executable,
not a Python extension, so setuptools has no notion of it.

It is built with musl (Debian's musl-tools) where available, else with the system's
compiler and glibc (or with $CC): a static glibc binary probes the CPU's caches with
cpuid at start-up, and in a VM each cpuid traps to the hypervisor, once per job.

The profiles (the top-level ``profiles/`` folder, data only) are installed as the
package ``sandbox.profiles`` and read with importlib.resources, so an installed wheel
needs no checkout.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

from setuptools import Distribution, find_packages, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

SOURCES = sorted(glob.glob(os.path.join("sandbox", "native", "*.c")))
BINARY = os.path.join("sandbox", "native", "sandbox-init")
PROFILE_PACKAGES = {"sandbox.profiles": "profiles"}


class BuildWithInit(build_py):
    """build_py, plus the compiled sandbox init: beside its sources for an editable
    install (the package runs from the checkout), in the build tree otherwise. Warnings
    are errors only in a developer's editable install: a user's install must not fail
    because a newer compiler warns about something new."""

    def run(self) -> None:
        super().run()
        target = BINARY if self.editable_mode else os.path.join(self.build_lib, BINARY)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        compiler = os.environ.get("CC") or shutil.which("musl-gcc") or "cc"
        werror = ["-Werror"] if self.editable_mode else []
        subprocess.run([compiler, "-O2", "-static", "-Wall", "-Wextra", *werror, "-o", target, *SOURCES], check=True)


class PlatformDistribution(Distribution):
    """A wheel with the sandbox init in it runs on this platform only: say so in its
    tags (not py3-none-any)."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """Tagged py3-none-<platform>: the init is a static executable, nothing in the
    package depends on the Python ABI."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    packages=[*find_packages(include=["sandbox", "sandbox.*", "worker", "worker.*"]), *PROFILE_PACKAGES],
    package_dir=PROFILE_PACKAGES,
    package_data={"sandbox": ["py.typed"], "sandbox.profiles": ["*.toml", "languages/*.toml"]},
    exclude_package_data={"sandbox": ["native/*.c", "native/*.h"], "sandbox.profiles": ["evidence/*"]},
    cmdclass={"build_py": BuildWithInit, "bdist_wheel": PlatformWheel},
    distclass=PlatformDistribution,
)
