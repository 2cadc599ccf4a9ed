"""Write-to-watcher latency through the local stack: N WebSocket watchers of one key, one PUT at a time; for
every (write, watcher) the time from sending the PUT to the watcher receiving that version's change.

``python -m benchmarks.watch_latency --watchers 1 1000 --writes 20``: one line per watcher count with p50
and p99 in ms, and the PUT's own latency (the baseline: what the write costs before any watcher hears of
it). Not a `make bench` row: it needs the local WebSocket API and minutes at 1,000 watchers. The local stack
adds what AWS does not have (one serialized moto process, a stream poller polling every 250 ms, a gateway
and functions on the same cores as the watchers), so read the figures against each other, not as AWS's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import requests

from benchmarks.common import percentile


def _put(url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    requests.put(url, json=body, headers=headers, timeout=60).raise_for_status()


async def _measure(stack: Any, watchers: int, writes: int) -> tuple[list[float], list[float]]:
    key = f"bench:watch:{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {stack.token('bench', 'state:read state:write')}"}
    url = stack.ws_base_url.replace("http", "ws") + "/watch"
    received: dict[int, list[float]] = {}
    sockets = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for _ in range(watchers):
            socket = await session.ws_connect(url, headers=headers)
            await socket.send_json({"type": "subscribe", "id": "b", "key": key})
            while json.loads((await socket.receive(timeout=60)).data)["type"] != "subscribed":
                pass
            sockets.append(socket)

        async def read(socket: aiohttp.ClientWebSocketResponse) -> None:
            async for frame in socket:
                message = json.loads(frame.data)
                if message.get("type") == "change":
                    received.setdefault(message["version"], []).append(time.perf_counter())

        readers = [asyncio.create_task(read(s)) for s in sockets]
        loop = asyncio.get_running_loop()
        latencies, puts = [], []
        for version in range(1, writes + 1):
            started = time.perf_counter()
            body = {"value": version}
            await loop.run_in_executor(None, _put, f"{stack.base_url}/state/{key}", body, headers)
            puts.append((time.perf_counter() - started) * 1000)
            deadline = time.monotonic() + 120
            while len(received.get(version, [])) < watchers and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            latencies += [(at - started) * 1000 for at in received.get(version, [])]
        for socket in sockets:
            await socket.close()
        await asyncio.gather(*readers, return_exceptions=True)
    return latencies, puts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", type=int, nargs="+", default=[1, 1000])
    parser.add_argument("--writes", type=int, default=20)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.stack import start_devstack

    stack = start_devstack(Path(tempfile.mkdtemp(prefix="bench-watch-")))
    try:
        print(f"load average {os.getloadavg()[0]:.2f}; {args.writes} writes per row")
        for count in args.watchers:
            latencies, puts = asyncio.run(_measure(stack, count, args.writes))
            expected = count * args.writes
            print(
                f"{count:>5} watchers of one key: write-to-watcher p50 {percentile(latencies, 0.50):7.0f} ms"
                f"  p99 {percentile(latencies, 0.99):7.0f} ms  (PUT itself p50 {percentile(puts, 0.50):.0f} ms;"
                f" {len(latencies)}/{expected} deliveries)",
                flush=True,
            )
    finally:
        stack.stop(check_server_errors=False)


if __name__ == "__main__":
    main()
