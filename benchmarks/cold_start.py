"""Cold start: a fresh interpreter importing each handler module (CPU time) (as Lambda's init does, the layer and the
function's folder on sys.path) vs one importing boto3 alone; plus the top imports by time (-X importtime), and what
the first request then builds (settings, policy, clients, the manager: no network), since what a handler does not
import at init its first request pays."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from typing import Any

from benchmarks.common import LAYER, REPO_ROOT, Row, percentile

FUNCTIONS = (
    "get_state",
    "put_state",
    "patch_state",
    "delete_state",
    "list_state",
    "batch_get_state",
    "transact_state",
    "schemas",
    "authorizer",
)
# Also imported with tracing on (EnableTracing=true: the X-Ray SDK, Powertools' Tracer, its patches), against the
# same function with tracing off: what tracing costs a cold start, and that off it costs nothing.
TRACED = ("get_state", "authorizer")

# CPU time of the import, not wall time: on a shared machine wall time mostly measures the neighbours,
# while an import on Lambda's dedicated CPU is CPU-bound (its files are in the page cache after the first
# run here, as the layer is on Lambda's local disk).
_PROBE = """
import sys, time
sys.path[:0] = {paths!r}
started = time.process_time()
import {module}
imported = time.process_time()
{first_use}
print(imported - started, time.process_time() - imported)
"""

# What each function's first request builds before its first network call, in the order it does.
_STATE_FIRST_USE = "from state_core import runtime; runtime.role_policy(); runtime.state_manager()"
FIRST_USE = {
    "get_state": _STATE_FIRST_USE + "; runtime.history_reader()",
    "put_state": _STATE_FIRST_USE + "; from state_core.api.bodies import parse_put_body; parse_put_body({'value': 1})",
    "patch_state": _STATE_FIRST_USE,
    "delete_state": _STATE_FIRST_USE,
    "batch_get_state": _STATE_FIRST_USE,
    "transact_state": "from state_core import runtime; runtime.role_policy(); runtime.transactions()",
    # The registry's store; the validator is imported by a publish or read, not measured here.
    "schemas": "from state_core import runtime; runtime.role_policy(); runtime.schema_registry()",
    # Its policy and DynamoDB client (the cursor key's secret is a network read, not measured here).
    "list_state": "from state_core import runtime; runtime.role_policy(); runtime.dynamodb_client()",
    # The settings and the issuer's verifier (the JWKS fetcher is built at import).
    "authorizer": "app.issuer()",
}
# Enough configuration for the builders above; Redis configured, so its client and scripts are imported too.
_SETTINGS = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "STATE_TABLE_NAME": "bench-table",
    "STATE_REDIS_URL": "redis://127.0.0.1:6379/0",
    "STATE_CACHE_SIGNING_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:bench",
    "STATE_OIDC_ISSUER": "https://issuer.example.com",
    "STATE_OIDC_AUDIENCE": "state",
}


def _environment() -> dict[str, str]:
    # No site-packages editable finder doing the work Lambda's plain sys.path does not need; the layer and
    # the function folder come first on sys.path as in /opt/python and /var/task.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "STATE_TRACING"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return {**env, **_SETTINGS}


def _tracing_environment(function: str) -> dict[str, str]:
    """What Lambda and the template give a function with EnableTracing=true (the Tracer stays off outside Lambda)."""
    return {
        "STATE_TRACING": "true",
        "POWERTOOLS_TRACE_DISABLED": "false",
        "LAMBDA_TASK_ROOT": str(REPO_ROOT / "functions" / function),
        "AWS_LAMBDA_FUNCTION_NAME": function,
    }


def _fresh_python(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A new interpreter, started outside the repo with the environment above (as a cold container)."""
    return subprocess.run(
        [sys.executable, *args],
        check=True,
        capture_output=True,
        text=True,
        env={**_environment(), **(extra_env or {})},
        cwd="/",
    )


