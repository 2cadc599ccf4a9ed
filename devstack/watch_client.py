"""Watch a key or a prefix of the local stack over WebSocket and print each change as it arrives.

``python -m devstack.watch_client --key user:alice:prefs`` (``make watch KEY=...`` or ``PREFIX=...``): connects
with a dev token (devstack/token.py), subscribes, prints one line per change, and on a dropped connection
reconnects with backoff and resumes: a key with the cursor of the last change printed, a prefix with the
watch's cursor and the last version printed of each key (docs/watch.md, "Resuming a prefix"), so nothing is
missed or printed twice. When the server says the token expires soon, a fresh one is minted and sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import aiohttp

from devstack.token import mint

# The local stack's WebSocket API (devstack/websocket.py) and the template's stage.
DEFAULT_URL = f"ws://127.0.0.1:{os.environ.get('LOCAL_WS_PORT', '3001')}/watch"


def _line(message: dict[str, Any]) -> str:
    if message["type"] == "change":
        value = "(value omitted: GET it)" if message.get("value_omitted") else json.dumps(message.get("value"))
        return f"{message['key']} v{message['version']} {message['operation']} {message['occurred_at']} {value}"
    return json.dumps(message)


class Watch:
    def __init__(self, url: str, *, key: str | None, prefix: str | None, token: Callable[[], str]) -> None:
        self.url, self.key, self.prefix, self.token = url, key, prefix, token
        self.cursor: str | None = None
        # A prefix watch's: the last version printed of each key, sent back with the watch's cursor.
        self.versions: dict[str, int] = {}

    def subscription(self) -> dict[str, Any]:
        target: dict[str, Any] = {"key": self.key} if self.key else {"prefix": self.prefix}
        if self.cursor:
            target["since"] = self.cursor
            if self.prefix:
                target["versions"] = dict(self.versions)
        return {"type": "subscribe", "id": "watch", **target}

    async def once(self, session: aiohttp.ClientSession) -> None:
        headers = {"Authorization": f"Bearer {self.token()}"}
        async with session.ws_connect(self.url, headers=headers, heartbeat=30) as socket:
            await socket.send_json(self.subscription())
            async for frame in socket:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                message = json.loads(frame.data)
                kind = message.get("type")
                if self.prefix and kind == "subscribed":
                    self.cursor = message["cursor"]  # the watch's: the same on a resume, a new one after resync
                elif self.prefix and kind == "change":
                    self.versions[message["key"]] = message["version"]
                elif kind == "change" or (kind == "subscribed" and message.get("cursor") and not self.cursor):
                    self.cursor = message["cursor"]
                elif kind == "expiring":
                    await socket.send_json({"type": "refresh", "token": self.token()})
                elif kind == "resync" and message.get("key") is None:
                    self.versions = {}  # a new watch: list the prefix, then watch on from now
                elif kind == "resync" and self.key:
                    self.cursor = None  # read the key, then watch on from now
                print(_line(message), flush=True)

    async def run(self, *, attempts: int | None = None) -> None:
        delay = 0.5
        async with aiohttp.ClientSession() as session:
            while attempts is None or attempts > 0:
                attempts = None if attempts is None else attempts - 1
                try:
                    await self.once(session)
                    delay = 0.5
                except (aiohttp.ClientError, OSError) as error:
                    print(f"# disconnected ({type(error).__name__}); reconnecting in {delay:.1f} s", file=sys.stderr)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--key")
    target.add_argument("--prefix", help="a key prefix ending in ':'")
    parser.add_argument("--url", default=os.environ.get("STATE_WATCH_URL", DEFAULT_URL))
    parser.add_argument("--sub", default="dev")
    parser.add_argument("--scope", default="state:read")
    args = parser.parse_args(argv)
    watch = Watch(args.url, key=args.key, prefix=args.prefix, token=lambda: mint(args.sub, args.scope))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch.run())


if __name__ == "__main__":
    main()
