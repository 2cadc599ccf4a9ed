"""Failpoints: named places in the core where a test may pause, delay, fail or kill an operation, to check
that the contract holds when a function dies or stalls at the worst moment.

The core calls a point only behind the flag, so a point costs one attribute read while nothing listens:

    if failpoints.ENABLED:
        failpoints.hit("after_db_write_before_cache", key=key)

This module only forwards a hit to the handler `install` was given. Only the tests and the local stack's
workers install one (`devstack.failpoints`, which arms points and is never packaged with the functions), so
in a deployed function the flag stays False and no point can do anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ENABLED = False
_handler: Callable[..., Any] | None = None


def install(handler: Callable[..., Any]) -> None:
    """Send every hit to `handler(name, **context)`; its answer is the hit's."""
    global ENABLED, _handler
    _handler = handler
    ENABLED = True


def uninstall() -> None:
    global ENABLED, _handler
    ENABLED = False
    _handler = None


def hit(name: str, **context: Any) -> Any:
    """Tell the installed handler the operation reached `name` (callers check ENABLED first)."""
    handler = _handler
    return None if handler is None else handler(name, **context)
