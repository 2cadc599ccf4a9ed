"""Powertools logging, metrics and (optional) tracing, configured once for every function, so every
function's logs and metrics have the same shape.

Decorators are applied in one fixed order: correlation id and Lambda context, then metrics flush, then
tracing. The X-Ray SDK costs ~0.5 s of import, so the Tracer is imported only when tracing is enabled.
Responses are never captured by tracing: they hold state values.

With tracing on, a request's trace holds the handler's subsegment (annotated with the operation, the API's
request id and, for a one-key request, the key), one subsegment per DynamoDB call (the SDK's botocore patch)
and one per Redis command or pipeline (named by the command only: arguments hold values). API Gateway's HTTP
APIs do not pass a trace on, so the authorizer's trace is a separate one with the same `request_id`
annotation: `annotation.request_id = "<apigw-requestid>"` finds both.
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


# X-Ray keeps annotation strings up to 1,000 characters.
_ANNOTATION_LIMIT = 1000
_redis_hooked = False


def _tracing_enabled() -> bool:
    return os.environ.get("STATE_TRACING", "false").lower() == "true"


def annotate(**values: str) -> None:
    """Index the current trace entity by these identifiers (X-Ray annotations) when tracing is on; otherwise
    nothing, and nothing imported. Identifiers only: never a value or a token."""
    if not _tracing_enabled():
        return
    from aws_xray_sdk.core import xray_recorder  # type: ignore[import-untyped]

    for name, value in values.items():
        xray_recorder.put_annotation(name, value[:_ANNOTATION_LIMIT])


def _trace_redis(module: Any) -> None:
    """A subsegment per Redis command and per pipeline (the X-Ray SDK patches botocore but not redis), named
    by the command alone."""
    from aws_xray_sdk.core import xray_recorder

    def command(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with xray_recorder.in_subsegment("Redis") as subsegment:
            if subsegment is not None:
                subsegment.namespace = "remote"
                name = args[0] if args else b""
                name = name.decode() if isinstance(name, bytes) else str(name)
                subsegment.put_annotation("redis_command", name[:64])
            return wrapped(*args, **kwargs)

    def pipeline(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with xray_recorder.in_subsegment("Redis") as subsegment:
            if subsegment is not None:
                subsegment.namespace = "remote"
                subsegment.put_annotation("redis_command", "PIPELINE")
                subsegment.put_metadata("commands", len(getattr(instance, "command_stack", ())))
            return wrapped(*args, **kwargs)

    import wrapt

    wrapt.wrap_function_wrapper(module, "Redis.execute_command", command)
    wrapt.wrap_function_wrapper(module, "Pipeline.execute", pipeline)


def _traced(handler: Handler, operation: str) -> Handler:
    global _redis_hooked  # once per process, however many handlers it loads
    import wrapt
    from aws_lambda_powertools import Tracer

    # Redis's client is patched when (and if) the function imports it: the authorizer never does.
    if not _redis_hooked:
        wrapt.register_post_import_hook(_trace_redis, "redis.client")
        _redis_hooked = True

    @functools.wraps(handler)
    def annotated(event: dict[str, Any], context: Any) -> Any:
        request_id = (event.get("requestContext") or {}).get("requestId")
        annotate(operation=operation, **({"request_id": request_id} if isinstance(request_id, str) else {}))
        return handler(event, context)

    traced: Handler = Tracer().capture_lambda_handler(annotated, capture_response=False, capture_error=False)
    return traced


def _remaining_seconds(context: Any) -> float | None:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return None if remaining is None else remaining() / 1000


def _count_request(status: int | None, started: float) -> None:
    """Requests, its status class (none for the authorizer's answers, which have no status) and Latency."""
    metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
    if status is not None:
        metrics.add_metric(name=f"Status{status // 100}xx", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=(time.perf_counter() - started) * 1000)


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
                # Counted as the 500 the caller gets, so requests by status add up to what callers saw.
                _count_request(500, started)
                raise
            # One audit record per request that reached a state handler, allowed or denied.
            audit.emit(operation, event, response)
            status = response.get("statusCode") if isinstance(response, dict) else None
            _count_request(status if isinstance(status, int) else None, started)
            return response

        wrapped: Handler = measured
        if _tracing_enabled():
            wrapped = _traced(wrapped, operation)
        wrapped = metrics.log_metrics(wrapped, raise_on_empty_metrics=False)
        return logger.inject_lambda_context(
            wrapped, correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True
        )

    return decorate
