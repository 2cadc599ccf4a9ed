"""The local stack's Prometheus metrics: ``GET /metrics`` on 127.0.0.1:LOCAL_METRICS_PORT (3003).

Nothing in the functions knows Prometheus: they emit CloudWatch EMF records (one JSON line per invocation in
their log, ``<state dir>/logs/<Function>.log``), as deployed. This module tails those logs and the gateway's
access log and turns each record into prometheus_client counters and histograms, so the figures are exactly
the ones CloudWatch would get, in Prometheus's conventions: ``_total`` counters, ``_seconds`` and ``_bytes``
histograms in base units, and only bounded labels (operation, status class or code, route key, reason):
never a key or a subject. A scrape first reads the logs up to their current end, so a request answered
before the scrape is in it.

The listener answers only this machine (devstack/loopback.py), as every listener of the local stack does.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from devstack.log_follow import LogFollower
from devstack.loopback import refusal

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client.metrics_core import Metric

    from devstack.stream_poller import StreamPoller

DEFAULT_METRICS_PORT = 3003
METRICS_PORT_ENV = "LOCAL_METRICS_PORT"

# Seconds: from a cache hit (a few ms) to a long-poll's wait and the functions' timeouts.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Bytes: a small JSON value up to the largest value the service stores (docs/api.md).
SIZE_BUCKETS = (64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0)

# Logs that are not a function's: the gateways' access logs and the emulator's own.
NOT_FUNCTION_LOGS = frozenset({"access.log", "websocket-access.log", "moto.log"})
_STATUS_CLASS = re.compile(r"^Status([1-5])xx$")
# The reasons the functions give a refused token (state_core.security.tokens.DENIAL_REASONS; the stack's process
# does not load the layer, and a unit test holds the two equal): the only values the `reason` label takes, with
# `permission` and `unknown`.
DENIAL_REASONS = frozenset(
    {
        "malformed",
        "unknown_key",
        "algorithm",
        "signature",
        "expired",
        "not_yet_valid",
        "lifetime",
        "issuer",
        "audience",
        "claims",
        "not_access_token",
        "no_token",
        "issuer_unavailable",
        "misconfigured",
    }
)


@dataclass(frozen=True, slots=True)
class Family:
    """One Prometheus metric family and the EMF metric (as the code emits it) it is made of."""

    name: str
    kind: str  # counter | histogram | gauge
    doc: str
    labels: tuple[str, ...]
    emf: str = ""  # the EMF metric's name; "" for what the gateway or the stream poller knows


_OP = ("operation",)

# What the functions emit, by EMF name. Milliseconds become seconds; a Count adds its value.
EMF_COUNTERS: tuple[Family, ...] = (
    Family("state_cache_hits_total", "counter", "Reads answered from the Redis cache.", _OP, "CacheHits"),
    Family("state_cache_misses_total", "counter", "Reads the cache could not answer.", _OP, "CacheMisses"),
    Family("state_cache_errors_total", "counter", "Redis errors the cache absorbed.", _OP, "CacheErrors"),
    Family("state_lock_waits_total", "counter", "Writes that waited for a key's lock.", _OP, "LockWaits"),
    Family("state_lock_timeouts_total", "counter", "Writes that gave up waiting for a lock.", _OP, "LockTimeouts"),
    Family("state_conflicts_total", "counter", "Conditional writes DynamoDB refused.", _OP, "Conflicts"),
    Family("state_retries_total", "counter", "Writes retried after a conflict.", _OP, "Retries"),
    Family("state_transactions_total", "counter", "Transactions attempted.", _OP, "Transactions"),
    Family("state_expiries_total", "counter", "Keys expired by their TTL on access.", _OP, "Expiries"),
    Family("state_stream_records_total", "counter", "Stream records delivered.", _OP, "StreamRecords"),
    Family("state_events_published_total", "counter", "StateChanged events published.", _OP, "EventsPublished"),
    Family("state_events_retried_total", "counter", "Event publications retried.", _OP, "EventsRetried"),
    Family(
        "state_events_dead_lettered_total",
        "counter",
        "Events sent to the dead-letter queue.",
        _OP,
        "EventsDeadLettered",
    ),
    Family("state_events_failed_total", "counter", "Events neither published nor dead-lettered.", _OP, "EventsFailed"),
    Family("state_cache_repairs_total", "counter", "Cache entries repaired from the stream.", _OP, "CacheRepairs"),
    Family("state_cache_repair_errors_total", "counter", "Cache repairs that failed.", _OP, "CacheRepairErrors"),
    Family(
        "state_corrupt_values_total", "counter", "Stored values that failed their checks.", _OP, "CorruptStoredValues"
    ),
)
EMF_HISTOGRAMS: tuple[Family, ...] = (
    Family("state_lock_wait_seconds", "histogram", "Time a write waited for a key's lock.", _OP, "LockWaitTime"),
    Family("state_lock_hold_seconds", "histogram", "Time a write held a key's lock.", _OP, "LockHoldTime"),
    Family("state_value_size_bytes", "histogram", "Size of the values written, as stored.", _OP, "ValueBytes"),
)
REQUESTS = Family(
    "state_requests_total",
    "counter",
    "Invocations of a function by operation and HTTP status class (none: the authorizer, which answers no status).",
    ("operation", "status_class"),
    "Requests",
)
LATENCY = Family("state_request_duration_seconds", "histogram", "Handler latency by operation.", _OP, "Latency")
DENIALS = Family(
    "state_authorization_denials_total",
    "counter",
    "Requests refused: a token by the authorizer or the WebSocket API, with its reason (expired, signature...), or a"
    " key by a handler's permissions (reason permission).",
    ("operation", "reason"),
    "AuthorizationDenials",
)
OTHER = Family(
    "state_function_events_total",
    "counter",
    "Every other count the functions emit, by its CloudWatch metric name.",
    ("operation", "metric"),
)
GATEWAY_REQUESTS = Family(
    "state_gateway_requests_total",
    "counter",
    "Requests the gateway answered, by route and status code.",
    ("route", "code"),
)
GATEWAY_LATENCY = Family(
    "state_gateway_request_duration_seconds", "histogram", "Request latency at the gateway, by route.", ("route",)
)
GATEWAY_INTEGRATION_ERRORS = Family(
    "state_gateway_integration_errors_total",
    "counter",
    "Requests whose function failed, timed out or answered malformed (the gateway's 500 and 503).",
    ("route", "kind"),
)
ITERATOR_AGE = Family(
    "state_stream_iterator_age_seconds",
    "gauge",
    "Age of the oldest record in the last batch a stream mapping delivered (0 when caught up).",
    ("function",),
)

FAMILIES: tuple[Family, ...] = (
    REQUESTS,
    LATENCY,
    DENIALS,
    *EMF_COUNTERS,
    *EMF_HISTOGRAMS,
    OTHER,
    GATEWAY_REQUESTS,
    GATEWAY_LATENCY,
    GATEWAY_INTEGRATION_ERRORS,
    ITERATOR_AGE,
)
# EMF metrics folded into other families (the status classes into state_requests_total).
_FOLDED = frozenset({"Requests", "Latency", "AuthorizationDenials"})


def series_names() -> frozenset[str]:
    """Every sample name the exporter can expose (a histogram's _bucket, _count and _sum; a counter's _total
    and _created): what a dashboard may query."""
    names: set[str] = set()
    for family in FAMILIES:
        if family.kind == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum", f"{family.name}_created"}
        elif family.kind == "counter":
            names |= {family.name, family.name.removesuffix("_total") + "_created"}
        else:
            names.add(family.name)
    return frozenset(names)


class _PollerAges(Collector):
    """The stream mappings' iterator age, read when scraped."""

    def __init__(self) -> None:
        self.pollers: list[StreamPoller] = []

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(ITERATOR_AGE.name, ITERATOR_AGE.doc, labels=ITERATOR_AGE.labels)
        for poller in self.pollers:
            gauge.add_metric([poller.settings.function_id], poller.iterator_age_seconds)
        yield gauge


