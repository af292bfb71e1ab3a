"""Builds the program stage (sandbox/native/program_stage.c) with the package: a
static executable, not a Python extension, so setuptools has no notion of it."""

from __future__ import annotations

import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = os.path.join("sandbox", "native", "program_stage.c")
BINARY = os.path.join("sandbox", "native", "program-stage")


class BuildWithProgramStage(build_py):
    """build_py, plus the compiled program stage: beside its source for an editable
    install (the package runs from the checkout), in the build tree otherwise."""

    def run(self) -> None:
        super().run()
        target = BINARY if self.editable_mode else os.path.join(self.build_lib, BINARY)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        compiler = os.environ.get("CC", "cc")
        subprocess.run(
            [compiler, "-O2", "-static", "-Wall", "-Wextra", "-Werror", "-o", target, SOURCE],
            check=True,
        )


setup(cmdclass={"build_py": BuildWithProgramStage})
