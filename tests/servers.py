"""Running a local stack server (anything with async `start()` and `stop()`: the gateway, the WebSocket API,
the dev issuer) on an event loop of its own thread, for tests that call it from synchronous code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def served_on_a_thread(server: Any, name: str, *, stop_timeout: float) -> Iterator[asyncio.AbstractEventLoop]:
    """Start `server` on a new loop in a daemon thread; yield the loop; stop the server, then the loop."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name=name, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield loop
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=stop_timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
