"""The one place the service talks to Redis: a client with short timeouts and no client-side retries,
behind a circuit breaker, where every Redis error or timeout becomes `RedisUnavailable`.

Only imported when a Redis endpoint is configured: `import redis` alone costs ~0.2 s of cold start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from state_core.breaker import CircuitBreaker, RedisUnavailable

Result = TypeVar("Result")


def connect(url: str, *, password: str | None, timeout_seconds: float) -> redis.Redis:
    """A client that gives up fast: tens of milliseconds to connect or answer, and no retries of its own
    (redis-py retries timeouts by default, multiplying the cost of a hung server)."""
    return redis.Redis.from_url(
        url,
        password=password or None,
        socket_connect_timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class RedisLink:
    def __init__(self, client: redis.Redis, breaker: CircuitBreaker, on_error: Callable[[], None]) -> None:
        self.client = client
        self._breaker = breaker
        self._on_error = on_error

    def script(self, source: str) -> Any:
        return self.client.register_script(source)

    def pipeline(self, queue: Callable[[Any], None], scripts: Sequence[Any] = ()) -> list[Any]:
        """Send the commands `queue` puts on a pipeline in one round trip (no MULTI) and return their
        replies; a failed command raises as a whole. Scripts go as raw EVALSHA: redis-py's own pipelined
        scripts cost a SCRIPT EXISTS round trip on every execute. When the server lacks one (first use, or
        after a restart), `scripts` are loaded and the commands sent once more, so they must be idempotent.
        """

        def send(client: redis.Redis) -> list[Any]:
            for attempt in range(2):
                pipe = client.pipeline(transaction=False)
                queue(pipe)
                replies = pipe.execute(raise_on_error=False)
                if attempt == 0 and any(isinstance(reply, NoScriptError) for reply in replies):
                    for script in scripts:
                        client.script_load(script.script)
                    continue
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
                return list(replies)
            raise AssertionError("unreachable")

        return self.run(send)

    def run(self, operation: Callable[[redis.Redis], Result]) -> Result:
        """Run `operation` with the client unless the breaker is open; any Redis trouble opens it."""
        if not self._breaker.allow():
            raise RedisUnavailable("circuit open")
        try:
            result = operation(self.client)
        except (redis.RedisError, OSError) as exc:
            self._breaker.record_failure()
            self._on_error()
            raise RedisUnavailable(type(exc).__name__) from exc
        self._breaker.record_success()
        return result
