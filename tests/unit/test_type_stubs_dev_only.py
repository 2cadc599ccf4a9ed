"""The boto3 type stubs (mypy-boto3-*) are dev dependencies: the Lambda layer does not ship them, so the
core and the handlers must import them only for type checking. Every module of the core and every
handler is imported, and every AWS client runtime builds is built, in a process where they cannot be
imported at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import importlib, importlib.util, pathlib, pkgutil, sys

class RefuseStubs:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("mypy_boto3_"):
            raise ImportError(f"{name} is a dev-only type stub package")

sys.meta_path.insert(0, RefuseStubs())
sys.path.insert(0, "layers/state_core")
import state_core

for module in pkgutil.walk_packages(state_core.__path__, "state_core."):
    importlib.import_module(module.name)
for app in sorted(pathlib.Path("functions").glob("*/app.py")):
    spec = importlib.util.spec_from_file_location(f"{app.parent.name}_app", app)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

from state_core import runtime

runtime.dynamodb_client()
runtime.secrets_client()
runtime.change_publisher()
print(sorted(name for name in sys.modules if name.startswith("mypy_boto3_")))
"""


def test_core_and_handlers_run_without_the_type_stubs():
    environment = {
        "PATH": "/usr/bin:/bin",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "STATE_TABLE_NAME": "state-table",
        "STATE_EVENT_BUS_NAME": "state-bus",
        "STATE_EVENTS_DLQ_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/dead-letters",
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
