"""publish_changes: the table's stream -> StateChanged events on the bus (the cache repair is repair_cache).

Triggered by the DynamoDB stream's event source mapping (filtered to state items, ReportBatchItemFailures).
Events that cannot be published after their retries go to the function's own dead-letter queue and count as
done; only records that could not even be dead-lettered are reported back, so Lambda retries from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from state_core.observability import logger, metrics
from state_core.runtime import change_publisher

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


# The API's lambda_entry adds an HTTP audit record and takes the correlation id from API Gateway; a stream
# batch has neither, so this handler uses the same logger and metrics in the same order without them.
@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    metrics.add_dimension(name="operation", value="publish")
    records = event.get("Records") or []
    outcome = change_publisher().publish(records, lambda: context.get_remaining_time_in_millis() / 1000)
    metrics.add_metric(name="StreamRecords", unit=MetricUnit.Count, value=len(records))
    return {"batchItemFailures": [{"itemIdentifier": s} for s in outcome.failed_sequence_numbers]}