class StackMetrics:
    """The registry and what feeds it: :meth:`record_emf` and :meth:`record_access` per log record."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        for family in FAMILIES:
            if family.kind == "counter":
                self._counters[family.name] = Counter(family.name, family.doc, family.labels, registry=self.registry)
            elif family.kind == "histogram":
                buckets = SIZE_BUCKETS if family.name.endswith("_bytes") else LATENCY_BUCKETS
                self._histograms[family.name] = Histogram(
                    family.name, family.doc, family.labels, buckets=buckets, registry=self.registry
                )
        self._ages = _PollerAges()
        self.registry.register(self._ages)
        self._by_emf_counter = {f.emf: f.name for f in EMF_COUNTERS}
        self._by_emf_histogram = {f.emf: f.name for f in EMF_HISTOGRAMS}

    def watch_pollers(self, pollers: Sequence[StreamPoller]) -> None:
        self._ages.pollers = list(pollers)

    def record_emf(self, record: dict[str, Any]) -> None:
        """One EMF record: a function's metrics of one invocation (one value or a list per metric)."""
        operation = str(record.get("operation") or "unknown")
        names = [
            str(definition.get("Name"))
            for directive in (record.get("_aws") or {}).get("CloudWatchMetrics") or []
            for definition in directive.get("Metrics") or []
        ]
        for name in names:
            values = _values(record.get(name))
            if name == "Requests":
                status = next((m.group(1) + "xx" for n in names if (m := _STATUS_CLASS.match(n))), "none")
                self._counters[REQUESTS.name].labels(operation, status).inc(sum(values))
            elif name == "Latency":
                for value in values:
                    self._histograms[LATENCY.name].labels(operation).observe(value / 1000)
            elif name == "AuthorizationDenials":
                self._counters[DENIALS.name].labels(operation, _denial_reason(record)).inc(sum(values))
            elif name in self._by_emf_counter:
                self._counters[self._by_emf_counter[name]].labels(operation).inc(sum(values))
            elif name in self._by_emf_histogram:
                family = self._by_emf_histogram[name]
                scale = 1.0 if family.endswith("_bytes") else 1 / 1000
                for value in values:
                    self._histograms[family].labels(operation).observe(value * scale)
            elif _STATUS_CLASS.match(name):
                continue  # folded into state_requests_total
            elif _unit(record, name) == "Count":
                self._counters[OTHER.name].labels(operation, name).inc(sum(values))

    def record_access(self, record: dict[str, Any]) -> None:
        """One line of the gateway's access log (its route key, status and latency; never the path)."""
        status = record.get("status")
        if not isinstance(status, int):
            return
        route = record.get("routeKey")
        route = route if isinstance(route, str) and route != "-" else "unmatched"
        self._counters[GATEWAY_REQUESTS.name].labels(route, str(status)).inc()
        latency = record.get("responseLatency")
        if isinstance(latency, int | float):
            self._histograms[GATEWAY_LATENCY.name].labels(route).observe(latency / 1000)
        error = record.get("integrationError")
        if isinstance(error, str) and error != "-":
            kind = (
                "timeout"
                if error == "integration timeout"
                else "malformed"
                if error.startswith("malformed")
                else "error"
            )
            self._counters[GATEWAY_INTEGRATION_ERRORS.name].labels(route, kind).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _denial_reason(record: dict[str, Any]) -> str:
    """A refused token's reason, as the function wrote it beside the metric (one of a fixed set: anything else
    is `unknown`, so a label never holds what a record made up); a denial without one is a handler refusing
    the caller a key."""
    code = record.get("denial_reason")
    if code is None:
        return "permission"
    return code if isinstance(code, str) and code in DENIAL_REASONS else "unknown"


