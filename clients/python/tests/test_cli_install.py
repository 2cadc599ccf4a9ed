"""The `statectl` script as pip installs it in a fresh virtualenv: without the `cli` extra it says what to
install; with it, it talks to the local stack. pip runs with this machine's own settings, skipped only when
no index is reachable at all (as test_state_client_install.py does, and says why)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.stack import REPO_ROOT, DevStack

pytestmark = pytest.mark.e2e

PACKAGE = REPO_ROOT / "clients" / "python"


def clean_env() -> dict[str, str]:
    # The source tree on PYTHONPATH would hide a broken package.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def pip(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=600, check=False)


def install(venv: Path, requirement: str, tmp_path: Path) -> None:
    installed = pip(venv, "install", requirement, cwd=tmp_path)
    if installed.returncode != 0:
        probe = pip(venv, "download", "--no-deps", "--dest", str(tmp_path / "probe"), "httpx", cwd=tmp_path)
        if probe.returncode != 0:
            pytest.skip("no package index reachable with this machine's pip settings (offline): " + probe.stderr[-300:])
        pytest.fail(f"pip install {requirement} failed:\n{installed.stdout[-2000:]}\n{installed.stderr[-2000:]}")


def test_the_installed_statectl_script(stack: DevStack, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_env(), timeout=120)
    package = shutil.copytree(PACKAGE, tmp_path / "package", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    statectl = str(venv / "bin" / "statectl")
    env = {**clean_env(), "STATE_API_URL": stack.base_url, "STATE_TOKEN": stack.token(), "NO_COLOR": "1"}

    install(venv, str(package), tmp_path)
    bare = subprocess.run([statectl, "--help"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert bare.returncode != 0
    assert "pip install 'state-client[cli]'" in bare.stderr
    assert "Traceback" not in bare.stderr

    install(venv, f"{package}[cli]", tmp_path)
    key = f"client:statectl:{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([statectl, *args], env=env, capture_output=True, text=True, timeout=60, check=False)

    assert run("put", key, '{"installed": true}').returncode == 0
    read = run("get", key, "-o", "yaml")
    assert read.returncode == 0, read.stderr
    assert "installed: true" in read.stdout
    assert json.loads(run("delete", key).stdout)["version"] == 2
    assert run("get", key).returncode == 3
