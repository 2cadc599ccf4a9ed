"""API Gateway's @connections management API: post a message to a WebSocket connection, or close it.

A 410 (GoneException) means the client is gone: ConnectionGone, and the caller forgets the connection at
once. Throttling (429, LimitExceededException) is retried with full-jitter backoff a few times, then
PostThrottled: the caller gives the version back and the key's next change catches up.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from state_core.domain.watch import ConnectionGone, PostThrottled

_THROTTLED = {"LimitExceededException", "TooManyRequestsException", "ThrottlingException"}
POST_ATTEMPTS = 3
BACKOFF_BASE_SECONDS = 0.05


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


class ApiGatewayPoster:
    """PostToConnection and DeleteConnection on one WebSocket stage (`client` is apigatewaymanagementapi's)."""

    def __init__(self, client: Any, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._client = client
        self._sleep = sleep

    def post(self, connection_id: str, data: bytes) -> None:
        for attempt in range(POST_ATTEMPTS):
            try:
                self._client.post_to_connection(ConnectionId=connection_id, Data=data)
                return
            except ClientError as error:
                if _code(error) == "GoneException" or _status(error) == 410:
                    raise ConnectionGone(connection_id) from None
                if _code(error) not in _THROTTLED and _status(error) != 429:
                    raise
                if attempt + 1 == POST_ATTEMPTS:
                    raise PostThrottled(connection_id) from None
                self._sleep(random.uniform(0, BACKOFF_BASE_SECONDS * 2**attempt))  # noqa: S311  jitter, not a secret

    def close(self, connection_id: str) -> None:
        try:
            self._client.delete_connection(ConnectionId=connection_id)
        except ClientError as error:
            if _code(error) != "GoneException" and _status(error) != 410:
                raise
