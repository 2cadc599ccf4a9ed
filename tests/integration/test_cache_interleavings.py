"""Every interleaving of cache readers and writers: a read must never be older than a write acknowledged
before it began, whatever order the steps of concurrent requests take.

What is real: the StateManager's own get, put and delete code paths and the RedisStateCache with its
Lua write-if-newer on a real redis-server, always. The database is the real StateStore on the serialized
moto server for 1 reader + 2 writers (one variant in make test, all in make verify), and otherwise
`VersionedDict`, a dict with the store's version rules: moto costs ~100 ms a schedule, so 25,200 of them
would take most of an hour. Threads never race: each operation runs in its own thread, and failpoints
(`call` action) stop it at the boundaries of its steps, where a scheduler lets exactly one operation take
its next step.

Steps (the failpoints that end them):
    reader: cache read (hit: done | after_cache_miss) -> consistent DB read (after_fill_read_before_set)
            -> fill through write-if-newer, answer
    writer: DB write (after_db_write_before_cache) -> write-through, acknowledge
    patcher: cache read, taking the fill lease on a miss (after_lock_acquire) -> DB read on a miss, merge
            (after_patch_read) -> conditional DB write (after_db_write_before_cache) -> write-through that
            claims its miss's lease, acknowledge
    wiper:  the key's entry is gone from Redis (an eviction; a restart or a flush also takes the fill lease)
A reader that hits the cache is done after its first step; its later slots in the schedule pass. A patcher
that lost the version race merges again and retries: those extra steps run after the schedule.

Checked after every schedule: the cache holds no version older than the newest committed one, and no
read answered a version older than a write acknowledged before that read began.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import boto3
import pytest
import redis

from devstack import failpoints
from state_core.cache.breaker import CircuitBreaker
from state_core.cache.link import RedisLink, connect
from state_core.cache.state_cache import CachePolicy, RedisStateCache, entry_key
from state_core.domain.cached import CacheEntry
from state_core.domain.codec import StoredValue
from state_core.domain.errors import NotFound
from state_core.domain.records import StateRecord, rfc3339
from state_core.domain.writes import ConditionFailed, Precondition, WriteResult
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import StateManager
from state_core.storage.state import StateStore
from tests.doubles import SIGNING_KEY, NoMetrics, utc_now

pytestmark = [pytest.mark.integration, pytest.mark.verify]

VERIFY = os.environ.get("STATE_VERIFY") == "1"
# Sampled in make test: 1,000 orders for each initial cache state, 2,000 in all.
SAMPLE_2R2W = 2_000
SEED = 20261128
STEPS = {"reader": 3, "writer": 2, "patcher": 4, "wiper": 1}
POINTS = (
    "after_cache_miss",
    "after_fill_read_before_set",
    "after_db_write_before_cache",
    "after_lock_acquire",
    "after_patch_read",
)
WRITES = ("writer", "deleter", "patcher")


class VersionedDict:
    """DynamoDB's rules for the state item, in memory: versions count up through deletes, conditions hold."""

    def __init__(self) -> None:
        self.items: dict[str, StateRecord] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> StateRecord | None:
        return self.items.get(key)

    def write(self, key: str, value: StoredValue, *, actor: str, now: datetime, precondition: Precondition,
              version: int | None = None, **_: Any) -> WriteResult:  # fmt: skip
        with self._lock:
            current = self.items.get(key)
            if precondition is Precondition.LIVE_AT_VERSION:
                if current is None or current.deleted or current.version != version:
                    raise ConditionFailed(current)
            elif precondition is not Precondition.NOT_EXPIRED:
                raise NotImplementedError(precondition)
            record = StateRecord(key, (current.version if current else 0) + 1, False, value, rfc3339(now),
                                 rfc3339(now), actor, None)  # fmt: skip
            self.items[key] = record
            return WriteResult(record, current is None or current.deleted)

    def delete(self, key: str, *, actor: str, now: datetime, version: int | None) -> StateRecord:
        with self._lock:
            current = self.items.get(key)
            if current is None or current.deleted:
                raise ConditionFailed(current)
            record = StateRecord(key, current.version + 1, True, None, None, rfc3339(now), actor, None)
            self.items[key] = record
            return record


