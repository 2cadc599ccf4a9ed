"""The client's watch when a subscribe fails, through the whole local stack (docs/watch.md, "A subscribe that
failed"): it unsubscribes the failed subscription, waits for `unsubscribed`, subscribes again from the last
change it yielded under a new id, and ignores whatever comes for an id it does not hold.

The failures are the server's own. A replay failing partway is the documented "the stream lags" case: the
history items of the versions to replay are taken out of the table (as if the publisher had not recorded them
yet), so the replay sends what it has, waits 3 s, and answers `error` 503 after `subscribed`; they are put
back once the test has seen that answer in the socket function's audit log. A failed subscribe's leftover that
holds the key's watermark lease under the id the client subscribes again with makes the server answer 409. A
subscription the client does not hold on its connection gets changes the fan-out posts to it. The watch must
yield every version once, in order, and raise nothing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from state_client import AsyncStateClient, Change, WatchEvent
from state_core.domain.watch import encode_cursor
from tests.stack import DevStack

pytestmark = pytest.mark.e2e

WATCH_TABLE = "state-service-local-WatchTable"


def ws_url(stack: DevStack) -> str:
    return stack.ws_base_url.replace("http", "ws") + "/watch"


def audit_records(stack: DevStack, **match: Any) -> list[dict[str, Any]]:
    """The socket function's audit records whose fields equal `match`."""
    path = stack.log_dir / "WatchSocketFunction.log"
    found = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            record = json.loads(line).get("audit")
        except (ValueError, AttributeError):
            continue
        if isinstance(record, dict) and all(record.get(k) == v for k, v in match.items()):
            found.append(record)
    return found


async def until(what: str, check: Callable[[], Any], watcher: asyncio.Task[None], timeout: float = 60) -> Any:
    """Poll `check` until it answers something true; the watch ending first (an error raised) fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if watcher.done():
            watcher.result()  # raises what the watch raised
            pytest.fail(f"the watch ended before {what}")
        answer = check()
        if answer:
            return answer
        await asyncio.sleep(0.2)
    pytest.fail(f"no {what} within {timeout} s")


class History:
    """The key's history items in the stack's state table: waited for, taken out, put back."""

    def __init__(self, stack: DevStack, key: str) -> None:
        self.ddb, self.key = stack.client("dynamodb"), key
        self.hidden: list[dict[str, Any]] = []

    def _item_key(self, version: int) -> dict[str, Any]:
        return {"pk": {"S": self.key}, "sk": {"S": f"v#{version:012d}"}}

    def recorded(self, version: int) -> bool:
        return "Item" in self.ddb.get_item(TableName="state-service-local-StateTable", Key=self._item_key(version))

    def hide(self, versions: range) -> None:
        for version in versions:
            item = self.ddb.get_item(TableName="state-service-local-StateTable", Key=self._item_key(version))["Item"]
            self.ddb.delete_item(TableName="state-service-local-StateTable", Key=self._item_key(version))
            self.hidden.append(item)

    def restore(self) -> None:
        for item in self.hidden:
            self.ddb.put_item(TableName="state-service-local-StateTable", Item=item)


def subscription_ids(stack: DevStack, connection_id: str) -> list[str]:
    """The ids of the subscriptions the server holds for the connection."""
    items = stack.client("dynamodb").query(
        TableName=WATCH_TABLE,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :s)",
        ExpressionAttributeValues={":pk": {"S": f"c#{connection_id}"}, ":s": {"S": "s#"}},
        ConsistentRead=True,
    )["Items"]
    return [item["sk"]["S"][2:] for item in items]


def watch_through_a_lagging_history(
    stack: DevStack, key: str, *, leftover_holds: str | None = None
) -> tuple[list[WatchEvent], list[str], list[dict[str, Any]]]:
    """Versions 1-5 written, 3-5 missing from the history; a watch from version 1's cursor. Once the server has
    answered the subscribe 503 (and, with `leftover_holds`, 409), the history is put back; versions 6 and 7
    are written live. The events yielded, the subscription ids the server held once the watch had caught up,
    and the subscribes' audit records."""
    subject = f"watcher-{uuid.uuid4().hex[:12]}"
    history = History(stack, key)
    received: list[WatchEvent] = []

    async def scenario() -> list[str]:
        async with AsyncStateClient(stack.base_url, token=stack.token(subject), watch_url=ws_url(stack)) as state:
            for n in range(1, 6):
                await state.set(key, n)
            deadline = time.monotonic() + 60
            while not await asyncio.to_thread(history.recorded, 5):
                assert time.monotonic() < deadline, "the publisher did not record version 5"
                await asyncio.sleep(0.2)
            await asyncio.to_thread(history.hide, range(3, 6))

            async def watch() -> None:
                async for event in state.watch(key=key, since=encode_cursor(key, 1)):
                    received.append(event)
                    if isinstance(event, Change) and event.version == 7:
                        return

            watcher = asyncio.create_task(watch())
            (connected,) = await until(
                "connection", lambda: audit_records(stack, subject=subject, action="watch_connect"), watcher
            )
            connection_id = connected["connection_id"]
            if leftover_holds is not None:
                # What a failed subscribe's replay still running leaves: the key's watermark under that id, its
                # lease live, without the subscription's item (the unsubscribe removed that one).
                stack.client("dynamodb").put_item(
                    TableName=WATCH_TABLE,
                    Item={
                        "pk": {"S": f"c#{connection_id}"},
                        "sk": {"S": f"w#{leftover_holds}#{key}"},
                        "lease_by": {"S": "r-leftover"},
                        "lease_until": {"N": f"{time.time() + 120:.3f}"},
                    },
                )
            await until("503", lambda: audit_records(stack, key=key, action="watch_subscribe", status=503), watcher)
            if leftover_holds is not None:
                await until("409", lambda: audit_records(stack, key=key, action="watch_subscribe", status=409), watcher)
            await asyncio.to_thread(history.restore)
            await until("version 5", lambda: any(getattr(e, "version", 0) == 5 for e in received), watcher)
            held = await asyncio.to_thread(subscription_ids, stack, connection_id)
            await state.set(key, 6)
            await state.set(key, 7)
            await asyncio.wait_for(watcher, 60)
            return held

    held = asyncio.run(asyncio.wait_for(scenario(), 150))
    return received, held, audit_records(stack, subject=subject, action="watch_subscribe")


