"""The WebSocket watch through the whole local stack: real WebSocket clients (aiohttp) on the local WebSocket
API, writes over HTTP, the stream poller driving the fan-out, @connections posting back.

The load test runs watchers of keys and prefixes while writers race (PUT, PATCH, DELETE, TTL expiry) and half
the watchers drop and resume with their cursor: every watcher must get every version of its keys, in order,
once. It runs at full size in make test: 200 watchers over 50 keys and 10 prefixes, 2,000 writes from 8
writers, about 2 minutes on two cores with nothing else running, as about 30,000 requests, a third of
them the fan-out's claims, go through the one serialized moto process (docs/decisions.md, "Listing,
long-poll and watch"); it prints how long each phase took. STATE_EMULATOR_TRACE and STATE_EMULATOR_PROFILE
show where the emulator's time goes.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import aiohttp
import pytest
import requests

from tests.stack import DevStack

pytestmark = pytest.mark.e2e

WATCHERS, KEYS, PREFIXES, WRITES, WRITERS = 200, 50, 10, 2000, 8


def backoff(failures: int) -> float:
    """Full jitter, doubling from 0.5 s up to 8 s: what a client does after its n-th failure in a row."""
    return random.uniform(0, min(8.0, 0.5 * 2**failures))


def ws_url(stack: DevStack) -> str:
    return stack.ws_base_url.replace("http", "ws") + "/watch"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def receive(socket: aiohttp.ClientWebSocketResponse, timeout: float = 30) -> dict[str, Any]:
    frame = await socket.receive(timeout=timeout)
    assert frame.type == aiohttp.WSMsgType.TEXT, frame
    message: dict[str, Any] = json.loads(frame.data)
    return message


def run(coroutine: Any, timeout: float = 120) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=timeout))


def test_a_key_watch_gets_each_write_over_http_in_order_with_its_value(devstack: DevStack) -> None:
    key = f"user:alice:{uuid.uuid4().hex[:8]}"
    api, headers = devstack.base_url, bearer(devstack.token())

    async def scenario() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            socket = await session.ws_connect(ws_url(devstack), headers=headers)
            await socket.send_json({"type": "subscribe", "id": "k", "key": key})
            assert (await receive(socket))["type"] == "subscribed"
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                None, lambda: requests.put(f"{api}/state/{key}", json={"value": 1}, headers=headers, timeout=30)
            )
            await loop.run_in_executor(
                None,
                lambda: requests.patch(
                    f"{api}/state/{key}", data='{"b": 2}', timeout=30,
                    headers={**headers, "Content-Type": "application/merge-patch+json"},
                ),
            )  # fmt: skip
            await loop.run_in_executor(None, lambda: requests.delete(f"{api}/state/{key}", headers=headers, timeout=30))
            changes = [await receive(socket) for _ in range(3)]
            await socket.close()
            return changes

    changes = run(scenario())
    assert [(c["version"], c["operation"], c.get("value")) for c in changes] == [
        (1, "created", 1), (2, "updated", {"b": 2}), (3, "deleted", None)
    ]  # fmt: skip


def test_a_browser_passes_its_token_as_a_subprotocol_and_gets_state_v1_back(devstack: DevStack) -> None:
    async def scenario() -> str | None:
        async with aiohttp.ClientSession() as session:
            protocols = ("state.v1", f"bearer.{devstack.token()}")
            socket = await session.ws_connect(ws_url(devstack), protocols=protocols)
            chosen = socket.protocol
            await socket.close()
            return chosen

    assert run(scenario()) == "state.v1"


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [("?access_token=TOKEN", {}, 400), ("", {}, 401), ("", {"Authorization": "Bearer not-a-jwt"}, 401)],
)
def test_a_handshake_without_a_valid_header_token_is_refused(devstack: DevStack, query, headers, status) -> None:
    async def scenario() -> int:
        async with aiohttp.ClientSession() as session:
            url = ws_url(devstack) + query.replace("TOKEN", devstack.token())
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url, headers=headers)
            return refused.value.status

    assert run(scenario()) == status


def test_bad_messages_and_forbidden_subscriptions_get_errors_on_the_socket(devstack: DevStack) -> None:
    token = devstack.token("alice", "state:read:user:${sub}:*")

    async def scenario() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            socket = await session.ws_connect(ws_url(devstack), headers=bearer(token))
            for message in (
                "not json",
                {"type": "subscribe", "id": "a", "prefix": "user:"},
                {"type": "subscribe", "id": "b", "key": "user:bob:x"},
                {"type": "subscribe", "id": "c", "prefix": "user:al"},
            ):
                await socket.send_str(message if isinstance(message, str) else json.dumps(message))
            answers = [await receive(socket) for _ in range(4)]
            await socket.close()
            return answers

    answers = run(scenario())
    # API Gateway invokes the integration for each message on its own: the answers may come in any order.
    assert sorted((a["type"], a["status"], a.get("id") or "") for a in answers) == [
        ("error", 400, ""), ("error", 400, "c"), ("error", 403, "a"), ("error", 403, "b")
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------- the load
class Watcher:
    """One client: a key (resumable by cursor) or a prefix; what it received, per key, across connections."""

    def __init__(self, url: str, token: str, *, key: str | None = None, prefix: str | None = None) -> None:
        self.url, self.token, self.key, self.prefix = url, token, key, prefix
        self.seen: dict[str, list[int]] = defaultdict(list)
        self.cursor: str | None = None
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.reconnects = 0
        self.attempts = 0  # each subscribe goes under a new id: what still comes for an abandoned one is not read
        self.failures = 0  # in a row: retries back off, so that a slow table is not buried under them
        self.failed_subscribes = 0  # in all: after one, docs/watch.md allows a version sent twice

    async def connect(self, session: aiohttp.ClientSession) -> None:
        for attempt in range(12):
            try:
                self.socket = await session.ws_connect(self.url, headers=bearer(self.token))
                break
            except aiohttp.WSServerHandshakeError as refused:
                # 503: the table or the issuer did not answer in time under this load; a client tries again.
                if refused.status != 503 or attempt == 11:
                    raise
                await asyncio.sleep(backoff(attempt))
        self.subscribed = asyncio.Event()
        self.reader = asyncio.create_task(self._read(self.socket))
        await self._subscribe()
        for _ in range(10):
            try:
                await asyncio.wait_for(self.subscribed.wait(), timeout=20)
                return
            except TimeoutError:
                # No answer (the function timed out under the local table's load): undo, then again.
                self.failed_subscribes += 1
                await self.socket.send_json({"type": "unsubscribe", "id": self.subscription_id})
        raise AssertionError("never subscribed")

    async def _subscribe(self) -> None:
        assert self.socket is not None
        target: dict[str, Any] = {"key": self.key} if self.key else {"prefix": self.prefix}
        if self.cursor:
            target["since"] = self.cursor
            if self.prefix:
                # A prefix watch resumes with its cursor and the last version processed of each key received.
                target["versions"] = {key: versions[-1] for key, versions in self.seen.items() if versions}
        self.attempts += 1
        await self.socket.send_json({"type": "subscribe", "id": self.subscription_id, **target})

    @property
    def subscription_id(self) -> str:
        return f"w{self.attempts}"

    async def _read(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in socket:
            if frame.type != aiohttp.WSMsgType.TEXT:
                return
            message = json.loads(frame.data)
            if "type" not in message:
                # API Gateway's own frame for an integration that failed or timed out (the message is lost).
                message = {"type": "error", "status": 503, "gateway": message}
            if message.get("id") not in (None, self.subscription_id):
                continue  # about a subscription this client gave up on
            if message["type"] == "error" and message["status"] in (503, 409):
                # The local table is one serialized process and a slow one under this load: after a 503 a
                # client unsubscribes (whatever of the failed subscription is left goes), then subscribes
                # again from the cursor of what it processed; the messages of one socket are processed
                # concurrently, so it waits for `unsubscribed` in between. A 409: a subscribe this client gave
                # up on (no answer in 20 s) landed after its unsubscribe; the same again.
                await asyncio.sleep(backoff(self.failures))
                self.failures += 1
                self.failed_subscribes += 1
                await socket.send_json({"type": "unsubscribe", "id": self.subscription_id})
                continue
            if message["type"] == "unsubscribed":
                await self._subscribe()
                continue
            if message["type"] == "resync":
                raise AssertionError(message)  # nothing here is old enough or far enough behind
            if message["type"] == "error":
                raise AssertionError(message)
            if message["type"] == "subscribed":
                self.failures = 0
                self.subscribed.set()
                if message.get("cursor") and not self.cursor:
                    self.cursor = message["cursor"]
            if message["type"] == "change" and message["subscription"] == self.subscription_id:
                self.seen[message["key"]].append(message["version"])
                if self.key:
                    self.cursor = message["cursor"]  # a prefix's cursor is its watch's, from `subscribed`

    async def drop_and_resume(self, session: aiohttp.ClientSession) -> None:
        assert self.socket is not None
        assert self.reader is not None
        await self.socket.close()
        await self.reader
        self.reconnects += 1
        await self.connect(session)


def current_versions(api: str, headers: dict[str, str], keys: list[str]) -> dict[str, int]:
    """Each key's current version, from the first entry of its history (deleted and expired keys too)."""
    versions = {}
    for key in keys:
        page = requests.get(f"{api}/state/{key}/history", params={"limit": 1}, headers=headers, timeout=30)
        versions[key] = page.json()["versions"][0]["version"] if page.status_code == 200 else 0
    return versions