@dataclass
class Op:
    kind: str  # "reader" | "writer" | "deleter" | "patcher" | "wiper"
    index: int
    go: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    finished: bool = False
    started_at: int | None = None  # schedule position of its first step
    completed_at: int | None = None  # schedule position of its last step
    version: int | None = None  # what a read answered (0: not found) or a write committed (None: none)
    error: BaseException | None = None

    @property
    def steps(self) -> int:
        return STEPS[self.kind if self.kind in STEPS else "writer"]


class Scheduler:
    """Runs operations one step at a time in a given order, over real code, stopping them at failpoints."""

    def __init__(self, manager: StateManager, raw: Any = None) -> None:
        self.manager = manager
        self.raw = raw
        self.step_done = threading.Semaphore(0)
        self.local = threading.local()
        for point in POINTS:
            failpoints.arm(point, "call", self._yield)

    def _yield(self, name: str, **_: Any) -> None:
        op: Op | None = getattr(self.local, "op", None)
        if op is None:
            return
        self.step_done.release()
        op.go.acquire()

    def _run(self, op: Op, key: str) -> None:
        self.local.op = op
        op.go.acquire()
        try:
            if op.kind == "reader":
                try:
                    op.version = self.manager.get(key).record.version
                except NotFound:
                    op.version = 0
            elif op.kind == "wiper":
                self.raw.delete(entry_key(key))
            elif op.kind == "writer":
                op.version = self.manager.put(key, {"by": op.index}, actor="w").record.version
            elif op.kind == "patcher":
                try:
                    op.version = self.manager.patch(key, {"by": op.index}, actor="p")[0].record.version
                except NotFound:
                    op.version = None  # a delete came first: nothing written
            else:
                op.version = self.manager.delete(key, actor="w").version
        except BaseException as exc:
            op.error = exc
        finally:
            op.finished = True
            self.step_done.release()

    def run(self, ops: list[Op], schedule: tuple[int, ...], key: str) -> None:
        threads = [threading.Thread(target=self._run, args=(op, key), daemon=True) for op in ops]
        for thread in threads:
            thread.start()
        for position, which in enumerate(schedule):
            op = ops[which]
            if op.finished:
                continue  # a reader that hit the cache: its later steps pass
            if op.started_at is None:
                op.started_at = position
            op.go.release()
            if not self.step_done.acquire(timeout=10):
                raise AssertionError(f"operation {which} did not finish its step in schedule {schedule}")
            if op.finished:
                op.completed_at = position
        extra = len(schedule)
        for op in ops:  # a patcher that lost the version race: its retry's steps
            while not op.finished:
                op.go.release()
                if not self.step_done.acquire(timeout=10):
                    raise AssertionError(f"operation {op.index} did not finish its retry in schedule {schedule}")
                extra += 1
                if op.finished:
                    op.completed_at = extra
        for thread in threads:
            thread.join(timeout=10)
        assert all(op.finished for op in ops), schedule


def schedules(counts: list[int]) -> list[tuple[int, ...]]:
    """Every distinct order of the operations' steps (multiset permutations)."""
    found: list[tuple[int, ...]] = []

    def extend(prefix: list[int], left: list[int]) -> None:
        if not any(left):
            found.append(tuple(prefix))
            return
        for which, remaining in enumerate(left):
            if remaining:
                left[which] -= 1
                prefix.append(which)
                extend(prefix, left)
                prefix.pop()
                left[which] += 1

    extend([], list(counts))
    return found


def sampled_schedules(counts: list[int], size: int, rng: random.Random) -> list[tuple[int, ...]]:
    """`size` distinct orders drawn uniformly, without listing them all (151,200 take seconds to list)."""
    steps = [which for which, count in enumerate(counts) for _ in range(count)]
    found: dict[tuple[int, ...], None] = {}
    while len(found) < size:
        rng.shuffle(steps)
        found.setdefault(tuple(steps))
    return list(found)