def test_a_replay_failing_partway_with_503_after_subscribed_is_resumed_under_a_new_id(
    stack: DevStack, key: str
) -> None:
    received, held, subscribes = watch_through_a_lagging_history(stack, key)
    assert all(isinstance(e, Change) for e in received), received
    assert [e.version for e in received if isinstance(e, Change)] == [2, 3, 4, 5, 6, 7]
    assert [e.value for e in received if isinstance(e, Change)] == [2, 3, 4, 5, 6, 7]
    # It failed after `subscribed` and version 2, and the watch held one subscription after, not the failed id.
    assert subscribes[0]["status"] == 503
    assert subscribes[-1]["status"] == 200
    assert len(held) == 1
    assert held != ["w"]


def test_a_409_from_a_leftover_holding_the_id_subscribed_again_is_recovered_not_raised(
    stack: DevStack, key: str
) -> None:
    received, held, subscribes = watch_through_a_lagging_history(stack, key, leftover_holds="w1")
    assert [e.version for e in received if isinstance(e, Change)] == [2, 3, 4, 5, 6, 7]
    statuses = [record["status"] for record in subscribes]
    assert statuses[:2] == [503, 409]
    assert statuses[-1] == 200
    assert len(held) == 1
    assert held[0] not in ("w", "w1")


def test_changes_for_a_subscription_id_the_watch_does_not_hold_are_ignored(stack: DevStack, key: str) -> None:
    """A subscription on the client's connection under an id the watch does not hold (here of another key)
    gets changes from the fan-out: the watch yields none of them."""
    subject = f"watcher-{uuid.uuid4().hex[:12]}"
    prefix = f"client:{uuid.uuid4().hex[:8]}:"
    other = f"{prefix}other"
    received: list[WatchEvent] = []

    async def scenario() -> None:
        async with AsyncStateClient(stack.base_url, token=stack.token(subject), watch_url=ws_url(stack)) as state:

            async def watch() -> None:
                async for event in state.watch(key=key):
                    received.append(event)
                    if isinstance(event, Change) and event.value == "last":
                        return

            watcher = asyncio.create_task(watch())
            n = 0
            while not received:  # the watch starts when it has subscribed
                n += 1
                await state.set(key, n)
                await asyncio.sleep(0.5)
            (connected,) = audit_records(stack, subject=subject, action="watch_connect")
            connection_id = connected["connection_id"]
            ddb = stack.client("dynamodb")
            ddb.put_item(
                TableName=WATCH_TABLE,
                Item={
                    "pk": {"S": f"t#p#{prefix}"},
                    "sk": {"S": f"{connection_id}#gone"},
                    "connection": {"S": connection_id},
                    "subscription": {"S": "gone"},
                },
            )
            ddb.put_item(
                TableName=WATCH_TABLE,
                Item={"pk": {"S": f"c#{connection_id}"}, "sk": {"S": "s#gone"}, "target": {"S": f"p#{prefix}"}},
            )
            await state.set(other, "not watched")
            watermark = {"pk": {"S": f"c#{connection_id}"}, "sk": {"S": f"w#gone#{other}"}}
            await until(
                "the other key's delivery",
                lambda: "delivered" in ddb.get_item(TableName=WATCH_TABLE, Key=watermark).get("Item", {}),
                watcher,
            )
            await asyncio.sleep(1.0)  # its post, right after its claim, reaches the socket before the next change
            await state.set(key, "last")
            await asyncio.wait_for(watcher, 60)

    asyncio.run(asyncio.wait_for(scenario(), 120))
    assert {e.key for e in received if isinstance(e, Change)} == {key}
    last = received[-1]
    assert isinstance(last, Change)
    assert last.value == "last"
