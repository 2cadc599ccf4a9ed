"""Round trips per operation through the core, which set the latency floor: Redis round trips (commands sent
together in one pipeline count once) and DynamoDB API calls, counted on the real clients against a real
redis-server and the serialized moto server. Counts are taken in steady state: scripts already loaded,
connection open."""

import threading
import uuid

import boto3
import pytest
import redis
from conftest import http_event

from state_core.cache.breaker import CircuitBreaker
from state_core.cache.link import RedisLink
from state_core.cache.lock import LockPolicy, RedisKeyLock
from state_core.cache.state_cache import CachePolicy, RedisStateCache, entry_key
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import StateManager
from state_core.storage.state import StateStore
from tests.doubles import SIGNING_KEY, NoMetrics, utc_now

pytestmark = pytest.mark.integration


class RoundTrips:
    """What the clients sent: one list of Redis command names per round trip, DynamoDB operation names."""

    def __init__(self):
        self.redis: list[list[str]] = []
        self.dynamodb: list[str] = []
        self._lock = threading.Lock()

    def reset(self):
        with self._lock:
            self.redis, self.dynamodb = [], []

    def sent(self, names):
        with self._lock:
            self.redis.append(names)

    def dynamodb_call(self, model, **_):
        with self._lock:
            self.dynamodb.append(model.name)


def command_names(packed):
    """The command name of each RESP array in one packed send."""
    data = b"".join(packed) if isinstance(packed, list | tuple) else packed
    names, position = [], 0
    while position < len(data):
        assert data[position : position + 1] == b"*"
        end = data.index(b"\r\n", position)
        count, position = int(data[position + 1 : end]), end + 2
        for index in range(count):
            end = data.index(b"\r\n", position)
            length = int(data[position + 1 : end])
            argument = data[end + 2 : end + 2 + length]
            position = end + 2 + length + 2
            if index == 0:
                names.append(argument.decode().upper())
    return names


def counting_connection(recorder):
    """A redis-py connection class that records each send (one round trip: a pipeline's commands are
    packed together and sent once) with the names of the commands in it."""

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command, check_health=True):
            recorder.sent(command_names(command))
            return super().send_packed_command(command, check_health)

    return CountingConnection


@pytest.fixture
def trips():
    return RoundTrips()


@pytest.fixture
def manager(trips, redis_server, state_table):
    client = redis.Redis.from_url(
        redis_server.url,
        socket_timeout=1,
        socket_connect_timeout=1,
        connection_class=counting_connection(trips),
    )
    link = RedisLink(client, CircuitBreaker(), on_error=lambda: None, signing_key=SIGNING_KEY)
    dynamodb = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
    dynamodb.meta.events.register("before-call.dynamodb", trips.dynamodb_call)
    manager = StateManager(
        StateStore(dynamodb, state_table),
        clock=utc_now,
        metrics=NoMetrics(),
        cache=RedisStateCache(link, NoMetrics(), clock=utc_now, policy=CachePolicy()),
        lock=RedisKeyLock(link, NoMetrics(), LockPolicy()),
    )
    # Steady state: the connection is open and both scripts (write-if-newer, release) are loaded.
    warm_up = f"trips:{uuid.uuid4().hex}"
    manager.put(warm_up, {"n": 0}, actor="alice")
    manager.patch(warm_up, {"n": 1}, actor="alice")
    trips.reset()
    return manager


@pytest.fixture
def key():
    return f"trips:{uuid.uuid4().hex}"


def test_a_cache_hit_get_is_one_redis_round_trip_and_no_dynamodb_call(manager, trips, key):
    manager.put(key, {"a": 1}, actor="alice")
    manager.get(key)  # fills the fence the first write-through of an uncached key leaves
    trips.reset()

    manager.get(key)

    assert trips.redis == [["EVALSHA"]]
    assert trips.dynamodb == []


def test_a_cache_miss_get_is_a_redis_read_one_dynamodb_read_and_a_redis_fill(manager, trips, key, raw_redis):
    manager.put(key, {"a": 1}, actor="alice")
    raw_redis.delete(entry_key(key))
    trips.reset()

    manager.get(key)

    assert trips.redis == [["EVALSHA"], ["EVALSHA"]]
    assert trips.dynamodb == ["GetItem"]


def test_a_put_is_one_dynamodb_write_and_one_redis_write_through(manager, trips, key):
    manager.put(key, {"a": 1}, actor="alice")

    assert trips.dynamodb == ["UpdateItem"]
    assert trips.redis == [["EVALSHA"]]


def test_a_delete_is_one_dynamodb_write_and_one_redis_tombstone(manager, trips, key):
    manager.put(key, {"a": 1}, actor="alice")
    trips.reset()

    manager.delete(key, actor="alice")

    assert trips.dynamodb == ["UpdateItem"]
    assert trips.redis == [["EVALSHA"]]