def _values(raw: Any) -> list[float]:
    items = raw if isinstance(raw, list) else [raw]
    return [float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool)]


def _unit(record: dict[str, Any], name: str) -> str:
    for directive in (record.get("_aws") or {}).get("CloudWatchMetrics") or []:
        for definition in directive.get("Metrics") or []:
            if definition.get("Name") == name:
                return str(definition.get("Unit", ""))
    return ""


class LogTail(LogFollower):
    """The EMF records and access-log records of the stack's logs, into `metrics`. Reads on demand (a scrape)
    and every `interval` seconds."""

    def __init__(self, log_dir: Path, metrics: StackMetrics, interval: float = 0.5) -> None:
        super().__init__(log_dir, interval=interval, name="metrics-tail")
        self.metrics = metrics
        self._lock = threading.Lock()

    def poll(self) -> None:
        with self._lock:
            for path in self.logs():
                if path.name == "access.log":
                    for record in self._records(path):
                        self.metrics.record_access(record)
                elif path.name not in NOT_FUNCTION_LOGS:
                    for record in self._records(path):
                        if "_aws" in record:
                            self.metrics.record_emf(record)

    def _records(self, path: Path) -> Iterator[dict[str, Any]]:
        for line in self.new_lines(path):
            if not line.startswith("{"):
                continue  # a traceback or a print: not a record
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


class MetricsServer:
    """``GET /metrics`` on 127.0.0.1, fed by a :class:`LogTail` of the stack's log directory."""

    def __init__(self, log_dir: Path, port: int = DEFAULT_METRICS_PORT, host: str = "127.0.0.1") -> None:
        self.metrics = StackMetrics()
        self.tail = LogTail(log_dir, self.metrics)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    async def start(self) -> None:
        from aiohttp import web

        self.tail.start()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()

    async def stop(self) -> None:
        self.tail.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        import asyncio

        from aiohttp import web

        if refusal(request.headers.get("Host"), request.headers.get("Origin"), request.method, self.port) is not None:
            return web.Response(status=403, text="Forbidden")
        if request.path != "/metrics":
            return web.Response(status=404, text="Not Found")
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="Method Not Allowed", headers={"Allow": "GET, HEAD"})
        await asyncio.to_thread(self.tail.poll)
        body = await asyncio.to_thread(self.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
