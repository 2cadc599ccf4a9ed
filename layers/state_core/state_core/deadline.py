"""The invocation's time budget: a DynamoDB attempt starts only if it, and the backoff after it, can end
before the function's timeout.

botocore bounds one attempt (connect 1 s + read 2 s) and makes up to 3 with backoff, so one call can take
about 12 s and a PATCH makes two, against a 10 s function timeout. A function stopped by its timeout gives
the client a bare 500 and no hint that its write may have landed. With the budget, the call instead fails
with OutOfTime while there is still time to answer, which the store turns into 503 with Retry-After.
The refused attempt was never sent, and a state write is retried only after attempts that were not
applied (storage/state.py), so such a 503 means the write was not applied.

The budget lives in a context variable set per invocation (observability.lambda_entry); outside one (the
stream functions, tests that call the core directly) nothing is checked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botocore.client import BaseClient

_deadline: ContextVar[float | None] = ContextVar("state_deadline", default=None)


class OutOfTime(Exception):
    """Too little of the invocation's time is left to start another DynamoDB attempt."""


@contextmanager
def budget(remaining_seconds: float | None, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Within the block, DynamoDB attempts must fit in `remaining_seconds` (None: no budget)."""
    token = _deadline.set(None if remaining_seconds is None else clock() + remaining_seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining(clock: Callable[[], float] = time.monotonic) -> float | None:
    """Seconds left of the invocation's budget (None outside one)."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - clock()


def guard(client: BaseClient, *, needed_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
    """Refuse to send a request of `client` when less than `needed_seconds` of the budget is left.

    `needed_seconds` covers one attempt's worst case plus the longest backoff before the next attempt
    plus the time to answer, so that the check before that next attempt still runs in time."""

    def before_send(**_: Any) -> None:
        deadline = _deadline.get()
        if deadline is not None and deadline - clock() < needed_seconds:
            raise OutOfTime(f"less than {needed_seconds:.2f} s of the invocation is left for a DynamoDB attempt")

    # First, ahead of any hook that answers in DynamoDB's place (failpoints): the check always runs.
    client.meta.events.register_first("before-send.dynamodb", before_send)
