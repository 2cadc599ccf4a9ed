"""`python -m benchmarks` (make bench): every row side by side with its baseline, printed as one table and
written to benchmarks/results/latest.json. Timings are reported, never asserted."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import LAYER, REPO_ROOT, Row, format_table

RESULTS = REPO_ROOT / "benchmarks" / "results" / "latest.json"


def main(argv: list[str] | None = None) -> int:  # noqa: C901, PLR0915  one block per optional group of rows
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300, help="runs of each in-process row")
    parser.add_argument("--large-runs", type=int, default=20, help="runs of the 1 MiB row")
    parser.add_argument("--cold-runs", type=int, default=10, help="fresh interpreters per cold-start row")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each count of concurrent PATCHes")
    parser.add_argument(
        "--writers", type=int, nargs="+", default=[8, 64, 256], help="counts of concurrent PATCHes (default: 8 64 256)"
    )
    parser.add_argument(
        "--lock-writers", type=int, nargs="+", help="counts of writers of the lock-alone rows (default: --writers)"
    )
    parser.add_argument(
        "--watch-writes", type=int, help="PUTs of every watch row (default: 20 for 1 watcher, 5 for 1,000)"
    )
    parser.add_argument(
        "--watch-watchers", type=int, nargs="+", help="watchers of each watch row (default: 1 and 1,000)"
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("inprocess", "capacity", "contention", "lock", "cold", "watch", "schemas", "encryption"),
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the rows as JSON")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(LAYER))

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    capacity: list[dict[str, object]] = []
    if "inprocess" not in args.skip or "capacity" not in args.skip:
        from benchmarks import inprocess

        with inprocess.services() as svc:
            if "inprocess" not in args.skip:
                rows += inprocess.run(svc, args.runs, args.large_runs)
            if "capacity" not in args.skip:
                capacity = inprocess.capacity(svc)
    if "contention" not in args.skip:
        from benchmarks import contention

        rows += contention.run(args.rounds, tuple(args.writers))
    if "lock" not in args.skip:
        from benchmarks import lock_alone

        rows += lock_alone.run(args.rounds, tuple(args.lock_writers or args.writers))
    if "cold" not in args.skip:
        from benchmarks import cold_start

        rows += cold_start.run(args.cold_runs)
    if "watch" not in args.skip:
        from benchmarks import watch_latency

        rows += watch_latency.run(args.watch_writes, tuple(args.watch_watchers or ()) or None)

    if "schemas" not in args.skip:
        from benchmarks import schemas

        rows += schemas.run(max(10, args.runs // 10))
    if "encryption" not in args.skip:
        from benchmarks import encryption

        rows += encryption.run(args.runs, args.large_runs)
    if rows:
        print(format_table(rows))
    for r in rows:
        if "top_imports" in r.notes:
            print(
                f"{r.name}: then its first request's builders {r.notes['first_use_ms']} ms; top imports (ms, self time"
                f" by package): {', '.join(f'{entry["package"]} {entry["ms"]}' for entry in r.notes['top_imports'])}"
            )
        elif r.notes:
            print(f"{r.name}: {json.dumps(r.notes)}")
    if capacity:
        from benchmarks.capacity import format_capacity

        print("\nWrite capacity (WCU, computed from the items written; worst-case incompressible values):\n")
        print(format_capacity(capacity))
    machine = {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "system": platform.platform(),
        # Other work on the machine inflates absolute figures; ratios of interleaved pairs suffer less.
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine,
                "seconds": round(time.monotonic() - started, 1),
                "rows": [r.as_json() for r in rows],
                "capacity": capacity,
            },
            indent=2,
        )
        + "\n"
    )
    print(
        f"\n{len(rows)} rows in {time.monotonic() - started:.0f} s on {machine['cpus']} CPUs "
        f"({machine['processor']}, Python {machine['python']}, load average {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f}); written to {args.results}"
    )
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
