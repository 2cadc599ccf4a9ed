"""Write-to-watcher latency through the local stack: N WebSocket watchers of one key, one PUT at a time; for
every (write, watcher) the time from sending the PUT to the watcher receiving that version's change.

A `make bench` row group (`--skip watch` leaves it out; `--watch-writes N` makes every row N writes): one row
for 1 watcher (20 writes) and one for 1,000 (5 writes: connecting the 1,000 takes about 70 s and each write
about 9 s until all have it, so 10 writes made the row nearly 3 minutes), p50 and p99 in ms, against the
PUT's own latency in the same run (the baseline: what the write costs before any watcher hears of it).
Alone: ``python -m benchmarks.watch_latency --watchers 1 1000``. The local stack adds what AWS does not
have (one serialized moto process, a stream poller polling every 250 ms, a gateway and functions on the same
cores as the watchers), so read the figures against each other, not as AWS's.
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

from benchmarks.common import Row, format_table, percentile

# (watchers, writes): the writes are what the row's runtime allows.
ROWS = ((1, 20), (1000, 5))
# Subscriptions made at once while the watchers connect: enough to keep the socket function's workers busy,
# few enough that the local table answers each within the gateway's timeout.
CONNECTING = 16


def _put(url: str, body: dict[str, Any], headers: dict[str, str]) -> int:
    """PUT, retrying a 503 as a client does (the local table is busy while a fan-out posts to many
    watchers); the number of 503s."""
    for refused in range(5):
        response = requests.put(url, json=body, headers=headers, timeout=60)
        if response.status_code != 503:
            response.raise_for_status()
            return refused
        time.sleep(float(response.headers.get("Retry-After", "1")))
    response.raise_for_status()
    return 5


async def _measure(stack: Any, watchers: int, writes: int) -> tuple[list[float], list[float], dict[str, Any]]:
    key = f"bench:watch:{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {stack.token('bench', 'state:read state:write')}"}
    url = stack.ws_base_url.replace("http", "ws") + "/watch"
    received: dict[int, list[float]] = {}
    sockets = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        gate = asyncio.Semaphore(CONNECTING)
        began = time.monotonic()

        async def connect() -> None:
            async with gate:
                socket = await session.ws_connect(url, headers=headers)
                await socket.send_json({"type": "subscribe", "id": "b", "key": key})
                while json.loads((await socket.receive(timeout=60)).data)["type"] != "subscribed":
                    pass
                sockets.append(socket)

        await asyncio.gather(*(connect() for _ in range(watchers)))
        connected = time.monotonic() - began

        async def read(socket: aiohttp.ClientWebSocketResponse) -> None:
            async for frame in socket:
                message = json.loads(frame.data)
                if message.get("type") == "change":
                    received.setdefault(message["version"], []).append(time.perf_counter())

        readers = [asyncio.create_task(read(s)) for s in sockets]
        loop = asyncio.get_running_loop()
        latencies, puts, refused = [], [], 0
        for version in range(1, writes + 1):
            started = time.perf_counter()
            body = {"value": version}
            refused += await loop.run_in_executor(None, _put, f"{stack.base_url}/state/{key}", body, headers)
            puts.append((time.perf_counter() - started) * 1000)
            deadline = time.monotonic() + 120
            while len(received.get(version, [])) < watchers and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            latencies += [(at - started) * 1000 for at in received.get(version, [])]
        for socket in sockets:
            await socket.close()
        await asyncio.gather(*readers, return_exceptions=True)
    return latencies, puts, {"connect_seconds": round(connected, 1), "puts_answered_503": refused}


def run(writes: int | None = None, watchers: tuple[int, ...] | None = None) -> list[Row]:
    """The rows of `make bench`: for each watcher count, write-to-watcher latency against the PUT's own.
    `writes` (every row) and `watchers` (rows of these counts) replace the defaults of ROWS."""
    defaults = dict(ROWS)
    rows_to_run = [(count, writes or defaults.get(count, ROWS[-1][1])) for count in (watchers or defaults)]
    from tests.stack import start_devstack

    rows = []
    stack = start_devstack(Path(tempfile.mkdtemp(prefix="bench-watch-")))
    try:
        for count, row_writes in rows_to_run:
            started = time.monotonic()
            latencies, puts, phases = asyncio.run(_measure(stack, count, row_writes))
            rows.append(
                Row(
                    name=f"watch: write to {count:,} watcher{'s' if count > 1 else ''} of one key",
                    baseline="the PUT itself",
                    median=percentile(latencies, 0.50),
                    p99=percentile(latencies, 0.99),
                    runs=len(latencies),
                    baseline_median=percentile(puts, 0.50),
                    baseline_p99=percentile(puts, 0.99),
                    notes={
                        "writes": row_writes,
                        "deliveries": len(latencies),
                        "expected_deliveries": count * row_writes,
                        "seconds": round(time.monotonic() - started, 1),
                        **phases,
                    },
                )
            )
    finally:
        stack.stop(check_server_errors=False)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", type=int, nargs="+", default=[count for count, _ in ROWS])
    parser.add_argument("--writes", type=int, help="writes of every row (default: 20 for 1 watcher, 5 for 1,000)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = run(args.writes, tuple(args.watchers))
    print(format_table(rows))
    for row in rows:
        print(f"{row.name}: {json.dumps(row.notes)}")


if __name__ == "__main__":
    main()
