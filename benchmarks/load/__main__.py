"""`python -m benchmarks.load` (make load): a mixed workload against the state service, with locust.

Points at API_URL (--api-url) with the token in TOKEN, or the one TOKEN_COMMAND (--token-command) prints.
With neither API_URL nor --api-url it targets `make dev` on http://127.0.0.1:3000 and, without a token,
mints a dev one as `make token` does; it never starts a stack itself. Prints progress while it runs, then
throughput, p50/p99 per operation and errors by status. Exits 1 only when errors exceed the threshold
(latency never fails a run), 2 when the service cannot be reached or refuses the token.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Importing locust patches the standard library for gevent: nothing above imports ssl, and nothing that
# does (requests, urllib3) may come before it.
import gevent
from locust import events
from locust.env import Environment
from locust.log import setup_logging
from locust.stats import RequestStats, print_error_report, print_percentile_stats, print_stats
from locust.util.timespan import parse_timespan

from benchmarks.load.locustfile import StateUser
from benchmarks.load.workload import DEFAULT_MIX, MIX_NAMES, OPERATIONS, RETRY_LATER_IS_EXPECTED, Workload

LOCAL_URL = "http://127.0.0.1:3000"


def parse_mix(text: str) -> dict[str, int]:
    """`get=50,put=10`: weights for the operations named; the others keep their default weight."""
    mix = dict(DEFAULT_MIX)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name.strip() not in MIX_NAMES or not weight.strip().isdigit():
            raise argparse.ArgumentTypeError(f"{part!r}: expected NAME=WEIGHT, NAME one of {', '.join(MIX_NAMES)}")
        mix[name.strip()] = int(weight)
    return mix


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--api-url", default=os.environ.get("API_URL"), help=f"the API's base URL (API_URL; default {LOCAL_URL})")
    add("--token-command", default=os.environ.get("TOKEN_COMMAND"), help="prints a bearer token (TOKEN_COMMAND)")
    add("--token-refresh", default="10m", help="fetch a new token this often (TOKEN_COMMAND, dev tokens)")
    add("--duration", default="30s", help="how long to run, e.g. 45s, 5m, 1h30m (default 30s)")
    add("--warmup", default="20s", help="run this long first, uncounted: cold starts kept out (default 20s)")
    add("--users", type=int, default=4, help="concurrent users, each one request at a time (default 4)")
    add("--spawn-rate", type=float, default=4.0, help="users started per second (default 4)")
    add("--rate", type=float, default=0.0, help="target requests/s over all users; 0: as fast as answered")
    default_mix = ",".join(f"{name}={weight}" for name, weight in DEFAULT_MIX.items())
    add("--mix", type=parse_mix, default=dict(DEFAULT_MIX), help=f"operation weights (default {default_mix})")
    add("--key-space", type=int, default=200, help="keys the uncontended requests spread over (default 200)")
    add("--contended-share", type=float, default=0.1, help="share of requests on the hot keys (default 0.1)")
    add("--hot-keys", type=int, default=1, help="how many hot keys (default 1)")
    add("--large-bytes", type=int, default=256 * 1024, help="size of a large value (default 262144; max ~1 MiB)")
    add("--key-prefix", default=None, help="prefix of every key written (default load-<random>)")
    add("--max-error-percent", type=float, default=1.0, help="fail (exit 1) above this share of errors (default 1)")
    add("--progress-interval", type=float, default=5.0, help="seconds between progress tables; 0: none")
    add("--summary-json", type=Path, default=None, help="also write the summary as JSON here")
    return parser


def token_source(args: argparse.Namespace, local: bool) -> Callable[[], str] | None:
    """Where fresh tokens come from: TOKEN_COMMAND, or the dev issuer for the local stack; None for a
    fixed TOKEN."""
    if os.environ.get("TOKEN"):
        return None
    if args.token_command:
        command: str = args.token_command
        return lambda: run_token_command(command)
    if local:
        from devstack.token import mint

        return lambda: mint("load", "state:read state:write")
    raise ValueError("set TOKEN or TOKEN_COMMAND (--token-command) for a deployed API_URL")


def run_token_command(command: str) -> str:
    # The user's own command (e.g. one calling their identity provider), run as their shell would.
    completed = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)  # noqa: S602
    if completed.returncode != 0 or not completed.stdout.strip():
        raise ValueError(f"the token command failed ({completed.returncode}): {completed.stderr.strip()[-500:]}")
    return completed.stdout.strip()


def refresh_tokens(fetch: Callable[[], str], every: float) -> None:
    """Replace the users' token every `every` seconds, so a run outlives its tokens; a failed fetch keeps
    the old token (its requests then fail as 401s, counted)."""
    while True:
        gevent.sleep(every)
        try:
            StateUser.token = fetch()
        except (ValueError, OSError) as error:
            print(f"load: could not refresh the token: {error}", file=sys.stderr)


def preflight(api_url: str, token: str, key: str) -> str | None:
    """Why the run cannot start (nothing answers, the token is refused), or None."""
    # Imported here, after locust has patched ssl: requests brings urllib3, which holds on to ssl.
    import requests

    try:
        response = requests.get(f"{api_url}/state/{key}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    except requests.RequestException as error:
        hint = "start `make dev`, or set API_URL" if api_url == LOCAL_URL else "check API_URL"
        return f"nothing answers at {api_url} ({error}): {hint}"
    if response.status_code in (401, 403):
        return f"{api_url} refused the token ({response.status_code}): check TOKEN / TOKEN_COMMAND and its scopes"
    return None


def summarize(stats: RequestStats, statuses: Counter[tuple[str, int]], max_error_percent: float) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for name in OPERATIONS:
        entry = stats.entries.get((name, _method(name)))
        if entry is None:
            continue
        by_status = {str(status): count for (op, status), count in sorted(statuses.items()) if op == name}
        operations[name] = {
            "requests": entry.num_requests,
            "rps": round(entry.total_rps, 2),
            "p50_ms": entry.get_response_time_percentile(0.5),
            "p99_ms": entry.get_response_time_percentile(0.99),
            "errors": entry.num_failures,
            "statuses": by_status,
        }
    total = stats.total
    error_percent = 100.0 * total.num_failures / total.num_requests if total.num_requests else 100.0
    errors_by_status = Counter[str]()
    for (name, status), count in statuses.items():
        # A history 503 is the stream's lag window (the locustfile also requires its Retry-After).
        if status not in OPERATIONS[name] and not (status == 503 and name in RETRY_LATER_IS_EXPECTED):
            errors_by_status[str(status)] += count
    return {
        "operations": operations,
        "requests": total.num_requests,
        "rps": round(total.total_rps, 2),
        "p50_ms": total.get_response_time_percentile(0.5),
        "p99_ms": total.get_response_time_percentile(0.99),
        "errors": total.num_failures,
        "errors_by_status": dict(sorted(errors_by_status.items())),
        "error_percent": round(error_percent, 3),
        "max_error_percent": max_error_percent,
        "passed": total.num_requests > 0 and error_percent <= max_error_percent,
    }


def _method(operation: str) -> str:
    return {"put": "PUT", "large put": "PUT", "patch": "PATCH", "delete": "DELETE"}.get(operation, "GET")


def print_summary(summary: dict[str, Any], seconds: float) -> None:
    print(f"\nSummary after {seconds:.0f} s (load average {os.getloadavg()[0]:.2f}); ms are response times")
    print(f"{'operation':<10} {'requests':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>7}  statuses")
    rows = [(name, op) for name, op in summary["operations"].items()] + [("all", summary)]
    for name, row in rows:
        statuses = " ".join(f"{s}:{n}" for s, n in row.get("statuses", {}).items())
        print(
            f"{name:<10} {row['requests']:>9} {row['rps']:>8.1f} {row['p50_ms']:>7.0f} {row['p99_ms']:>7.0f} "
            f"{row['errors']:>7}  {statuses}"
        )
    verdict = "ok" if summary["passed"] else "FAILED"
    by_status = " ".join(f"{s}:{n}" for s, n in summary["errors_by_status"].items()) or "none"
    print(
        f"errors: {summary['errors']} of {summary['requests']} ({summary['error_percent']:.2f}%; by status: "
        f"{by_status}; 0 = no response), threshold {summary['max_error_percent']}%: {verdict}"
    )


def run(args: argparse.Namespace) -> int:
    api_url = (args.api_url or LOCAL_URL).rstrip("/")
    duration, warmup = parse_timespan(args.duration), parse_timespan(args.warmup)
    token_refresh = parse_timespan(args.token_refresh)
    if args.users < 1 or args.spawn_rate <= 0 or token_refresh < 1:
        raise ValueError("users >= 1, a spawn rate above 0 and a token refresh of 1 s or more")
    fetch_token = token_source(args, local=not args.api_url)
    token = fetch_token() if fetch_token else os.environ["TOKEN"]
    workload = Workload(
        mix=args.mix,
        key_space=args.key_space,
        contended_share=args.contended_share,
        hot_keys=args.hot_keys,
        large_bytes=args.large_bytes,
        rate=args.rate,
        users=args.users,
        **({"key_prefix": args.key_prefix} if args.key_prefix else {}),
    )
    problem = preflight(api_url, token, f"{workload.key_prefix}-0")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    StateUser.configure(workload, token)

    setup_logging("INFO")
    environment = Environment(user_classes=[StateUser], host=api_url, events=events)
    statuses = Counter[tuple[str, int]]()

    def count_status(name: str, response: Any, **_: Any) -> None:
        statuses[(name, int(getattr(response, "status_code", 0) or 0))] += 1

    environment.events.request.add_listener(count_status)
    runner = environment.create_local_runner()
    print(
        f"load: {args.users} users against {api_url} for {duration} s (after {warmup} s of warm-up), "
        f"keys {workload.key_prefix}-*, mix {args.mix}"
    )

    def progress() -> None:
        while True:
            gevent.sleep(args.progress_interval)
            print_stats(environment.stats)

    printer = gevent.spawn(progress) if args.progress_interval > 0 else None
    refresher = gevent.spawn(refresh_tokens, fetch_token, token_refresh) if fetch_token else None
    runner.start(args.users, spawn_rate=args.spawn_rate)
    warmup_errors, started = 0, time.monotonic()
    try:
        if warmup > 0:
            gevent.sleep(warmup)
            warmup_errors = environment.stats.total.num_failures
            environment.stats.reset_all()
            statuses.clear()
            print(f"load: warm-up over ({warmup_errors} errors), counting from now")
        started = time.monotonic()
        gevent.spawn_later(duration, runner.quit)
        runner.greenlet.join()
    except KeyboardInterrupt:  # Ctrl-C ends the run early, with its summary
        runner.quit()
    for greenlet in (printer, refresher):
        if greenlet is not None:
            greenlet.kill()

    print_stats(environment.stats, current=False)
    print_percentile_stats(environment.stats)
    print_error_report(environment.stats)
    summary = summarize(environment.stats, statuses, args.max_error_percent)
    summary["warmup_errors"] = warmup_errors
    print_summary(summary, time.monotonic() - started)
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0 if summary["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ValueError as error:  # no token for a deployed API, a workload option out of range
        print(f"load: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