def _import_seconds(
    module: str, paths: list[str], first_use: str = "", extra_env: dict[str, str] | None = None
) -> tuple[float, float]:
    """CPU seconds of the import, then of `first_use` right after it."""
    probe = _PROBE.format(paths=paths, module=module, first_use=first_use)
    output = _fresh_python("-c", probe, extra_env=extra_env).stdout
    imported, used = output.strip().splitlines()[-1].split()
    return float(imported), float(used)


def _import_profile(paths: list[str]) -> dict[str, float]:
    """Self time (ms) of `import app` by top-level package, the core's by subpackage (-X importtime)."""
    stderr = _fresh_python("-X", "importtime", "-c", f"import sys; sys.path[:0] = {paths!r}; import app").stderr
    totals: dict[str, float] = defaultdict(float)
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if match:
            parts = match.group(4).split(".")
            totals[".".join(parts[:2]) if parts[0] == "state_core" else parts[0]] += int(match.group(1)) / 1000
    return totals


def top_imports(function: str, count: int = 10, profiles: int = 3) -> list[dict[str, Any]]:
    """The `count` packages that cost the handler's import most: the median of `profiles` runs of their self time
    (ms; -X importtime's own overhead inflates it, so compare the packages with each other)."""
    paths = [str(LAYER), str(REPO_ROOT / "functions" / function)]
    runs = [_import_profile(paths) for _ in range(profiles)]
    medians = {name: statistics.median(run.get(name, 0.0) for run in runs) for name in set().union(*runs)}
    ranked = sorted(medians.items(), key=lambda item: -item[1])[:count]
    return [{"package": name, "ms": round(ms, 1)} for name, ms in ranked]


def _compile_sources() -> None:
    """Bring the layer's and the functions' bytecode up to date, as the built layer ships it
    (layers/state_core/Makefile): the rows then time loading modules, not compiling one edited since."""
    import compileall

    for folder in (LAYER, *(REPO_ROOT / "functions" / function for function in FUNCTIONS)):
        compileall.compile_dir(folder, quiet=1)


def run(runs: int) -> list[Row]:
    _compile_sources()
    baseline: list[float] = []
    samples: dict[str, list[tuple[float, float]]] = {function: [] for function in FUNCTIONS}
    traced: dict[str, list[float]] = {function: [] for function in TRACED}
    # Interleaved, so the machine's drift hits every module alike; one warm-up round for the OS file cache.
    for round_number in range(runs + 1):
        base, _ = _import_seconds("boto3", [])
        timings = {
            function: _import_seconds("app", [str(LAYER), str(REPO_ROOT / "functions" / function)], FIRST_USE[function])
            for function in FUNCTIONS
        }
        traced_timings = {
            function: _import_seconds(
                "app", [str(LAYER), str(REPO_ROOT / "functions" / function)], extra_env=_tracing_environment(function)
            )[0]
            for function in TRACED
        }
        if round_number == 0:
            continue
        baseline.append(base)
        for function, seconds in timings.items():
            samples[function].append(seconds)
        for function, seconds in traced_timings.items():
            traced[function].append(seconds)
    base_ms = [s * 1000 for s in baseline]
    rows = []
    for function in FUNCTIONS:
        ms = [imported * 1000 for imported, _ in samples[function]]
        first_use_ms = [used * 1000 for _, used in samples[function]]
        rows.append(
            Row(
                f"cold import {function}",
                "import boto3",
                statistics.median(ms),
                percentile(ms, 0.99),
                len(ms),
                statistics.median(base_ms),
                percentile(base_ms, 0.99),
                notes={
                    "first_use_ms": round(statistics.median(first_use_ms), 1),
                    "top_imports": top_imports(function),
                },
            )
        )
    for function in TRACED:
        off_ms = [imported * 1000 for imported, _ in samples[function]]
        on_ms = [seconds * 1000 for seconds in traced[function]]
        rows.append(
            Row(
                f"cold import {function}, tracing on",
                f"cold import {function}, tracing off",
                statistics.median(on_ms),
                percentile(on_ms, 0.99),
                len(on_ms),
                statistics.median(off_ms),
                percentile(off_ms, 0.99),
            )
        )
    return rows
