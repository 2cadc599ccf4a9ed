"""The one place the service talks to Redis: a client with short timeouts and no client-side retries,
behind a circuit breaker, where every Redis error or timeout becomes `RedisUnavailable`.

Only imported when a Redis endpoint is configured: `import redis` alone costs ~0.2 s of cold start.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from redis.retry import Retry

from state_core.cache.breaker import CircuitBreaker, RedisUnavailable

Result = TypeVar("Result")


def connect(url: str, *, password: str | None, timeout_seconds: float, username: str | None = None) -> redis.Redis:
    """A client that gives up fast: tens of milliseconds to connect or answer, and no retries of its own
    (redis-py retries timeouts by default, multiplying the cost of a hung server). A pooled connection
    that Redis closed while it was idle (a restart, a failover, a reset) is replaced by the pool before
    use, so it costs no error. A rediss:// link checks the server's certificate and name, over TLS 1.2 or
    newer, whatever redis-py's defaults become."""
    tls: dict[str, Any] = {}
    if urlsplit(url).scheme == "rediss":
        tls = {"ssl_cert_reqs": "required", "ssl_check_hostname": True, "ssl_min_version": ssl.TLSVersion.TLSv1_2}
    return redis.Redis.from_url(
        url,
        username=username or None,
        password=password or None,
        socket_connect_timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        **tls,
    )


# What opens a link: the client and the cache's signing key (runtime: read from Secrets Manager first).
Opener = Callable[[], tuple[redis.Redis, bytes]]


class RedisLink:
    """A client and the key that signs cache entries, opened by the first call. An opener that fails (its
    secrets could not be read) counts as Redis trouble: the breaker opens and the next attempt comes after
    its window, so a missing secret degrades the container to DynamoDB-only instead of failing requests."""

    def __init__(
        self,
        client: redis.Redis | None,
        breaker: CircuitBreaker,
        on_error: Callable[[], None],
        *,
        signing_key: bytes | None = None,
        opener: Opener | None = None,
        on_open_error: Callable[[Exception], None] = lambda _: None,
    ) -> None:
        if (client is None) == (opener is None) or (client is not None and not signing_key):
            raise ValueError("a RedisLink needs a client and its signing key, or an opener")
        self._client = client
        self._signing_key = signing_key
        self._opener = opener
        self._open_lock = threading.Lock()
        self._breaker = breaker
        self._on_error = on_error
        self._on_open_error = on_open_error
        self._blocking: redis.Redis | None = None
        self._subscribers: redis.Redis | None = None

    @property
    def signing_key(self) -> bytes:
        """The key of the open link; valid inside `run` and `pipeline` and after they returned."""
        if self._signing_key is None:
            raise RedisUnavailable("not open")
        return self._signing_key

    def script(self, source: str) -> Any:
        # Registering only hashes the source (bytes: no client's encoder needed), so it works before the
        # link is open; every call passes the client.
        return Script(None, source.encode("utf-8"))  # type: ignore[arg-type]

    def pipeline(
        self,
        queue: Callable[[Any], None],
        scripts: Sequence[Any] = (),
        *,
        bypass_breaker: bool = False,
        timeout_seconds: float | None = None,
    ) -> list[Any]:
        """Send the commands `queue` puts on a pipeline in one round trip (no MULTI) and return their
        replies; a failed command raises as a whole. Scripts go as raw EVALSHA: redis-py's own pipelined
        scripts cost a SCRIPT EXISTS round trip on every execute. When the server lacks one (first use, or
        after a restart), `scripts` are loaded and the commands sent once more, so they must be idempotent.
        `timeout_seconds`: the socket timeout for this call instead of the short one (a pipeline that
        blocks in Redis, such as a lock waiter's BLPOP, must be given longer than it blocks, and no more).
        """

        def send(client: redis.Redis) -> list[Any]:
            for attempt in range(2):
                pipe = (
                    client.pipeline(transaction=False)
                    if timeout_seconds is None
                    else self._slow(client, timeout_seconds)
                )
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

        return self.run(send, bypass_breaker=bypass_breaker)

    def _slow(self, client: redis.Redis, timeout_seconds: float) -> Any:
        """A pipeline on a connection of a pool kept for blocking calls, with its socket timeout set for
        this call (each call sets its own, so the pool's connections never lend a long timeout to the
        short calls)."""
        if self._blocking is None:
            pool = client.connection_pool
            self._blocking = redis.Redis(
                connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **pool.connection_kwargs)
            )
        pipe = self._blocking.pipeline(transaction=False)
        connection = self._blocking.connection_pool.get_connection()
        connection.update_current_socket_timeout(timeout_seconds)
        pipe.connection = connection  # released back to the pool by the pipeline's reset
        return pipe

    def subscribe(self, channel: str, *, timeout_seconds: float) -> PubSub:
        """A subscription to `channel` on a connection of its own (a pool kept for subscriptions: a
        subscribed connection can do nothing else, and it is held for a whole wait), once Redis has
        confirmed it: a message published after this returns reaches it. Through the breaker; the caller
        closes it."""

        def open_subscription(client: redis.Redis) -> PubSub:
            with self._open_lock:
                if self._subscribers is None:
                    pool = client.connection_pool
                    own = redis.ConnectionPool(connection_class=pool.connection_class, **pool.connection_kwargs)
                    self._subscribers = redis.Redis(connection_pool=own)
            subscription: PubSub = self._subscribers.pubsub()  # type: ignore[no-untyped-call]
            try:
                subscription.subscribe(channel)
                confirmed = subscription.get_message(timeout=timeout_seconds)
                if confirmed is None or confirmed.get("type") != "subscribe":
                    raise redis.TimeoutError("the subscription was not confirmed in time")
            except BaseException:
                subscription.close()
                raise
            return subscription

        return self.run(open_subscription)

    def listen(self, subscription: PubSub, timeout_seconds: float) -> dict[str, Any] | None:
        """The subscription's next message within `timeout_seconds` (None: none came); a broken
        connection is Redis trouble like any other (RedisUnavailable, the breaker opens)."""
        message: dict[str, Any] | None = self.run(
            lambda _: subscription.get_message(ignore_subscribe_messages=True, timeout=timeout_seconds),
            bypass_breaker=True,
        )
        return message

    def run(self, operation: Callable[[redis.Redis], Result], *, bypass_breaker: bool = False) -> Result:
        """Run `operation` with the client unless the breaker is open; any Redis trouble opens it.
        `bypass_breaker`: sent even while it is open (write-throughs and the stream's cache repair: what
        would otherwise leave other containers reading an entry older than an acknowledged write)."""
        if not bypass_breaker and not self._breaker.allow():
            raise RedisUnavailable("circuit open")
        client = self._client or self._open()
        try:
            result = operation(client)
        except (redis.RedisError, OSError) as exc:
            self._breaker.record_failure()
            self._on_error()
            raise RedisUnavailable(type(exc).__name__, timed_out=isinstance(exc, redis.TimeoutError)) from exc
        self._breaker.record_success()
        return result

    def _open(self) -> redis.Redis:
        with self._open_lock:
            if self._client is None:
                assert self._opener is not None
                try:
                    client, signing_key = self._opener()
                except Exception as exc:
                    self._breaker.record_failure()
                    self._on_open_error(exc)
                    raise RedisUnavailable("credentials unavailable") from exc
                self._signing_key = signing_key
                self._client = client
            return self._client