@dataclass
class Outcome:
    schedules: int = 0
    stale_cache: list[str] = field(default_factory=list)
    stale_reads: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check_all(store: Any, redis_url: str, kinds: list[str], orders: list[tuple[int, ...]], initial: str) -> Outcome:
    """Run each schedule on a fresh key; `initial` is "empty" (key at v1, nothing cached) or "cached"
    (key at v1, cache holds v1)."""
    link = RedisLink(
        connect(redis_url, password=None, timeout_seconds=2.0),
        CircuitBreaker(open_seconds=1.0),
        on_error=lambda: None,
        signing_key=SIGNING_KEY,
    )
    cache = RedisStateCache(link, NoMetrics(), clock=utc_now, policy=CachePolicy())
    manager = StateManager(store, clock=utc_now, metrics=NoMetrics(), cache=cache)
    raw = redis.Redis.from_url(redis_url)
    scheduler = Scheduler(manager, raw)
    outcome = Outcome()
    started = time.monotonic()
    prefix = uuid.uuid4().hex[:8]
    for number, schedule in enumerate(orders):
        key = f"il:{prefix}:{number}"
        first = store.write(key, StoredValue.encode(b'{"by":-1}'), actor="setup", now=utc_now(),
                            precondition=Precondition.NOT_EXPIRED)  # fmt: skip
        if initial == "cached":
            # A read's miss and fill: a write-through alone leaves only a fence where nothing is cached.
            assert cache.get(key) is None
            assert cache.fill(CacheEntry(first.record))
        ops = [Op(kind, index) for index, kind in enumerate(kinds)]
        scheduler.run(ops, schedule, key)
        errors = [op.error for op in ops if op.error is not None]
        assert not errors, (schedule, errors)
        newest = store.get(key)
        cached = raw.hget(entry_key(key), "v")
        if "wiper" in kinds and (cached is None or int(cached) < newest.version):
            # An evicted entry may stay gone, or come back as an older version's fence (a write-through that
            # landed after the eviction): both are misses to readers, who fill the newest version. What
            # must never come back is an older value or tombstone.
            fields = raw.hgetall(entry_key(key))
            served = b"d" in fields or b'"deleted":true' in fields.get(b"m", b"")
            if served:
                outcome.stale_cache.append(f"{schedule}: cache serves v{cached!r}, committed v{newest.version}")
        elif cached is None or int(cached) < newest.version:
            outcome.stale_cache.append(f"{schedule}: cache {cached!r}, committed v{newest.version}")
        for reader in (op for op in ops if op.kind == "reader"):
            acked = [
                w.version
                for w in ops
                if w.kind in WRITES and w.version is not None and w.completed_at < reader.started_at
            ]
            floor = max(acked, default=first.record.version)
            # NotFound (0) is the tombstone a delete at or above the floor committed.
            deleted = [w.version for w in ops if w.kind == "deleter" and w.version >= floor]
            if reader.version < floor and not (reader.version == 0 and deleted):
                outcome.stale_reads.append(f"{schedule}: read v{reader.version} after v{floor} was acknowledged")
        outcome.schedules += 1
    outcome.seconds = time.monotonic() - started
    return outcome


@pytest.fixture
def armed(monkeypatch):
    monkeypatch.setenv("STATE_FAILPOINTS", "1")
    yield
    failpoints.disarm()


@pytest.fixture(scope="module")
def moto_store(state_table):
    return StateStore(boto3.client("dynamodb", config=DYNAMODB_CONFIG), state_table)


def report(label: str, outcome: Outcome) -> None:
    print(f"\n{label}: {outcome.schedules} schedules in {outcome.seconds:.1f} s, "
          f"{len(outcome.stale_cache)} stale caches, {len(outcome.stale_reads)} stale reads")  # fmt: skip


def test_the_schedule_counts_are_the_multinomials():
    assert len(schedules([3, 2, 2])) == 210
    assert len(set(schedules([3, 2, 2]))) == 210
    if VERIFY:
        assert len(schedules([3, 3, 2, 2])) == 25_200


WRITER_PAIRS = [("writer", "writer"), ("writer", "deleter")]


@pytest.mark.parametrize("initial", ["empty", "cached"])
@pytest.mark.parametrize("writers", WRITER_PAIRS)
def test_one_reader_and_two_writers_in_all_210_orders(armed, redis_server, initial, writers):
    outcome = check_all(VersionedDict(), redis_server.url, ["reader", *writers], schedules([3, 2, 2]), initial)
    report(f"1 reader + {'/'.join(writers)} ({initial} cache, versioned dict)", outcome)
    assert outcome.schedules == 210
    assert outcome.stale_cache == []
    assert outcome.stale_reads == []


