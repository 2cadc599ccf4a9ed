"""`pip install ./clients/python` in a fresh virtualenv (no system site packages, nothing of the project's
venv), then the installed copy talks to the local stack.

pip runs with this machine's own index settings (pip.conf and PIP_* variables, as a developer's pip would):
where those name a local mirror or wheel directory the test runs offline; where the only index is remote
and unreachable, it is skipped, and says so. It is never skipped for a failure of the package itself: the
skip needs pip to fail to fetch an unrelated package (httpx, with --no-deps) as well."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.stack import REPO_ROOT, DevStack

pytestmark = pytest.mark.e2e

PACKAGE = REPO_ROOT / "clients" / "python"


def clean_env() -> dict[str, str]:
    # Nothing of the test run may leak in: the source tree on PYTHONPATH would hide a broken package.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def pip(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=600, check=False)


def test_pip_installs_the_client_into_a_fresh_venv_and_it_works(stack: DevStack, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_env(), timeout=120)
    # A copy: pip builds in the source tree, which would leave build/ and *.egg-info in the checkout.
    package = shutil.copytree(PACKAGE, tmp_path / "package", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    installed = pip(venv, "install", str(package), cwd=tmp_path)
    if installed.returncode != 0:
        probe = pip(venv, "download", "--no-deps", "--dest", str(tmp_path / "probe"), "httpx", cwd=tmp_path)
        if probe.returncode != 0:
            pytest.skip("no package index reachable with this machine's pip settings (offline): " + probe.stderr[-300:])
        pytest.fail(f"pip install ./clients/python failed:\n{installed.stdout[-2000:]}\n{installed.stderr[-2000:]}")

    script = textwrap.dedent(
        """
        import importlib.resources, json, os, sys, uuid
        import state_client
        from state_client import StateClient, NotFound

        assert importlib.resources.files("state_client").joinpath("py.typed").is_file()
        key = f"client:install:{uuid.uuid4().hex[:8]}"
        with StateClient(token=os.environ["STATE_TOKEN"]) as state:
            state.set(key, {"installed": True})
            value = state.get(key).value
            state.delete(key)
            try:
                state.get(key)
            except NotFound:
                pass
        print(json.dumps({"file": state_client.__file__, "value": value, "prefix": sys.prefix}))
        """
    )
    env = {**clean_env(), "STATE_API_URL": stack.base_url, "STATE_TOKEN": stack.token()}
    ran = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["value"] == {"installed": True}
    # The installed copy, not the source tree.
    assert Path(result["file"]).is_relative_to(venv), result["file"]
