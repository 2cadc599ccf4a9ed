"""The workload `make load` runs, as data: the operations, their weights, the keys. Apart from locust
(importing locust patches the standard library for gevent, which no test process may have), so the
tests and the wrapper's option parsing read it freely."""

from __future__ import annotations

import base64
import os
import random
from dataclasses import dataclass, field

# The operations and the statuses each answers to this workload without anything being wrong. No request
# carries If-Match, so a 412 is never expected; a 429 or a 503 is the service shedding load: an error.
OPERATIONS: dict[str, frozenset[int]] = {
    "get": frozenset({200, 404}),
    "put": frozenset({200, 201}),
    "patch": frozenset({200, 404}),
    "delete": frozenset({204, 404}),
    "history": frozenset({200, 404}),
    # `large` is a PUT of a large value followed by a GET of it: two requests, two rows.
    "large put": frozenset({200, 201}),
    "large get": frozenset({200, 404}),
}
# Operations whose 503 with Retry-After is the contract, not load shedding: a key's history listing while the
# stream has recorded none of its versions yet (its first second or so); a client retries after Retry-After.
RETRY_LATER_IS_EXPECTED = frozenset({"history"})
MIX_NAMES = ("get", "put", "patch", "delete", "history", "large")
DEFAULT_MIX: dict[str, int] = {"get": 50, "put": 15, "patch": 20, "delete": 3, "history": 8, "large": 4}
# Large values get keys of their own, few of them, so a large GET mostly finds what a large PUT wrote.
LARGE_KEYS = 16


@dataclass(frozen=True)
class Workload:
    """What the users do: the mix of operations by weight, over which keys, at what rate."""

    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    key_space: int = 200
    # The share of requests that go to the few hot keys instead of the key space: contention on the
    # per-key locks (PATCH) and on the version conditions (PUT, DELETE).
    contended_share: float = 0.1
    hot_keys: int = 1
    large_bytes: int = 256 * 1024
    small_bytes: int = 64
    # Requests per second over all users; 0: each user sends its next request as soon as it has an answer.
    rate: float = 0.0
    users: int = 1
    key_prefix: str = field(default_factory=lambda: f"load-{os.urandom(3).hex()}")

    def __post_init__(self) -> None:
        unknown = set(self.mix) - set(MIX_NAMES)
        if unknown:
            raise ValueError(f"unknown operations in the mix: {sorted(unknown)}; known: {list(MIX_NAMES)}")
        if any(weight < 0 for weight in self.mix.values()) or not any(self.mix.values()):
            raise ValueError("mix weights are whole numbers >= 0, at least one above 0")
        if self.key_space < 1 or self.hot_keys < 1 or not 0.0 <= self.contended_share <= 1.0:
            raise ValueError("key space and hot keys are >= 1; the contended share is between 0 and 1")
        if self.large_bytes < 1 or self.small_bytes < 1 or self.rate < 0:
            raise ValueError("value sizes are >= 1 byte and the rate is >= 0")

    def key(self, rng: random.Random) -> str:
        if rng.random() < self.contended_share:
            return f"{self.key_prefix}-hot-{rng.randrange(self.hot_keys)}"
        return f"{self.key_prefix}-{rng.randrange(self.key_space)}"

    def large_key(self, rng: random.Random) -> str:
        return f"{self.key_prefix}-large-{rng.randrange(LARGE_KEYS)}"


def filler(size: int, rng: random.Random) -> str:
    """`size` characters that do not compress (as a real large value would not): base64 of random bytes."""
    return base64.b64encode(rng.randbytes(size * 3 // 4 + 3)).decode()[:size]
