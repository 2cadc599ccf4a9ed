"""The client's watch through the whole local stack: the WebSocket API, the stream poller driving the
fan-out. A TCP proxy between the client and the WebSocket API cuts the connection and keeps it cut while
the keys change: the client must reconnect and resume (a key from its cursor, a prefix from the watch's cursor
and the versions it received), missing and repeating nothing."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
import uuid
from typing import Any

import pytest

from state_client import AsyncStateClient, Change, Forbidden, StateClient, Unauthorized
from tests.stack import DevStack

pytestmark = pytest.mark.e2e


def ws_url(stack: DevStack) -> str:
    return stack.ws_base_url.replace("http", "ws") + "/watch"


class CuttableProxy:
    """Forwards TCP connections to the WebSocket API; `cut()` drops them all, and while `open` is False new
    ones are closed at once. The handshake's Host names the API's own port (it refuses other ports)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = True
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        self._server.close()

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.transport.abort()
            return
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, upstream_writer]
        head = await reader.readuntil(b"\r\n\r\n")
        host = f"Host: 127.0.0.1:{self.target_port}".encode()
        upstream_writer.write(re.sub(rb"(?im)^host:[^\r\n]*", host, head))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


def test_a_key_watch_reconnects_and_resumes_from_its_cursor(stack: DevStack, key: str) -> None:
    token = stack.token()
    received: list[Change] = []

    async def scenario() -> int:
        proxy = CuttableProxy(int(stack.ws_base_url.rsplit(":", 1)[1]))
        await proxy.start()
        url = f"ws://127.0.0.1:{proxy.port}/watch"
        async with AsyncStateClient(stack.base_url, token=token, watch_url=url, timeout=60) as state:
            await state.set(key, 0)

            async def watch() -> None:
                async for event in state.watch(key=key):
                    assert isinstance(event, Change)
                    received.append(event)
                    if event.value == "last":
                        return

            watcher = asyncio.create_task(watch())
            # The watch starts after the version current when it subscribed: write until one arrives.
            n = 0
            while not received:
                n += 1
                await state.set(key, n)
                await asyncio.sleep(0.5)
            proxy.open = False
            proxy.cut()
            for _ in range(5):  # while the client cannot reconnect
                n += 1
                await state.update(key, n)
            await asyncio.sleep(1.0)
            proxy.open = True
            for _ in range(3):
                n += 1
                await state.set(key, n)
            await state.set(key, "last")
            await asyncio.wait_for(watcher, 60)
            await proxy.stop()
            return proxy.connections

    connections = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert connections >= 2
    versions = [change.version for change in received]
    assert versions == list(range(versions[0], versions[0] + len(versions))), "a version missed or repeated"
    assert received[-1].value == "last"
    assert all(c.operation == "updated" for c in received)
    assert [c.value for c in received[:-1]] == list(range(versions[0] - 1, versions[-1] - 1))


def test_the_sync_watch_resumes_from_a_cursor_it_is_given(stack: DevStack, key: str) -> None:
    with StateClient(stack.base_url, token=stack.token(), watch_url=ws_url(stack), timeout=60) as state:
        for n in range(3):
            state.set(key, n)
        first: list[Change] = []
        writer = threading.Thread(target=lambda: _write_until(state, key, first))
        writer.start()
        for event in state.watch(key=key):
            assert isinstance(event, Change)
            first.append(event)
            break
        writer.join()
        cursor, seen = first[0].cursor, first[0].version
        # Changes made while nobody watches: a new watch from the cursor replays them in order.
        state.update(key, {"a": 1})
        state.delete(key)
        replayed: list[Change] = []
        for event in state.watch(key=key, since=cursor):
            assert isinstance(event, Change)
            replayed.append(event)
            if event.operation == "deleted":
                break
    assert [c.version for c in replayed][-2:] == [replayed[-1].version - 1, replayed[-1].version]
    assert replayed[0].version == seen + 1
    assert replayed[-2].value == {"a": 1}
    assert replayed[-1].value is None


def _write_until(state: StateClient, key: str, received: list[Change]) -> None:
    n = 100
    while not received:
        n += 1
        state.set(key, n)
        time.sleep(0.5)