def test_an_uncontended_patch_pipelines_lock_with_read_and_write_through_with_unlock(manager, trips, key):
    manager.put(key, {"a": 1}, actor="alice")
    manager.get(key)  # fills the fence the first write-through of an uncached key leaves
    trips.reset()

    manager.patch(key, {"b": 2}, actor="alice")

    # Round trip 1: the lock's enter script (take it, or queue) + the bounded read (a script); round
    # trip 2: write-if-newer + the release (compare, hand over or delete).
    assert trips.redis == [["EVALSHA", "EVALSHA"], ["EVALSHA", "EVALSHA"]]
    # The cached version saves the DynamoDB read; the conditional write is the only call.
    assert trips.dynamodb == ["UpdateItem"]


def test_a_patch_with_a_cold_cache_reads_dynamodb_once_and_still_takes_two_redis_round_trips(
    manager, trips, key, raw_redis
):
    manager.put(key, {"a": 1}, actor="alice")
    raw_redis.delete(entry_key(key))
    trips.reset()

    manager.patch(key, {"b": 2}, actor="alice")

    assert trips.redis == [["EVALSHA", "EVALSHA"], ["EVALSHA", "EVALSHA"]]
    assert trips.dynamodb == ["GetItem", "UpdateItem"]


def test_a_patch_of_a_key_whose_entry_is_a_fence_caches_its_value_so_the_next_patch_reads_nothing(
    manager, trips, key, raw_redis
):
    # The first write-through of an uncached key leaves a fence (a version without its value). The PATCH
    # that misses on it reads DynamoDB once; its write-through claims the fill lease its miss took, so the
    # next PATCH hits: a key written only by PATCHes does not read DynamoDB inside the lock every time.
    manager.put(key, {"a": 1}, actor="alice")
    assert raw_redis.hexists(entry_key(key), "d") == 0
    trips.reset()

    manager.patch(key, {"b": 2}, actor="alice")
    assert trips.dynamodb == ["GetItem", "UpdateItem"]
    assert trips.redis == [["EVALSHA", "EVALSHA"], ["EVALSHA", "EVALSHA"]]
    assert int(raw_redis.hget(entry_key(key), "v")) == 2
    assert raw_redis.hexists(entry_key(key), "d") == 1
    trips.reset()

    manager.patch(key, {"c": 3}, actor="alice")
    assert trips.dynamodb == ["UpdateItem"]
    assert manager.get(key).record.version == 3


def test_a_patch_after_redis_lost_its_scripts_loads_them_once_then_is_back_to_two_round_trips(
    manager, trips, key, raw_redis
):
    manager.put(key, {"a": 1}, actor="alice")
    raw_redis.script_flush()
    trips.reset()

    manager.patch(key, {"b": 2}, actor="alice")
    first = trips.redis
    trips.reset()
    view_version = manager.patch(key, {"c": 3}, actor="alice")[0].record.version

    # NOSCRIPT costs the load of the four scripts (the lock's two, the cache's two) and one resend, once.
    assert first == [
        ["EVALSHA", "EVALSHA"],
        ["SCRIPT"],
        ["SCRIPT"],
        ["SCRIPT"],
        ["SCRIPT"],
        ["EVALSHA", "EVALSHA"],
        ["EVALSHA", "EVALSHA"],
    ]
    assert trips.redis == [["EVALSHA", "EVALSHA"], ["EVALSHA", "EVALSHA"]]
    # The resend wrote the entry and released the lock.
    assert int(raw_redis.hget(entry_key(key), "v")) == view_version == 3
    assert raw_redis.exists(f"lk:{{{key}}}") == 0


@pytest.fixture
def deployed_calls(invoke):
    """The DynamoDB calls of the functions as runtime.py wires them (the history store included), counted on
    the runtime's own client; here without Redis, so a PATCH reads the key from DynamoDB."""
    from state_core import runtime

    invoke("get_state", http_event("get", f"trips:{uuid.uuid4().hex}"))  # builds the runtime's client
    calls = RoundTrips()
    events = runtime.dynamodb_client().meta.events
    events.register("before-call.dynamodb", calls.dynamodb_call)
    yield calls
    events.unregister("before-call.dynamodb", calls.dynamodb_call)


def besides_schema_lookup(calls: list[str]) -> list[str]:
    """The calls but the write's value schema lookup: one Query of the registry's partition, made by a container
    at most once per 5 s (service/schemas.py), so a write may or may not make it."""
    assert calls.count("Query") <= 1, calls
    return [call for call in calls if call != "Query"]


def test_each_write_of_the_deployed_functions_writes_one_dynamodb_item(invoke, deployed_calls, key):
    # The history item of each version comes from the stream (publish_changes), never from the request path.
    assert invoke("put_state", http_event("put", key, body={"value": {"a": 1}}))["statusCode"] == 201
    assert besides_schema_lookup(deployed_calls.dynamodb) == ["UpdateItem"]
    deployed_calls.reset()

    assert invoke("patch_state", http_event("patch", key, body={"b": 2}))["statusCode"] == 200
    assert besides_schema_lookup(deployed_calls.dynamodb) == ["GetItem", "UpdateItem"]
    deployed_calls.reset()

    assert invoke("delete_state", http_event("delete", key))["statusCode"] == 204
    assert deployed_calls.dynamodb == ["UpdateItem"]  # a delete checks no schema
