"""make watch's client (devstack/watch_client.py) against a small aiohttp WebSocket server: it sends its token
in Authorization, prints changes, and after a dropped connection resumes a key from the last cursor."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from devstack.watch_client import Watch

pytestmark = pytest.mark.unit


def test_the_client_resumes_a_key_after_a_drop_with_the_cursor_of_the_last_change(capsys):
    seen: list[tuple[str | None, dict]] = []

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        subscribe = json.loads((await ws.receive()).data)
        seen.append((request.headers.get("Authorization"), subscribe))
        if len(seen) == 1:
            await ws.send_json({"type": "subscribed", "id": "watch", "key": "k", "version": 0, "cursor": "c0"})
            await ws.send_json(
                {"type": "change", "subscription": "watch", "key": "k", "version": 1, "operation": "created",
                 "occurred_at": "t", "value": {"a": 1}, "cursor": "c1"}
            )  # fmt: skip
        await ws.close()  # the server (or the network) drops the connection
        return ws

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/", socket)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            watch = Watch(f"ws://127.0.0.1:{port}/", key="k", prefix=None, token=lambda: "tok")
            await asyncio.wait_for(watch.run(attempts=2), timeout=10)
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
    assert [auth for auth, _ in seen] == ["Bearer tok", "Bearer tok"]
    assert seen[0][1] == {"type": "subscribe", "id": "watch", "key": "k"}
    assert seen[1][1] == {"type": "subscribe", "id": "watch", "key": "k", "since": "c1"}
    assert 'k v1 created t {"a": 1}' in capsys.readouterr().out


def test_the_client_resumes_a_prefix_with_the_watchs_cursor_and_the_last_version_of_each_key():
    seen: list[dict] = []

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seen.append(json.loads((await ws.receive()).data))
        if len(seen) == 1:
            await ws.send_json({"type": "subscribed", "id": "watch", "prefix": "p:", "cursor": "w"})
            for key, version in (("p:a", 1), ("p:b", 4), ("p:a", 2)):
                await ws.send_json(
                    {"type": "change", "subscription": "watch", "key": key, "version": version,
                     "operation": "updated", "occurred_at": "t", "value": 1, "cursor": f"{key}{version}"}
                )  # fmt: skip
        await ws.close()
        return ws

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/", socket)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            watch = Watch(f"ws://127.0.0.1:{port}/", key=None, prefix="p:", token=lambda: "tok")
            await asyncio.wait_for(watch.run(attempts=2), timeout=10)
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
    assert seen[0] == {"type": "subscribe", "id": "watch", "prefix": "p:"}
    assert seen[1] == {
        "type": "subscribe",
        "id": "watch",
        "prefix": "p:",
        "since": "w",
        "versions": {"p:a": 2, "p:b": 4},
    }
