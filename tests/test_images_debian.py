"""A real distribution image: Debian 12 with python3 (built with mmdebstrap, cached
outside the checkout), pushed with skopeo, pulled and run."""

from __future__ import annotations

import pytest
from imagebuild import debian_python_layout
from registries import skopeo_push
from test_images_registry import cli, env, images_work, registry  # noqa: F401 - shared fixtures


@pytest.mark.timeout(900)
def test_debian_python_image_pulls_and_runs(env, registry, images_work):  # noqa: F811
    layout = debian_python_layout(images_work / "layouts" / "debian-python")
    skopeo_push(f"oci:{layout}", f"{registry.host}/judge/python:3.11", images_work)
    done = cli("pull", f"{registry.host}/judge/python:3.11", timeout=600)
    assert done.returncode == 0, done.stderr
    done = cli("run", "--image", "judge/python:3.11", "--", "python3", "-c",
               "import sys, os; print(sys.version_info[:2], os.getuid(), os.getcwd())")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "(3, 11) 1000 /work\n"
    done = cli("run", "--image", "judge/python:3.11", "--", "sh", "-c",
               "ls -l /usr/bin/passwd | cut -c1-10; test -c /dev/null && echo devnull")
    assert done.stdout == "-rwxr-xr-x\ndevnull\n", done  # setuid stripped; /dev is the sandbox's
