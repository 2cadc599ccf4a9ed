"""The key lock alone, at the queue depths a deployment reaches: 8, 64 and 256 writers on one key, each
taking the lock (`RedisKeyLock`, against a redis-server the benchmark starts), holding it for a fixed sleep
and releasing it, spread over eight processes as over eight containers.

What the contention rows cannot show: the local stack runs eight PATCH workers, so no more than seven
waiters ever queue there, where a deployed function runs one container per concurrent request and the queue
grows as deep as the writers. A sleep spends no CPU, so these holds are as steady as this machine allows
and the waits are the lock's own queue: the baseline is 1 / the sleep, what one key could take if the lock
cost nothing. The lock's policy is the service's (a 2 s wait at most, then going ahead optimistically), so a
queue deeper than 2 s of holds shows as lock timeouts."""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from benchmarks.common import LAYER, Row, throughput_row
from benchmarks.contention import _totals, _waits

HOLD_SECONDS = 0.010
PROCESSES = 8


class _RecordedMetrics:
    """Each metric's values, by name: the shape of one EMF record, which `_waits` reads."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add_metric(self, name: str, unit: Any, value: float) -> None:
        self.values.setdefault(name, []).append(value)


@dataclass(frozen=True)
class _Share:
    """One process's part of a round."""

    redis_url: str
    key: str
    threads: int
    hold: float


def _writers(share: _Share, start: Any, out: Any) -> None:
    """One process's writers: each takes the lock once (after `start`), sleeps the hold, releases it."""
    redis_url, key, threads, hold = share.redis_url, share.key, share.threads, share.hold
    sys.path.insert(0, str(LAYER))
    from state_core.cache.breaker import CircuitBreaker
    from state_core.cache.link import RedisLink, connect
    from state_core.cache.lock import LockPolicy, RedisKeyLock

    link = RedisLink(
        connect(redis_url, password=None, timeout_seconds=1.0),
        CircuitBreaker(),
        on_error=lambda: None,
        signing_key=b"lock-alone-bench" * 2,
    )
    records: list[dict[str, list[float]]] = []
    # Warm, as a container after its first request: the lock's scripts loaded, a connection per writer open.
    warm = RedisKeyLock(link, _RecordedMetrics(), LockPolicy())
    lease = warm.acquire(f"{key}:warm-up:{uuid.uuid4().hex}")
    if lease is not None:
        warm.release(lease)

    def one() -> None:
        metrics = _RecordedMetrics()
        lock = RedisKeyLock(link, metrics, LockPolicy())
        link.run(lambda client: client.ping())
        start.wait()
        lease = lock.acquire(key)
        time.sleep(hold)
        if lease is not None:
            lock.release(lease)
        records.append(metrics.values)

    running = [threading.Thread(target=one) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    out.put(records)


def _round(redis_url: str, writers: int, hold: float) -> tuple[float, list[dict[str, list[float]]]]:
    """(throughput, one metric record per writer) of one round on a fresh key."""
    spawn = multiprocessing.get_context("spawn")
    processes = min(PROCESSES, writers)
    start, out = spawn.Barrier(writers + 1), spawn.Queue()
    key = f"lock-alone:{uuid.uuid4().hex}"
    shares = [writers // processes + (1 if index < writers % processes else 0) for index in range(processes)]
    running = [
        spawn.Process(target=_writers, args=(_Share(redis_url, key, share, hold), start, out)) for share in shares
    ]
    for process in running:
        process.start()
    start.wait()
    started = time.perf_counter()
    records: list[dict[str, list[float]]] = []
    for _ in running:
        records += out.get(timeout=120)
    elapsed = time.perf_counter() - started
    for process in running:
        process.join(timeout=30)
    return writers / elapsed, records


def run(rounds: int, writer_counts: tuple[int, ...], hold: float = HOLD_SECONDS) -> list[Row]:
    from devstack.redis_server import RedisServer

    server = RedisServer().start()
    rows = []
    try:
        for writers in writer_counts:
            throughputs, records = [], []
            for round_number in range(1, rounds + 1):
                throughput, round_records = _round(server.url, writers, hold)
                throughputs.append(throughput)
                records += round_records
                print(f"lock alone, {writers} writers, round {round_number}: {throughput:.1f} op/s", file=sys.stderr)
            rows.append(
                throughput_row(
                    f"lock alone, {writers} writers, {hold * 1000:g} ms holds",
                    f"1 / the {hold * 1000:g} ms hold",
                    throughputs,
                    1 / hold,
                    1 / hold,
                    writers=writers,
                    processes=min(PROCESSES, writers),
                    **_totals(records),
                    **_waits(records, statistics.median(throughputs)),
                )
            )
    finally:
        server.stop()
    return rows