def write(api: str, headers: dict[str, str], keys: list[str], count: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(count):
        key = rng.choice(keys)
        kind = rng.random()
        if kind < 0.5:
            body: dict[str, Any] = {"value": {"w": seed, "n": rng.random()}}
            if kind < 0.08:
                body["ttl_seconds"] = 1  # expired by the next write, or by the TTL emulator
            requests.put(f"{api}/state/{key}", json=body, headers=headers, timeout=30)
        elif kind < 0.8:
            patch_headers = {**headers, "Content-Type": "application/merge-patch+json"}
            requests.patch(f"{api}/state/{key}", data=json.dumps({"p": seed}), headers=patch_headers, timeout=30)
        else:
            requests.delete(f"{api}/state/{key}", headers=headers, timeout=30)


@pytest.mark.verify
@pytest.mark.timeout(1200)
def test_every_watcher_gets_every_version_of_its_keys_once_in_order_while_writers_race_and_half_resume(
    devstack: DevStack,
) -> None:
    base = f"load{uuid.uuid4().hex[:6]}"
    prefixes = [f"{base}:g{n}:" for n in range(PREFIXES)]
    keys = [f"{prefixes[n % PREFIXES]}k{n}" for n in range(KEYS)]
    api, writer_headers = devstack.base_url, bearer(devstack.token("writer", "state:read state:write"))
    token = devstack.token("watcher", "state:read")
    rng = random.Random(15)
    watchers = [Watcher(ws_url(devstack), token, prefix=p) for p in prefixes]
    watchers += [Watcher(ws_url(devstack), token, key=keys[n % KEYS]) for n in range(WATCHERS - len(watchers))]
    by_prefix, by_key = [w for w in watchers if w.prefix], [w for w in watchers if w.key]
    # Half of each kind, prefix watchers among them.
    resumers = rng.sample(by_prefix, max(1, len(by_prefix) // 2)) + rng.sample(by_key, len(by_key) // 2)

    async def scenario() -> None:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            gate = asyncio.Semaphore(8)

            async def connect(watcher: Watcher) -> None:
                async with gate:
                    await watcher.connect(session)

            started = time.monotonic()
            await asyncio.gather(*(connect(w) for w in watchers))
            phases = {"connected": time.monotonic() - started}
            await asyncio.sleep(1)  # every subscription in place before the first write
            writers = [
                threading.Thread(target=write, args=(api, writer_headers, keys, WRITES // WRITERS, seed))
                for seed in range(WRITERS)
            ]
            for thread in writers:
                thread.start()
            # The watchers drop and resume while the writers race, a few at a time, each on its own.
            pending, resuming = list(resumers), []
            while any(t.is_alive() for t in writers):
                if pending:
                    resuming.append(asyncio.create_task(pending.pop().drop_and_resume(session)))
                await asyncio.sleep(0.3)
            resuming += [asyncio.create_task(w.drop_and_resume(session)) for w in pending]
            phases["written"] = time.monotonic() - started
            await asyncio.gather(*resuming)
            phases["resumed"] = time.monotonic() - started
            final = await every_version_delivered(watchers, api, writer_headers, keys)
            phases["delivered"] = time.monotonic() - started
            print("watch load, seconds from the first connect:", {name: round(t, 1) for name, t in phases.items()})
            for watcher in watchers:
                assert watcher.socket is not None
                await watcher.socket.close()
            for watcher in watchers:
                assert watcher.reader is not None
                await watcher.reader
            assert_every_version_once(watchers, keys, final, fan_out_failures(devstack))

    run(scenario(), timeout=1100)
    assert all(w.reconnects == 1 for w in resumers)


async def every_version_delivered(
    watchers: list[Watcher], api: str, headers: dict[str, str], keys: list[str]
) -> dict[str, int]:
    """Wait until every watcher has every version of its keys, or 300 s; each key's final version."""
    deadline = time.monotonic() + 300
    nudge_at = time.monotonic() + 30
    loop = asyncio.get_running_loop()
    while True:
        final: dict[str, int] = await loop.run_in_executor(None, current_versions, api, headers, keys)
        if all(_complete(w, final) for w in watchers) or time.monotonic() > deadline:
            return final
        if time.monotonic() > nudge_at:
            # A delivery that failed under this load is left to the sweep, which the local stack does
            # not schedule, or to the key's next change: one more write of each key still missing
            # versions somewhere, whose fan-out catches the watchers up from the history.
            nudge_at = deadline
            lagging = {k for w in watchers for k in _missing(w, final)}
            await loop.run_in_executor(None, write_each, api, headers, sorted(lagging))
        await asyncio.sleep(1)


def fan_out_failures(stack: DevStack) -> int:
    """Fan-out invocations that failed (an error or a timeout: Lambda retries their batches), and posts whose
    answer was lost (given back, so sent again rather than never): the two documented ways to send twice."""
    log = stack.log_dir / "WatchFanoutFunction.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    failed = text.count("Task timed out") + sum(1 for line in text.splitlines() if line.startswith("Traceback"))
    return failed + text.count("watch delivery failed")


def assert_every_version_once(watchers: list[Watcher], keys: list[str], final: dict[str, int], retried: int) -> None:
    for watcher in watchers:
        for key in [watcher.key] if watcher.key else [k for k in keys if k.startswith(str(watcher.prefix))]:
            # Every version up to the one read last, and perhaps an expiry the TTL emulator wrote after: 1..n
            # without a gap or a duplicate, n at least the final version. A fan-out invocation that failed (the
            # local table timing out under this load) is retried, and may send the version it had claimed again,
            # as may a post whose answer was lost, the replay's of a subscribe that failed too (its subscription
            # stays until the unsubscribe, its watermark a version behind the client: docs/watch.md): then, and
            # only then (any fan-out failure, or one of this watcher's subscribes), a version not above the last
            # one processed is dropped, as the client the docs describe does. A gap or a version out of order
            # still fails.
            seen = watcher.seen[str(key)]
            once = seen
            if retried or watcher.failed_subscribes:
                once = [v for n, v in enumerate(seen) if v > max(seen[:n], default=0)]
            assert once == list(range(1, len(once) + 1)), (key, watcher.reconnects, retried, watcher.failed_subscribes)
            assert len(once) >= final[str(key)], (key, watcher.reconnects)


def _missing(watcher: Watcher, final: dict[str, int]) -> list[str]:
    keys = [watcher.key] if watcher.key else [k for k in final if k.startswith(str(watcher.prefix))]
    return [str(k) for k in keys if len(set(watcher.seen[str(k)])) < final[str(k)]]


def _complete(watcher: Watcher, final: dict[str, int]) -> bool:
    return not _missing(watcher, final)


def write_each(api: str, headers: dict[str, str], keys: list[str]) -> None:
    for key in keys:
        requests.put(f"{api}/state/{key}", json={"value": "last"}, headers=headers, timeout=30)
