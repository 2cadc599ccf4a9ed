"""repair_cache: the table's stream -> every state version fenced into the Redis cache (state_core.stream.repair).

Its own event source mapping (state items only, ReportBatchItemFailures), so a Redis outage never holds up
the events, and a slow EventBridge never holds up the repair. It keeps retrying while Redis is down and
reports the first unrepaired record when its time runs short; Lambda retries from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from state_core.observability import logger, metrics
from state_core.runtime import cache_repairer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    metrics.add_dimension(name="operation", value="repair")
    records = event.get("Records") or []
    repairer = cache_repairer()
    if repairer is None:
        return {"batchItemFailures": []}
    failed = repairer.repair(records, lambda: context.get_remaining_time_in_millis() / 1000)
    metrics.add_metric(name="StreamRecords", unit=MetricUnit.Count, value=len(records))
    return {"batchItemFailures": [{"itemIdentifier": s} for s in failed]}
