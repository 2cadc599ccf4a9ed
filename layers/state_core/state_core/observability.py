"""Powertools logging, metrics and (optional) tracing, configured once for every function, so every
function's logs and metrics have the same shape.

Decorators are applied in one fixed order: correlation id and Lambda context, then metrics flush, then
tracing. The X-Ray SDK costs ~0.5 s of import, so the Tracer is imported only when tracing is enabled.
Responses are never captured by tracing: they hold state values.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from state_core import deadline
from state_core.security import audit

logger = Logger()
metrics = Metrics()

Handler = Callable[[dict[str, Any], Any], Any]


def _tracing_enabled() -> bool:
    return os.environ.get("STATE_TRACING", "false").lower() == "true"


def _remaining_seconds(context: Any) -> float | None:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return None if remaining is None else remaining() / 1000


def lambda_entry(operation: str) -> Callable[[Handler], Handler]:
    """Wrap a Lambda handler: correlation id from the API request id, metrics with dimension `operation`
    (requests, status class, latency), the audit record of state operations, and X-Ray tracing when
    enabled."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def measured(event: dict[str, Any], context: Any) -> Any:
            started = time.perf_counter()
            # Per invocation, not as a default: tests load several handlers into one process.
            metrics.add_dimension(name="operation", value=operation)
            audit.begin()
            try:
                with deadline.budget(_remaining_seconds(context)):
                    response = handler(event, context)
            except BaseException:
                audit.emit(operation, event, None, status=500)  # Lambda reports the error; API Gateway 500s
                raise
            # One audit record per request that reached a state handler, allowed or denied.
            audit.emit(operation, event, response)
            metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
            status = response.get("statusCode") if isinstance(response, dict) else None
            if isinstance(status, int):
                metrics.add_metric(name=f"Status{status // 100}xx", unit=MetricUnit.Count, value=1)
            metrics.add_metric(
                name="Latency", unit=MetricUnit.Milliseconds, value=(time.perf_counter() - started) * 1000
            )
            return response

        wrapped: Handler = measured
        if _tracing_enabled():
            from aws_lambda_powertools import Tracer

            wrapped = Tracer().capture_lambda_handler(wrapped, capture_response=False)
        wrapped = metrics.log_metrics(wrapped, raise_on_empty_metrics=False)
        return logger.inject_lambda_context(
            wrapped, correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True
        )

    return decorate