def test_a_prefix_watch_gets_the_changes_of_its_keys(stack: DevStack) -> None:
    prefix = f"client:{uuid.uuid4().hex[:8]}:"

    async def scenario() -> list[tuple[str, int]]:
        async with AsyncStateClient(stack.base_url, token=stack.token(), watch_url=ws_url(stack)) as state:
            seen: list[tuple[str, int]] = []

            async def watch() -> None:
                async for event in state.watch(prefix=prefix):
                    assert isinstance(event, Change)
                    seen.append((event.key, event.version))
                    if event.key.endswith("done"):
                        return

            watcher = asyncio.create_task(watch())
            while not seen:
                await state.set(f"{prefix}warmup", time.time())
                await asyncio.sleep(0.5)
            await state.set(f"{prefix}a", 1)
            await state.set(f"{prefix}b", 1)
            await state.set(f"{prefix}a", 2)
            await state.set(f"{prefix}done", 1)
            await asyncio.wait_for(watcher, 60)
            return [item for item in seen if not item[0].endswith("warmup")]

    assert asyncio.run(asyncio.wait_for(scenario(), 120)) == [
        (f"{prefix}a", 1), (f"{prefix}b", 1), (f"{prefix}a", 2), (f"{prefix}done", 1)
    ]  # fmt: skip


def test_a_prefix_watch_reconnects_and_resumes_missing_and_repeating_nothing(stack: DevStack) -> None:
    prefix = f"client:{uuid.uuid4().hex[:8]}:"
    received: list[Change] = []

    async def scenario() -> int:
        proxy = CuttableProxy(int(stack.ws_base_url.rsplit(":", 1)[1]))
        await proxy.start()
        url = f"ws://127.0.0.1:{proxy.port}/watch"
        async with AsyncStateClient(stack.base_url, token=stack.token(), watch_url=url, timeout=60) as state:

            async def watch() -> None:
                # Until both last writes came: a watch orders each key's versions, not one key's against another's,
                # and a resume that replays both may send `done` before b's second version.
                async for event in state.watch(prefix=prefix):
                    assert isinstance(event, Change), event
                    received.append(event)
                    if {(f"{prefix}done", 1), (f"{prefix}b", "live")} <= {(c.key, c.value) for c in received}:
                        return

            watcher = asyncio.create_task(watch())
            n = 0
            while not received:  # the watch starts when it has subscribed
                n += 1
                await state.set(f"{prefix}a", n)
                await asyncio.sleep(0.5)
            proxy.open = False
            proxy.cut()
            # While the client cannot reconnect: a key it received, one it never did, a deletion.
            for _ in range(3):
                n += 1
                await state.set(f"{prefix}a", n)
            await state.set(f"{prefix}b", "new")
            await state.delete(f"{prefix}a")
            await asyncio.sleep(1.0)
            proxy.open = True
            await state.set(f"{prefix}b", "live")
            await state.set(f"{prefix}done", 1)
            await asyncio.wait_for(watcher, 90)
            await proxy.stop()
            return proxy.connections

    connections = asyncio.run(asyncio.wait_for(scenario(), 150))
    assert connections >= 2
    by_key: dict[str, list[Change]] = {}
    for change in received:
        by_key.setdefault(change.key, []).append(change)
    a = [c.version for c in by_key[f"{prefix}a"]]
    assert a == list(range(a[0], a[0] + len(a))), f"a version of a missed or repeated: {a}"
    assert by_key[f"{prefix}a"][-1].operation == "deleted"
    assert [(c.version, c.value) for c in by_key[f"{prefix}b"]] == [(1, "new"), (2, "live")]


def test_a_watch_the_caller_may_not_read_raises_forbidden(stack: DevStack) -> None:
    token = stack.token("alice", "state:read:user:${sub}:*")

    async def scenario() -> Any:
        async with AsyncStateClient(stack.base_url, token=token, watch_url=ws_url(stack)) as state:
            async for _ in state.watch(key="user:bob:prefs"):
                pass

    with pytest.raises(Forbidden) as refused:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    assert refused.value.status == 403
    with (
        StateClient(stack.base_url, token="not-a-jwt", watch_url=ws_url(stack)) as state,
        pytest.raises(Unauthorized),  # the handshake's 401 (a static token: not asked again)
    ):
        next(iter(state.watch(key="user:alice:x")))
