"""An example consumer Lambda: StateChanged events from an SQS queue, each key's changes handled once and in
version order (state_client.consumer), the marks in a DynamoDB table.

Replace `handle` with what the changes are for. The rest is the wiring: the queue's messages are EventBridge
events; a message that is not a StateChanged event, and the events of a key whose missing versions could
not be read yet, are reported back as failed items (the function answers with ReportBatchItemFailures), so
SQS delivers them again and, after its receive limit, moves them to the dead-letter queue. A handler that
raises fails the whole batch: the marks make the next delivery start where this one stopped.

Values are never logged: only keys, versions, operations.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from functools import cache
from typing import Any

from state_client import ClientCredentials, StateClient
from state_client.consumer import Change, ChangeEvent, ChangesPending, DynamoDBMarkStore, OrderedConsumer

logger = logging.getLogger()
logger.setLevel(os.environ.get("LOG_LEVEL", "INFO"))


def handle(change: Change) -> None:
    """What this consumer does with a change: here, one log line without the value."""
    logger.info(
        json.dumps(
            {
                "key": change.key,
                "version": change.version,
                "operation": change.operation.value,
                "origin": change.origin.value,
                "has_value": change.has_value,
            }
        )
    )


@cache
def consumer() -> OrderedConsumer:
    """Built once per container: the HTTP connection pool and the token are reused across invocations."""
    import boto3

    secret = boto3.client("secretsmanager").get_secret_value(SecretId=os.environ["STATE_CLIENT_SECRET_ARN"])
    credentials = ClientCredentials(
        os.environ["STATE_CLIENT_ID"],
        secret["SecretString"],
        token_url=os.environ["STATE_TOKEN_URL"],
        scope=os.environ.get("STATE_TOKEN_SCOPE") or None,
    )
    client = StateClient(os.environ["STATE_API_URL"], token=credentials)
    return OrderedConsumer(client, DynamoDBMarkStore(os.environ["MARKS_TABLE_NAME"]))


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    return consume_batch(event.get("Records", []), consumer(), handle)


def consume_batch(
    records: list[dict[str, Any]], ordered: OrderedConsumer, on_change: Callable[[Change], None]
) -> dict[str, Any]:
    """One SQS batch: the partial-batch answer Lambda expects (`batchItemFailures`)."""
    failed: list[str] = []
    parsed: list[tuple[str, ChangeEvent]] = []
    for record in records:
        try:
            parsed.append((record["messageId"], ChangeEvent.parse(record["body"])))
        except ValueError as bad:
            # Retried until SQS's receive limit, then in the dead-letter queue for someone to look at.
            logger.warning(json.dumps({"message_id": record["messageId"], "refused": str(bad)}))
            failed.append(record["messageId"])
    try:
        for change in ordered.consume(event for _, event in parsed):
            on_change(change)
    except ChangesPending as pending:
        logger.warning(json.dumps({"pending_keys": sorted(pending.keys), "error": str(pending)}))
        failed += [message_id for message_id, event in parsed if event.key in pending.keys]
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}
