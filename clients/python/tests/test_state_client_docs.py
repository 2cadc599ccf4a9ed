"""docs/client.md's examples run as written against the local stack (its ports swapped for the test
stack's), so the guide cannot drift from the code. The watch example follows a key forever and is left out:
test_state_client_watch.py covers what it shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import REPO_ROOT, DevStack

pytestmark = pytest.mark.e2e

GUIDE = REPO_ROOT / "docs" / "client.md"
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S) if ".watch(" not in b]


def test_the_guide_has_the_examples_this_test_runs() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=[f"example-{i}" for i in range(len(BLOCKS))])
def test_an_example_of_the_guide_runs(stack: DevStack, block: str, tmp_path: Path) -> None:
    code = block.replace("http://127.0.0.1:3000", stack.base_url).replace("http://127.0.0.1:3002", stack.issuer)
    env = {**os.environ, "STATE_API_URL": stack.base_url, "TOKEN": stack.token()}
    env["PYTHONPATH"] = str(REPO_ROOT / "clients" / "python" / "src")
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert ran.returncode == 0, ran.stderr
