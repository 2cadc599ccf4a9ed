"""The local stack's Prometheus endpoint over real HTTP: after a scripted mix of operations, /metrics parses
with prometheus_client's own text parser and every counter and histogram count equals what the test did, by
operation and status; no label holds a key or a subject; the listener answers only this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import REPO_ROOT, start_devstack

pytestmark = pytest.mark.e2e

OPERATION = {"PUT": "put", "GET": "get", "DELETE": "delete"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    running = start_devstack(tmp_path_factory.mktemp("metrics-stack"))
    try:
        yield running
    finally:
        running.stop()


def scrape(stack) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = requests.get(stack.metrics_url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def by(samples, name: str, *labels: str, since=None) -> dict[tuple[str, ...], float]:
    """Sample values of `name` summed by `labels`, less their values in the scrape `since`; zeros left out."""
    totals: Counter[tuple[str, ...]] = Counter()
    for sample_labels, value in samples.get(name, []):
        totals[tuple(sample_labels[label] for label in labels)] += value
    for sample_labels, value in (since or {}).get(name, []):
        totals[tuple(sample_labels[label] for label in labels)] -= value
    return {k: v for k, v in totals.items() if v}


class Script:
    """Requests made, and what each one should count."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.function: Counter[tuple[str, str]] = Counter()  # (operation, status class) of handler invocations
        self.gateway: Counter[tuple[str, str]] = Counter()  # (route, code) of every answer

    def call(self, method: str, key: str, token: str | None, *, reaches_handler: bool = True, **kw: Any) -> int:
        headers = kw.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = requests.request(method, f"{self.stack.base_url}/state/{key}", headers=headers, timeout=30, **kw)
        self.gateway[(f"{method} /state/{{key}}", str(response.status_code))] += 1
        if reaches_handler:
            self.function[(OPERATION[method], f"{response.status_code // 100}xx")] += 1
        return response.status_code


def writes(samples) -> float:
    """Successful writes the gateway answered: one StateChanged event each."""
    return sum(
        count
        for (route, code), count in by(samples, "state_gateway_requests_total", "route", "code").items()
        if route.split()[0] in ("PUT", "PATCH", "DELETE") and code.startswith("2")
    )


def wait_for(stack, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(stack)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.3)


