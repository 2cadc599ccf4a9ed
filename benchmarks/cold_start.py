"""Cold start: a fresh interpreter importing each handler module (CPU time) (as Lambda's init does, the layer and the
function's folder on sys.path) vs one importing boto3 alone; plus the top imports by time (-X importtime)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from typing import Any

from benchmarks.common import LAYER, REPO_ROOT, Row, percentile

FUNCTIONS = ("get_state", "put_state", "patch_state", "delete_state", "authorizer")

# CPU time of the import, not wall time: on a shared machine wall time mostly measures the neighbours,
# while an import on Lambda's dedicated CPU is CPU-bound (its files are in the page cache after the first
# run here, as the layer is on Lambda's local disk).
_PROBE = """
import sys, time
sys.path[:0] = {paths!r}
started = time.process_time()
import {module}
print(time.process_time() - started)
"""


def _environment() -> dict[str, str]:
    # No site-packages editable finder doing the work Lambda's plain sys.path does not need; the layer and
    # the function folder come first on sys.path as in /opt/python and /var/task.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "STATE_TRACING"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _fresh_python(*args: str) -> subprocess.CompletedProcess[str]:
    """A new interpreter, started outside the repo with the environment above (as a cold container)."""
    return subprocess.run(
        [sys.executable, *args], check=True, capture_output=True, text=True, env=_environment(), cwd="/"
    )


def _import_seconds(module: str, paths: list[str]) -> float:
    output = _fresh_python("-c", _PROBE.format(paths=paths, module=module)).stdout
    return float(output.strip().splitlines()[-1])


def top_imports(function: str, count: int = 10) -> list[dict[str, Any]]:
    """The `count` top-level packages that cost the handler's import most (self time summed, ms)."""
    paths = [str(LAYER), str(REPO_ROOT / "functions" / function)]
    stderr = _fresh_python("-X", "importtime", "-c", f"import sys; sys.path[:0] = {paths!r}; import app").stderr
    totals: dict[str, float] = defaultdict(float)
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if match:
            totals[match.group(4).split(".")[0]] += int(match.group(1)) / 1000
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:count]
    return [{"package": name, "ms": round(ms, 1)} for name, ms in ranked]


def run(runs: int) -> list[Row]:
    baseline: list[float] = []
    samples: dict[str, list[float]] = {function: [] for function in FUNCTIONS}
    # Interleaved, so the machine's drift hits every module alike; one warm-up round for the OS file cache.
    for round_number in range(runs + 1):
        base = _import_seconds("boto3", [])
        timings = {
            function: _import_seconds("app", [str(LAYER), str(REPO_ROOT / "functions" / function)])
            for function in FUNCTIONS
        }
        if round_number == 0:
            continue
        baseline.append(base)
        for function, seconds in timings.items():
            samples[function].append(seconds)
    base_ms = [s * 1000 for s in baseline]
    rows = []
    for function in FUNCTIONS:
        ms = [s * 1000 for s in samples[function]]
        rows.append(
            Row(
                f"cold import {function}",
                "import boto3",
                statistics.median(ms),
                percentile(ms, 0.99),
                len(ms),
                statistics.median(base_ms),
                percentile(base_ms, 0.99),
                notes={"top_imports": top_imports(function)},
            )
        )
    return rows