@pytest.mark.parametrize(
    ("initial", "writers"),
    [(initial, writers) for initial in ("empty", "cached") for writers in WRITER_PAIRS if VERIFY]
    or [("empty", ("writer", "deleter"))],
)
def test_one_reader_and_two_writers_in_all_210_orders_against_moto(armed, moto_store, redis_server, initial, writers):
    """The same with the real StateStore on the serialized moto server (one variant in make test, about
    20 s; all four in make verify)."""
    outcome = check_all(moto_store, redis_server.url, ["reader", *writers], schedules([3, 2, 2]), initial)
    report(f"1 reader + {'/'.join(writers)} ({initial} cache, moto)", outcome)
    assert outcome.schedules == 210
    assert outcome.stale_cache == []
    assert outcome.stale_reads == []


@pytest.mark.parametrize("initial", ["empty", "cached"])
@pytest.mark.parametrize("writers", WRITER_PAIRS)
def test_one_reader_two_writers_and_an_eviction_in_all_1680_orders(armed, redis_server, initial, writers):
    """The same with the entry evicted at any point: a fill or a write-through that read or wrote an older
    version never lands where the newer entry was."""
    orders = schedules([3, 2, 2, 1])
    assert len(orders) == 1680
    outcome = check_all(VersionedDict(), redis_server.url, ["reader", *writers, "wiper"], orders, initial)
    report(f"1 reader + {'/'.join(writers)} + eviction ({initial} cache, versioned dict)", outcome)
    assert outcome.schedules == 1680
    assert outcome.stale_cache == []
    assert outcome.stale_reads == []


@pytest.mark.parametrize(
    ("initial", "writer"),
    [(initial, writer) for initial in ("empty", "cached") for writer in ("writer", "deleter") if VERIFY]
    or [("empty", "writer"), ("empty", "deleter")],
)
def test_one_reader_a_patcher_and_a_writer_in_all_1260_orders(armed, redis_server, initial, writer):
    """A PATCH's write-through claims the fill lease its own cache miss took, and so stores its value over a
    fence or nothing: never where another write came between its miss and its write-through. In make test the
    two variants that start with nothing cached, where the PATCH misses and claims (about 8 s); all four in
    make verify."""
    orders = schedules([3, 4, 2])
    assert len(orders) == 1260
    outcome = check_all(VersionedDict(), redis_server.url, ["reader", "patcher", writer], orders, initial)
    report(f"1 reader + patcher + {writer} ({initial} cache, versioned dict)", outcome)
    assert outcome.schedules == 1260
    assert outcome.stale_cache == []
    assert outcome.stale_reads == []


@pytest.mark.parametrize("initial", ["empty", "cached"])
def test_a_reader_two_patchers_a_writer_and_an_eviction_sampled(armed, redis_server, initial):
    """Two PATCHes that race on the version (the loser merges again and retries), a PUT and an eviction
    anywhere (all 151,200 orders are too many for any suite: 300 sampled, 3,000 in make verify)."""
    kinds = ["reader", "patcher", "patcher", "writer", "wiper"]
    orders = sampled_schedules([3, 4, 4, 2, 1], 3_000 if VERIFY else 300, random.Random(f"{SEED}-patchers-{initial}"))
    outcome = check_all(VersionedDict(), redis_server.url, kinds, orders, initial)
    report(f"1 reader + 2 patchers + writer + eviction ({initial} cache, versioned dict, sampled)", outcome)
    assert outcome.stale_cache == []
    assert outcome.stale_reads == []


@pytest.mark.parametrize("initial", ["empty", "cached"])
def test_two_readers_two_writers_and_an_eviction_sampled(armed, redis_server, initial):
    orders = random.Random(f"{SEED}-wipe-{initial}").sample(schedules([3, 3, 2, 2, 1]), 4_000 if VERIFY else 500)
    kinds = ["reader", "reader", "writer", "deleter", "wiper"]
    outcome = check_all(VersionedDict(), redis_server.url, kinds, orders, initial)
    report(f"2 readers + writer/deleter + eviction ({initial} cache, versioned dict, sampled)", outcome)
    assert outcome.stale_cache == []
    assert outcome.stale_reads == []


