"""Short garbage-collector pauses in the local stack's long-lived processes (the emulator, the gateway).

Python's cyclic collector walks every tracked object in a full (generation 2) collection. The emulator keeps
all of moto's modules and every stored item in one heap, so its full collections took 81-134 ms, one every
6-7 s of contended PATCHes; it serves one request at a time, so a lock holder's write waited out the pause,
and so did every waiter queued behind it (holds of 106 and 126 ms in a 256-writer round). DynamoDB does
not pause like that, and a deployed gateway and stream consumer are other machines.

After each full collection its survivors are frozen (`gc.freeze()`): the next full collection walks only
what was allocated since, and reference counting still frees frozen objects that are dropped. What it gives
up: a frozen object that later becomes part of an unreachable cycle is never collected; in a local emulator
that leaks a little memory, nothing else.
"""

from __future__ import annotations

import gc
from typing import Any


def _freeze_after_full_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()


def freeze_survivors_of_full_collections() -> None:
    """Freeze what is alive now (the modules just imported), then after each full collection what
    survived it. Idempotent."""
    gc.freeze()
    if _freeze_after_full_collection not in gc.callbacks:
        gc.callbacks.append(_freeze_after_full_collection)
