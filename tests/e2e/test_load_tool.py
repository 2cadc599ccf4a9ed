"""`make load` stays runnable: its entry point, run for a few seconds against a local stack, drives every
operation and reports each one, with no error. Its figures are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.load.workload import OPERATIONS
from tests.stack import start_devstack

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_load_tool_drives_every_operation_without_errors(tmp_path: Path) -> None:
    stack = start_devstack(tmp_path / "stack")
    summary_path = tmp_path / "summary.json"
    try:
        env = {**os.environ, "TOKEN": stack.token(), "API_URL": stack.base_url}
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.load",
                # Two users: each function's workers start cold, one per concurrent request, and the warm-up
                # leaves those starts out of the counted seconds.
                "--warmup",
                "8s",
                "--duration",
                "6s",
                "--users",
                "2",
                "--spawn-rate",
                "2",
                # Even weights and a small key space: every operation runs often enough to show, and reads
                # and PATCHes find keys that writes made.
                "--mix",
                "get=1,put=1,patch=1,delete=1,history=1,large=1",
                "--key-space",
                "10",
                "--large-bytes",
                "65536",
                "--progress-interval",
                "2",
                "--summary-json",
                str(summary_path),
            ],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        stack.stop()
    output = completed.stdout[-4000:] + completed.stderr[-4000:]
    assert completed.returncode == 0, output
    summary = json.loads(summary_path.read_text())
    assert set(summary["operations"]) == set(OPERATIONS), output
    for name, row in summary["operations"].items():
        assert row["requests"] > 0, (name, output)
        assert row["errors"] == 0, (name, row, output)
    assert summary["errors"] == 0
    assert summary["errors_by_status"] == {}
    assert summary["warmup_errors"] == 0
    assert "Summary after" in completed.stdout
    # The progress display ran while the users did.
    assert (completed.stdout + completed.stderr).count("Aggregated") >= 3, output