def test_make_dashboard_shows_the_running_stacks_figures(stack):
    token = stack.token("alice")
    key = f"user:alice:{uuid.uuid4().hex[:8]}"
    response = requests.put(
        f"{stack.base_url}/state/{key}", json={"value": 1}, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code == 201
    shown = subprocess.run(
        [sys.executable, "-m", "devstack.dashboard", "--once", "--url", stack.metrics_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "160"},
    ).stdout
    put_row = next(line for line in shown.splitlines() if line.strip("│┃ ").startswith("put "))
    assert "ms" in put_row  # its latency quantiles
    assert "stream iterator age" in shown
    assert key not in shown


def test_metrics_count_exactly_the_operations_made(stack):
    # What the other tests of the module did is left out: counts are compared with the scrape before the mix,
    # and the mix has a subject (so tokens, which the authorizer's answers are cached by) of its own.
    # Events are published after the answers: the scrape before waits for those of earlier writes.
    before = wait_for(stack, lambda s: sum(by(s, "state_events_published_total").values()) == writes(s))
    assert sum(by(before, "state_events_published_total").values()) == writes(before)
    run = Script(stack)
    subject = f"carol{uuid.uuid4().hex[:8]}"
    prefix = f"user:{subject}:{uuid.uuid4().hex[:8]}"
    writer, reader = stack.token(subject), stack.token(subject, "state:read")
    keys = [f"{prefix}:{i}" for i in range(3)]

    for key in keys:
        assert run.call("PUT", key, writer, json={"value": {"n": 1}}) == 201
    for key in keys[:2]:
        assert run.call("PUT", key, writer, json={"value": {"n": 2}}) == 200
    for key in keys + keys[:1]:
        assert run.call("GET", key, reader) == 200
    for _ in range(2):
        assert run.call("GET", f"{prefix}:absent", reader) == 404
    assert run.call("PUT", keys[0], writer, json={"value": 3}, headers={"If-Match": '"99"'}) == 412
    assert run.call("PUT", keys[1], reader, json={"value": 3}) == 403  # the handler refuses: no state:write
    assert run.call("DELETE", keys[2], writer) == 204
    # Refused before any handler: tokens the authorizer rejects (twice: its answer is cached), and none.
    refused = f"not-a-jwt-{uuid.uuid4().hex}"
    expired = stack.token(subject, ttl=-3600)
    for _ in range(2):
        assert run.call("GET", keys[0], refused, reaches_handler=False) == 403
        assert run.call("GET", keys[0], expired, reaches_handler=False) == 403
    assert run.call("GET", keys[0], None, reaches_handler=False) == 401

    changes = 3 + 2 + 1  # creates, updates, the delete: one StateChanged event each
    samples = wait_for(stack, lambda s: sum(by(s, "state_events_published_total", since=before).values()) >= changes)

    requests_by_status = by(samples, "state_requests_total", "operation", "status_class", since=before)
    authorizer_calls = requests_by_status.pop(("authorize", "none"))
    assert requests_by_status == dict(run.function)
    # Four tokens; API Gateway (and the gateway) caches the authorizer's answer per token.
    assert authorizer_calls == 4
    assert by(samples, "state_authorization_denials_total", "operation", "reason", since=before) == {
        ("authorize", "malformed"): 1,
        ("authorize", "expired"): 1,
        ("put", "permission"): 1,
    }

    # Histograms: one latency observation per invocation, one value size per value encoded.
    per_operation = Counter()
    for (operation, _), count in run.function.items():
        per_operation[(operation,)] += count
    latency = by(samples, "state_request_duration_seconds_count", "operation", since=before)
    assert latency.pop(("authorize",)) == authorizer_calls
    assert latency == dict(per_operation)
    assert by(samples, "state_value_size_bytes_count", "operation", since=before) == {
        ("put",): 3 + 2 + 1
    }  # the 412 encodes too
    buckets = by(samples, "state_request_duration_seconds_bucket", "operation", "le", since=before)
    assert buckets[("get", "+Inf")] == per_operation[("get",)]

    # The gateway: every answer by route and code, and its latency histogram.
    assert by(samples, "state_gateway_requests_total", "route", "code", since=before) == dict(run.gateway)
    per_route = Counter()
    for (route, _), count in run.gateway.items():
        per_route[(route,)] += count
    assert by(samples, "state_gateway_request_duration_seconds_count", "route", since=before) == dict(per_route)

    # The cache: every GET that reached the table was a hit or a miss.
    gets = sum(count for (operation, _), count in run.function.items() if operation == "get")
    hits = by(samples, "state_cache_hits_total", "operation", since=before)
    misses = by(samples, "state_cache_misses_total", "operation", since=before)
    assert set(hits) | set(misses) <= {("get",)}
    assert sum(hits.values()) + sum(misses.values()) == gets

    assert sum(by(samples, "state_events_published_total", since=before).values()) == changes
    assert not by(samples, "state_events_dead_lettered_total", since=before)
    assert not by(samples, "state_lock_timeouts_total", since=before)
    # Each stream mapping reports its lag (0 once it has caught up).
    assert {labels["function"] for labels, _ in samples["state_stream_iterator_age_seconds"]} >= {
        "PublishChangesFunction",
        "RepairCacheFunction",
    }

    # Bounded labels only: no key, no subject, no token anywhere in the exposition.
    text = requests.get(stack.metrics_url, timeout=10).text
    for secret in (prefix, subject, refused, expired):
        assert secret not in text


def test_the_metrics_listener_answers_only_this_machine(stack):
    port = stack.metrics_url.split(":")[2].split("/")[0]
    for host in (f"evil.example:{port}", f"localhost.evil.example:{port}", "127.0.0.1:1", "127.0.0.1"):
        assert requests.get(stack.metrics_url, headers={"Host": host}, timeout=10).status_code == 403, host
    rebound = requests.get(stack.metrics_url, headers={"Origin": "http://evil.example"}, timeout=10)
    assert rebound.status_code == 403
    assert not any(name.lower().startswith("access-control-") for name in rebound.headers)
    assert requests.post(stack.metrics_url, timeout=10).status_code == 405
    assert requests.get(stack.metrics_url.replace("/metrics", "/other"), timeout=10).status_code == 404
    assert requests.get(stack.metrics_url, headers={"Origin": "http://localhost:8080"}, timeout=10).status_code == 200
