"""watch_fanout: the table's stream -> every change posted to the WebSocket connections watching it
(state_core.stream.watch, state_core.service.watch); on its schedule, the sweep of expiring connections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from state_core.observability import logger, metrics
from state_core.runtime import watch_service
from state_core.stream.watch import change_notes

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "Records" not in event:
        # The schedule: warn connections whose token expires soon, close the expired ones.
        metrics.add_dimension(name="operation", value="watch_sweep")
        watch_service().sweep()
        return {}
    metrics.add_dimension(name="operation", value="watch_fanout")
    records = event.get("Records") or []
    watch_service().fan_out(change_notes(records))
    return {"batchItemFailures": []}
