"""watch_socket: every route of the WebSocket watch API ($connect, $disconnect, subscribe, unsubscribe,
refresh, $default), in state_core.api.watch. Answers to messages go back over the socket."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from state_core import deadline
from state_core.api.watch import handle
from state_core.observability import logger, metrics
from state_core.runtime import verify_token, watch_service

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    route = str((event.get("requestContext") or {}).get("routeKey") or "$default")
    metrics.add_dimension(name="operation", value="watch" + route.replace("$", "_"))
    with deadline.budget(context.get_remaining_time_in_millis() / 1000):
        return handle(event, watch_service, verify_token)
