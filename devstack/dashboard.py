"""``make dashboard``: the running local stack's key figures in the terminal, refreshed every few seconds.

Reads the stack's Prometheus endpoint (devstack/metrics.py), so it shows what a Grafana dashboard would,
for those without one: per operation the requests, their rate, the error share and latency quantiles
(estimated from the histogram's buckets as Prometheus's histogram_quantile does), the cache hit ratio,
and the stack-wide lock, conflict, denial, event and stream figures.

    python -m devstack.dashboard [--url http://127.0.0.1:3003/metrics] [--interval 2] [--once]
"""

from __future__ import annotations

import argparse
import math
import os
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from devstack.metrics import DEFAULT_METRICS_PORT, METRICS_PORT_ENV

if TYPE_CHECKING:
    from rich.console import RenderableType


@dataclass
class Snapshot:
    """The figures of one scrape."""

    taken_at: float
    # per operation
    requests: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    errors_4xx: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    errors_5xx: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    buckets: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    cache_hits: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    cache_misses: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # stack-wide: sum over every label
    totals: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    iterator_age: float = 0.0


TOTALS = (
    ("lock waits", "state_lock_waits_total"),
    ("lock timeouts", "state_lock_timeouts_total"),
    ("conflicts", "state_conflicts_total"),
    ("retries", "state_retries_total"),
    ("authorization denials", "state_authorization_denials_total"),
    ("events published", "state_events_published_total"),
    ("events dead-lettered", "state_events_dead_lettered_total"),
    ("cache repairs", "state_cache_repairs_total"),
    ("gateway 429 (throttled)", "state_gateway_requests_total{code=429}"),
    ("gateway 5xx", "state_gateway_requests_total{code=5xx}"),
)


def parse(text: str, taken_at: float | None = None) -> Snapshot:
    """A scrape's figures, from the Prometheus text format."""
    snap = Snapshot(taken_at=time.monotonic() if taken_at is None else taken_at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            op = labels.get("operation", "")
            name = sample.name
            if name == "state_requests_total":
                snap.requests[op] += value
                if labels.get("status_class") == "4xx":
                    snap.errors_4xx[op] += value
                elif labels.get("status_class") == "5xx":
                    snap.errors_5xx[op] += value
            elif name == "state_request_duration_seconds_bucket":
                snap.buckets[op].append((float(labels["le"]), value))
            elif name == "state_cache_hits_total":
                snap.cache_hits[op] += value
            elif name == "state_cache_misses_total":
                snap.cache_misses[op] += value
            elif name == "state_stream_iterator_age_seconds":
                snap.iterator_age = max(snap.iterator_age, value)
            elif name == "state_gateway_requests_total":
                _gateway(snap, labels.get("code", ""), value)
            elif name.endswith("_total"):
                snap.totals[name] += value
    return snap


def _gateway(snap: Snapshot, code: str, value: float) -> None:
    if code == "429":
        snap.totals["state_gateway_requests_total{code=429}"] += value
    elif code.startswith("5"):
        snap.totals["state_gateway_requests_total{code=5xx}"] += value


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile over cumulative (le, count) buckets: NaN without observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] == 0:
        return math.nan
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # in the +Inf bucket: the largest finite bound, as Prometheus answers
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.0f} ms"


def _ratio(part: float, whole: float) -> str:
    return "-" if whole == 0 else f"{100 * part / whole:.1f}%"


def render(now: Snapshot, before: Snapshot | None, url: str) -> RenderableType:
    """The tables of one refresh; rates are over the time since `before`."""
    from rich.console import Group
    from rich.table import Table

    elapsed = now.taken_at - before.taken_at if before is not None else 0.0
    ops = Table(title=f"state service (local) - {url}", title_justify="left")
    for column in ("operation", "requests", "req/s", "4xx", "5xx", "p50", "p99", "cache hits"):
        ops.add_column(column, justify="left" if column == "operation" else "right")
    for op in sorted(now.requests):
        total = now.requests[op]
        rate = (total - before.requests.get(op, 0.0)) / elapsed if before is not None and elapsed > 0 else math.nan
        hits, misses = now.cache_hits.get(op, 0.0), now.cache_misses.get(op, 0.0)
        ops.add_row(
            op,
            f"{total:,.0f}",
            "-" if math.isnan(rate) else f"{rate:.1f}",
            _ratio(now.errors_4xx.get(op, 0.0), total),
            _ratio(now.errors_5xx.get(op, 0.0), total),
            _ms(quantile(0.5, now.buckets.get(op, []))),
            _ms(quantile(0.99, now.buckets.get(op, []))),
            _ratio(hits, hits + misses),
        )
    stack = Table(show_header=False)
    stack.add_column("figure")
    stack.add_column("value", justify="right")
    for label, name in TOTALS:
        stack.add_row(label, f"{now.totals.get(name, 0.0):,.0f}")
    stack.add_row("stream iterator age", f"{now.iterator_age:.1f} s")
    return Group(ops, stack)


def scrape(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310  a loopback http URL
        body: bytes = response.read()
    return body.decode("utf-8")


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.live import Live

    default_url = f"http://127.0.0.1:{os.environ.get(METRICS_PORT_ENV) or DEFAULT_METRICS_PORT}/metrics"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=default_url, help=f"the stack's metrics endpoint ({default_url})")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    parser.add_argument("--once", action="store_true", help="print the figures once and exit")
    args = parser.parse_args(argv)
    console = Console()

    def current(before: Snapshot | None) -> tuple[Snapshot | None, RenderableType]:
        try:
            snap = parse(scrape(args.url))
        except OSError as exc:
            return before, f"[red]{args.url}: {exc}[/] (is the local stack running? make dev)"
        return snap, render(snap, before, args.url)

    if args.once:
        _, view = current(None)
        console.print(view)
        return
    before, view = current(None)
    try:
        with Live(view, console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(args.interval)
                snap, view = current(before)
                live.update(view)
                before = snap or before
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