@pytest.mark.parametrize("initial", ["empty", "cached"])
def test_two_readers_and_two_writers_sampled_or_in_all_25200_orders(armed, redis_server, initial):
    orders = schedules([3, 3, 2, 2])
    assert len(orders) == 25_200
    if not VERIFY:
        orders = random.Random(f"{SEED}-{initial}").sample(orders, SAMPLE_2R2W // 2)
    outcome = check_all(VersionedDict(), redis_server.url, ["reader", "reader", "writer", "writer"], orders, initial)
    report(f"2 readers + 2 writers ({initial} cache, versioned dict)", outcome)
    assert outcome.schedules == len(orders)
    assert outcome.stale_cache == []
    assert outcome.stale_reads == []


@pytest.mark.skipif(not VERIFY, reason="make verify only: ~5 minutes against moto")
def test_two_readers_and_two_writers_sampled_against_moto(armed, moto_store, redis_server):
    orders = random.Random(f"{SEED}-moto").sample(schedules([3, 3, 2, 2]), SAMPLE_2R2W)
    outcome = check_all(moto_store, redis_server.url, ["reader", "reader", "writer", "deleter"], orders, "empty")
    report("2 readers + writer/deleter (empty cache, moto, sampled)", outcome)
    assert outcome.stale_cache == []
    assert outcome.stale_reads == []


def test_the_checker_notices_a_cache_without_the_version_fence(armed, redis_server, monkeypatch):
    """The check is not vacuous: with the compare step removed (plain overwrite), some order leaves the
    cache stale and some read older than an acknowledged write."""
    import state_core.cache.state_cache as cache_module

    unfenced = cache_module._WRITE_IF_NEWER.replace("cached and cached >= tonumber(ARGV[1])", "false")
    # ...and without the fill lease, which alone would refuse the late fill this check expects to catch.
    unfenced = unfenced.replace("ARGV[6] == 'fill' and redis.call", "false and redis.call")
    assert unfenced.count("false") >= 2
    monkeypatch.setattr(cache_module, "_WRITE_IF_NEWER", unfenced)
    # A cached start: over an empty cache write-throughs leave fences, which send the reader to DynamoDB.
    outcome = check_all(VersionedDict(), redis_server.url, ["reader", "writer", "writer"], schedules([3, 2, 2]),
                        "cached")  # fmt: skip
    assert outcome.stale_cache
    assert outcome.stale_reads


def test_the_checker_notices_a_patch_that_claims_a_lease_another_write_took(armed, redis_server, monkeypatch):
    """Not vacuous either: a claim that ignores whether its miss's lease is intact stores an older PATCH's
    value where a newer write's entry was evicted, and a reader is served it."""
    import state_core.cache.state_cache as cache_module

    # The patcher misses (taking the lease), reads v1 and writes v2; the writer's v3 and its write-through
    # (a fence over the fence: nothing cached yet) take the lease; the eviction; then the patcher's claim.
    order = (1, 1, 1, 2, 2, 3, 1, 0, 0, 0)
    kinds = ["reader", "patcher", "writer", "wiper"]
    assert sorted(order) == sorted(which for which, count in enumerate([3, 4, 2, 1]) for _ in range(count))
    assert check_all(VersionedDict(), redis_server.url, kinds, [order], "empty").stale_cache == []

    careless = cache_module._WRITE_IF_NEWER.replace(
        "local leased = ARGV[6] ~= 'through' and redis.call('GET', KEYS[2]) == ARGV[7]",
        "local leased = ARGV[6] == 'claim' or redis.call('GET', KEYS[2]) == ARGV[7]",
    )
    assert careless != cache_module._WRITE_IF_NEWER
    monkeypatch.setattr(cache_module, "_WRITE_IF_NEWER", careless)
    outcome = check_all(VersionedDict(), redis_server.url, kinds, [order], "empty")
    assert outcome.stale_cache
    assert outcome.stale_reads


def test_every_step_boundary_is_a_failpoint_the_manager_calls():
    assert list(itertools.chain(POINTS)) == [p for p in POINTS if p in failpoints.POINTS]
