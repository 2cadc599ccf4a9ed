"""POST /state:batchGet: the real handler in-process (moto server), and the bulk read in the core over a real
redis-server: every key answered as a single GET would answer it (cache hits, misses, fences, wiped entries,
slow fills, Redis down), snapshots as one point in time under concurrent writers, RBAC per key that never
reveals whether a key exists, bad input of every member, the answer's size limit and the audit record."""

from __future__ import annotations

import base64
import copy
import json
import logging
import secrets
import threading
import time
import uuid

import boto3
import pytest
from conftest import http_event, load_event

from state_core.api.batch import RESPONSE_BUDGET_BYTES, BatchItem, batch_get_body
from state_core.cache.breaker import CircuitBreaker
from state_core.cache.link import RedisLink, connect
from state_core.cache.state_cache import CachePolicy, RedisStateCache, entry_key
from state_core.domain.cached import CacheEntry
from state_core.domain.codec import StoredValue
from state_core.domain.errors import NotFound, PayloadTooLarge, ServiceUnavailable, StateError
from state_core.domain.records import StateRecord
from state_core.domain.writes import Precondition
from state_core.runtime import DYNAMODB_CONFIG
from state_core.security import audit
from state_core.service.manager import StateManager, StateView
from state_core.storage.state import StateStore
from tests.doubles import SIGNING_KEY, FailingService, RecordedMetrics, _Body, operation_of, utc_now

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
SECRET = "s3cret-value-never-logged"


def batch_event(body, *, scopes="state:read state:write", sub="alice", content_type="application/json", raw=None):
    event = copy.deepcopy(load_event("batch_get_state"))
    event["requestContext"]["requestId"] = uuid.uuid4().hex
    event["requestContext"]["authorizer"]["lambda"].update({"sub": sub, "scopes": scopes, "roles": "[]"})
    headers = {k: v for k, v in event["headers"].items() if k not in ("content-type", "content-length")}
    if content_type is not None:
        headers["content-type"] = content_type
    event["headers"] = headers
    event["body"] = raw if raw is not None else json.dumps(body)
    return event


def batch(invoke, body, **kwargs):
    response = invoke("batch_get_state", batch_event(body, **kwargs))
    return response, (json.loads(response["body"]) if response.get("body") else None)


def put(invoke, key, value, **kwargs):
    response = invoke("put_state", http_event("put", key, body={"value": value}, **kwargs))
    assert response["statusCode"] in (200, 201), response
    return response


def keys(count=3, prefix="user:alice"):
    return [f"{prefix}:{uuid.uuid4().hex}" for _ in range(count)]


class _Collect(logging.Handler):
    def __init__(self, formatter=None):
        super().__init__(level=logging.DEBUG)
        self.lines = []
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def audit_records():
    collector = _Collect(audit.audit_logger.registered_formatter)
    audit.audit_logger.addHandler(collector)
    yield lambda: [json.loads(line)["audit"] for line in collector.lines]
    audit.audit_logger.removeHandler(collector)


# -- the handler: answers per key, in order ------------------------------------------------------------


def test_each_key_is_answered_in_request_order_with_its_envelope_or_its_own_404(invoke):
    present, deleted, absent = keys()
    put(invoke, present, {"theme": "dark"})
    put(invoke, deleted, [1, 2])
    assert invoke("delete_state", http_event("delete", deleted))["statusCode"] == 204

    response, body = batch(invoke, {"keys": [absent, present, deleted]})

    assert response["statusCode"] == 200
    assert response["headers"]["Content-Type"] == "application/json"
    assert body["snapshot"] is False
    assert [item["key"] for item in body["items"]] == [absent, present, deleted]
    assert [item["status"] for item in body["items"]] == [404, 200, 404]
    found = body["items"][1]
    single = json.loads(invoke("get_state", http_event("get", present))["body"])
    assert {k: v for k, v in found.items() if k != "status"} == single
    assert body["items"][0]["problem"]["type"].endswith("/not-found")
    assert body["items"][0]["problem"]["status"] == 404
    assert "value" not in body["items"][0]


def test_an_expired_key_is_a_404_like_a_single_read(invoke):
    key = keys(1)[0]
    invoke("put_state", http_event("put", key, body={"value": 1, "ttl_seconds": 1}))
    assert json.loads(invoke("get_state", http_event("get", key))["body"])["value"] == 1
    time.sleep(1.2)  # past its expiry: decided at read time
    _, body = batch(invoke, {"keys": [key]})
    _, snap = batch(invoke, {"keys": [key], "snapshot": True})
    assert body["items"][0]["status"] == 404
    assert snap["items"][0]["status"] == 404


def test_a_snapshot_answers_the_same_envelopes_and_says_so(invoke):
    first, second, absent = keys()
    put(invoke, first, {"a": 1})
    put(invoke, second, "two")

    _, plain = batch(invoke, {"keys": [first, second, absent]})
    _, snap = batch(invoke, {"keys": [first, second, absent], "snapshot": True})
    _, consistent = batch(invoke, {"keys": [first, second, absent], "consistent": True})

    assert snap["snapshot"] is True
    assert snap["items"] == plain["items"] == consistent["items"]


def test_large_values_come_back_whole_in_plain_and_snapshot_reads(invoke):
    big, small = keys(2)
    value = {"blob": secrets.token_hex(400_000)}  # 800 KB of hex: stored as a blob even compressed
    put(invoke, big, value)
    put(invoke, small, 7)
    for snapshot in (False, True):
        _, body = batch(invoke, {"keys": [big, small], "snapshot": snapshot})
        assert body["items"][0]["value"] == value
        assert body["items"][1]["value"] == 7


# -- RBAC per key ------------------------------------------------------------------------------------------


def test_a_key_the_caller_may_not_read_is_a_403_that_never_says_whether_it_exists(invoke, audit_records):
    own = f"user:alice:{uuid.uuid4().hex}"
    bobs_existing, bobs_absent = f"user:bob:{uuid.uuid4().hex}", f"user:bob:{uuid.uuid4().hex}"
    put(invoke, own, 1)
    put(invoke, bobs_existing, {"secret": SECRET})
    scopes = "state:read:user:${sub}:*"

    response, body = batch(invoke, {"keys": [bobs_existing, own, bobs_absent]}, scopes=scopes)

    assert response["statusCode"] == 200
    existing, mine, absent = body["items"]
    assert mine["status"] == 200
    assert existing["status"] == absent["status"] == 403
    # Identical but for the key itself: nothing tells an existing key from an absent one.
    assert existing["problem"] == {
        **absent["problem"],
        "detail": absent["problem"]["detail"].replace(bobs_absent, bobs_existing),
    }
    assert set(existing) == set(absent) == {"key", "status", "problem"}
    assert SECRET not in response["body"]
    record = audit_records()[-1]
    assert record["action"] == "batch_get"
    assert record["permission"] == "state:read"
    assert record["decision"] == "allow"
    assert record["items"] == [
        {"key": bobs_existing, "status": 403, "version": None},
        {"key": own, "status": 200, "version": 1},
        {"key": bobs_absent, "status": 403, "version": None},
    ]


@pytest.mark.parametrize("snapshot", [False, True])
def test_a_key_the_caller_may_not_read_is_never_asked_of_the_table(invoke, snapshot):
    from state_core import runtime

    own, bobs = f"user:alice:{uuid.uuid4().hex}", f"user:bob:{uuid.uuid4().hex}"
    put(invoke, own, 1)
    put(invoke, bobs, 2)
    sent = []

    def record(request, **_):
        sent.append(request.body.decode() if isinstance(request.body, bytes) else str(request.body))

    client = runtime.dynamodb_client()
    client.meta.events.register("before-send.dynamodb", record)
    try:
        _, body = batch(invoke, {"keys": [bobs, own], "snapshot": snapshot}, scopes="state:read:user:${sub}:*")
    finally:
        client.meta.events.unregister("before-send.dynamodb", record)

    assert [item["status"] for item in body["items"]] == [403, 200]
    assert any(own in text for text in sent)
    assert not any(bobs in text for text in sent)


def test_a_caller_who_may_read_none_of_the_keys_gets_403_items_and_a_deny_record(invoke, audit_records):
    existing, absent = f"user:bob:{uuid.uuid4().hex}", f"user:bob:{uuid.uuid4().hex}"
    put(invoke, existing, 1)

    response, body = batch(invoke, {"keys": [existing, absent]}, scopes="state:read:user:${sub}:*")

    assert response["statusCode"] == 200
    assert [item["status"] for item in body["items"]] == [403, 403]
    assert audit_records()[-1]["decision"] == "deny"


def test_the_snapshot_read_checks_each_key_too(invoke):
    own, bobs = f"user:alice:{uuid.uuid4().hex}", f"user:bob:{uuid.uuid4().hex}"
    put(invoke, own, 1)
    put(invoke, bobs, 2)
    _, body = batch(invoke, {"keys": [own, bobs], "snapshot": True}, scopes="state:read:user:${sub}:*")
    assert [item["status"] for item in body["items"]] == [200, 403]


def test_an_unauthenticated_request_is_refused_as_a_whole(invoke):
    event = batch_event({"keys": keys(1)})
    event["requestContext"].pop("authorizer")
    response = invoke("batch_get_state", event)
    assert response["statusCode"] == 401


# -- bad input: every member -------------------------------------------------------------------------------

VALID = "user:alice:x"
BAD_BODIES = {
    "not json": (None, "{keys:", 400, "invalid-json"),
    "duplicate member names": (None, '{"keys":["a"],"keys":["b"]}', 400, "invalid-json"),
    "an array": ([VALID], None, 400, "bad-request"),
    "a string": ("keys", None, 400, "bad-request"),
    "null": (None, "null", 400, "bad-request"),
    "no keys": ({}, None, 400, "bad-request"),
    "keys not a list": ({"keys": VALID}, None, 400, "bad-request"),
    "keys an object": ({"keys": {VALID: 1}}, None, 400, "bad-request"),
    "no key at all": ({"keys": []}, None, 400, "bad-request"),
    "101 keys": ({"keys": [f"k{i}" for i in range(101)]}, None, 400, "bad-request"),
    "a key that is not a string": ({"keys": [VALID, 7]}, None, 400, "invalid-key"),
    "a null key": ({"keys": [None]}, None, 400, "invalid-key"),
    "an invalid key": ({"keys": [VALID, "a/b"]}, None, 400, "invalid-key"),
    "an empty key": ({"keys": [""]}, None, 400, "invalid-key"),
    "a key too long": ({"keys": ["a" * 257]}, None, 400, "invalid-key"),
    "a key with a newline": ({"keys": ["a\n"]}, None, 400, "invalid-key"),
    "a repeated key": ({"keys": [VALID, "user:alice:y", VALID]}, None, 400, "bad-request"),
    "snapshot not a boolean": ({"keys": [VALID], "snapshot": "true"}, None, 400, "bad-request"),
    "snapshot null": ({"keys": [VALID], "snapshot": None}, None, 400, "bad-request"),
    "snapshot a number": ({"keys": [VALID], "snapshot": 1}, None, 400, "bad-request"),
    "consistent not a boolean": ({"keys": [VALID], "consistent": "yes"}, None, 400, "bad-request"),
    "an unknown member": ({"keys": [VALID], "key": VALID}, None, 400, "bad-request"),
    "a write's member": ({"keys": [VALID], "value": SECRET}, None, 400, "bad-request"),
    "operations instead of keys": ({"operations": [{"op": "get", "key": VALID}]}, None, 400, "bad-request"),
    "a NaN": (None, '{"keys":["a"],"snapshot":NaN}', 400, "invalid-json"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_a_malformed_body_is_a_400_problem_naming_no_value_and_reading_nothing(invoke, audit_records, case):
    body, raw, status, slug = BAD_BODIES[case]
    response, problem = batch(invoke, body, raw=raw)

    assert response["statusCode"] == status, response
    assert response["headers"]["Content-Type"] == PROBLEM
    assert problem["type"].endswith("/" + slug)
    assert SECRET not in response["body"]
    record = audit_records()[-1]
    assert record["action"] == "batch_get"
    assert record["status"] == status
    assert record["items"] is None
    assert SECRET not in json.dumps(record)


def test_the_answer_never_grows_with_what_was_sent():
    from state_core.api.batch import parse_batch_get_body
    from state_core.domain.errors import BadRequest

    with pytest.raises(BadRequest) as refused:
        parse_batch_get_body({"keys": ["a"], **{f"{'x' * 1000}{i}": 1 for i in range(50)}})
    assert len(refused.value.detail) < 400


def test_a_body_that_is_not_json_by_its_media_type_is_415(invoke):
    response, problem = batch(invoke, {"keys": [VALID]}, content_type="text/plain")
    assert response["statusCode"] == 415
    assert problem["type"].endswith("/unsupported-media-type")


def test_an_oversized_body_is_413_before_it_is_parsed(invoke):
    response, problem = batch(invoke, None, raw='{"keys":["' + "a" * 2_000_000 + '"]}')
    assert response["statusCode"] == 413
    assert problem["type"].endswith("/payload-too-large")


def test_a_base64_body_is_read_like_any_other(invoke):
    key = keys(1)[0]
    put(invoke, key, 5)
    event = batch_event({"keys": [key]})
    event["body"] = base64.b64encode(event["body"].encode()).decode()
    event["isBase64Encoded"] = True
    body = json.loads(invoke("batch_get_state", event)["body"])
    assert body["items"][0]["value"] == 5


# -- the answer's size limit -------------------------------------------------------------------------------


def test_values_past_the_lambda_answer_limit_are_omitted_in_request_order_and_marked(invoke):
    """Seven values of ~1 MiB each (incompressible, so blobs) do not fit Lambda's 6 MB answer: those that do
    come back whole, the rest as their envelope with value_omitted and the version to fetch."""
    ids = keys(7)
    values = {}
    for key in ids:
        values[key] = secrets.token_urlsafe(700_000)  # ~933 KB of JSON string
        put(invoke, key, values[key])

    response, body = batch(invoke, {"keys": ids})

    assert len(json.dumps(response)) <= 6_291_456  # what Lambda would carry
    assert len(json.dumps(response["body"])) <= RESPONSE_BUDGET_BYTES
    statuses = [("value" in item, item.get("value_omitted", False)) for item in body["items"]]
    assert statuses == [(True, False)] * 6 + [(False, True)]
    for item in body["items"][:6]:
        assert item["value"] == values[item["key"]]
    assert body["items"][6]["version"] == 1
    assert body["items"][6]["status"] == 200


def test_the_size_budget_counts_the_escaped_body_and_keeps_later_values_that_fit():
    def view(key, canonical):
        return StateView(StateRecord(key, 1, False, None, "t", "t", "alice", None), canonical)

    quotes = b'"' + b'\\"' * 300 + b'"'  # escaped twice over inside Lambda's answer
    items = [
        BatchItem("a", view("a", b"1")),
        BatchItem("b", view("b", quotes)),
        BatchItem("c", NotFound("key c does not exist")),
        BatchItem("d", view("d", b"[1,2]")),
    ]
    full = batch_get_body(items, snapshot=False)
    assert full.omitted == 0
    budget = len(json.dumps(full.body)) - 2 - 100
    answer = batch_get_body(items, snapshot=False, budget=budget)
    body = json.loads(answer.body)
    assert answer.omitted == 1
    assert [("value" in item, item.get("value_omitted")) for item in body["items"]] == [
        (True, None),
        (False, True),
        (False, None),
        (True, None),
    ]
    assert len(json.dumps(answer.body)) - 2 <= budget + 40


# -- the bulk read over a real Redis -----------------------------------------------------------------------


class Container:
    """One function container: its own Redis link and StateManager over the real store."""

    def __init__(self, redis_url, table, *, store=None, timeout=0.05):
        self.metrics = RecordedMetrics()
        self.link = RedisLink(
            connect(redis_url, password=None, timeout_seconds=timeout),
            CircuitBreaker(),
            on_error=lambda: None,
            signing_key=SIGNING_KEY,
        )
        self.cache = RedisStateCache(self.link, self.metrics, clock=utc_now, policy=CachePolicy())
        self.store = store or StateStore(boto3.client("dynamodb", config=DYNAMODB_CONFIG), table)
        self.manager = StateManager(self.store, clock=utc_now, metrics=self.metrics, cache=self.cache)


def values_of(answers):
    return [None if isinstance(answer, StateError) else json.loads(answer.canonical_value) for answer in answers]


class CountingStore:
    """The real store, counting the reads the manager asks of it."""

    def __init__(self, store):
        self._store = store
        self.batch_reads = []
        self.held = None

    def __getattr__(self, name):
        return getattr(self._store, name)

    def get_many(self, keys):
        self.batch_reads.append(list(keys))
        found = self._store.get_many(keys)
        if self.held is not None and threading.current_thread().name == "slow-reader":
            self.held[0].set()
            assert self.held[1].wait(10)
        return found


def test_hits_are_served_from_the_cache_and_only_misses_read_the_table(redis_server, state_table):
    writer = Container(redis_server.url, state_table)
    counting = CountingStore(writer.store)
    reader = Container(redis_server.url, state_table, store=counting)
    cached, uncached, absent = keys()
    writer.manager.put(cached, "c", actor="alice")
    writer.manager.put(uncached, "u", actor="alice")
    reader.manager.get(cached)  # filled

    answers = reader.manager.get_many([cached, uncached, absent])

    assert values_of(answers) == ["c", "u", None]
    assert isinstance(answers[2], NotFound)
    assert counting.batch_reads == [[uncached, absent]]
    # The misses filled their entries, as a single GET's miss does: the next bulk read is all hits.
    counting.batch_reads.clear()
    assert values_of(reader.manager.get_many([cached, uncached, absent])) == ["c", "u", None]
    assert counting.batch_reads == []


def test_a_bulk_read_never_answers_older_than_a_write_acknowledged_before_it(redis_server, state_table, raw_redis):
    writer = Container(redis_server.url, state_table)
    reader = Container(redis_server.url, state_table)
    plain, fenced, wiped = keys()
    for key in (plain, fenced, wiped):
        writer.manager.put(key, "v1", actor="alice")
    assert values_of(reader.manager.get_many([plain, fenced, wiped])) == ["v1"] * 3  # all cached now

    writer.manager.put(plain, "v2", actor="alice")  # a write-through over the cached entry
    # What the stream's repair leaves for a write whose write-through did not land: a fence.
    written = writer.store.write(
        fenced, StoredValue.encode(b'"v2"'), actor="alice", now=utc_now(), precondition=Precondition.NOT_EXPIRED
    )
    writer.cache.repair(CacheEntry(written.record))
    writer.manager.put(wiped, "v2", actor="alice")
    raw_redis.delete(entry_key(wiped))  # evicted

    assert values_of(reader.manager.get_many([plain, fenced, wiped])) == ["v2"] * 3


def test_a_slow_bulk_fill_never_lands_where_a_newer_entry_was_wiped(redis_server, state_table, raw_redis):
    writer = Container(redis_server.url, state_table)
    key, other = keys(2)
    writer.manager.put(key, "v1", actor="alice")
    writer.manager.put(other, "o", actor="alice")
    slow = CountingStore(writer.store)
    reached, release = threading.Event(), threading.Event()
    slow.held = (reached, release)
    reader = Container(redis_server.url, state_table, store=slow)
    thread = threading.Thread(target=lambda: reader.manager.get_many([key, other]), name="slow-reader", daemon=True)
    thread.start()
    assert reached.wait(10)  # the reader missed both and holds version 1 from DynamoDB

    writer.manager.put(key, "v2", actor="alice")  # acknowledged
    writer.manager.get(key)  # version 2 cached with its value
    raw_redis.delete(entry_key(key))  # and evicted
    release.set()
    thread.join(10)

    # A read begun after version 2 was acknowledged never answers version 1.
    assert values_of(Container(redis_server.url, state_table).manager.get_many([key, other])) == ["v2", "o"]


@pytest.mark.parametrize("fault", ["stopped", "paused"])
def test_with_redis_down_every_key_is_read_from_the_table(state_table, fault):
    from devstack.redis_server import RedisServer

    server = RedisServer().start()
    try:
        writer = Container(server.url, state_table)
        present, absent = keys(2)
        writer.manager.put(present, "p", actor="alice")
        reader = Container(server.url, state_table)
        reader.manager.get(present)
        if fault == "stopped":
            server.stop()
        else:
            server.pause()
        answers = reader.manager.get_many([present, absent])
        assert values_of(answers) == ["p", None]
        assert reader.metrics.count("CacheErrors") >= 1
        if fault == "paused":
            server.resume()
    finally:
        server.stop()


def test_a_snapshot_neither_reads_nor_fills_the_cache(redis_server, state_table, raw_redis):
    container = Container(redis_server.url, state_table)
    key = keys(1)[0]
    container.manager.put(key, 1, actor="alice")
    raw_redis.delete(entry_key(key))
    assert values_of(container.manager.get_many([key], snapshot=True)) == [1]
    assert not raw_redis.exists(entry_key(key))


def test_a_snapshot_reads_up_to_100_keys_in_one_transaction(invoke):
    ids = keys(100)
    for key in ids[::2]:
        put(invoke, key, key)

    _, body = batch(invoke, {"keys": ids, "snapshot": True})

    assert [item["status"] for item in body["items"]] == [200, 404] * 50
    assert [item["value"] for item in body["items"][::2]] == ids[::2]


# -- snapshots under concurrent writers ------------------------------------------------------------------


@pytest.mark.parametrize("large", [False, True], ids=["inline", "blobs"])
def test_a_snapshot_is_one_point_in_time_under_concurrent_writers(redis_server, state_table, large):
    """A writer counts up, writing n to `first` and then, once acknowledged, n to `second`: at any one moment
    first - second is 0 or 1. Readers ask for `second` before `first`, so reads taken one after the other
    would see second ahead of first; a snapshot never does."""
    writer = Container(redis_server.url, state_table)
    first, second = keys(2)
    # Large: ~600 KB of random base64, over the inline limit even compressed, so every version is a blob.
    padding = secrets.token_urlsafe(450_000) if large else ""
    writer.manager.put(first, {"n": 0, "pad": padding}, actor="alice")
    writer.manager.put(second, {"n": 0, "pad": padding}, actor="alice")
    stop = threading.Event()
    errors = []

    written = [0]

    def write():
        try:
            while not stop.is_set():
                n = written[0] + 1
                writer.manager.put(first, {"n": n, "pad": padding}, actor="alice")
                writer.manager.put(second, {"n": n, "pad": padding}, actor="alice")
                written[0] = n
        except Exception as exc:
            errors.append(exc)
            raise

    def read():
        reader = Container(redis_server.url, state_table)
        for _ in range(15 if large else 40):
            views = reader.manager.get_many([second, first], snapshot=True)
            s, f = (json.loads(view.canonical_value) for view in views)
            if not 0 <= f["n"] - s["n"] <= 1 or f["pad"] != padding or s["pad"] != padding:
                errors.append((f["n"], s["n"]))

    threads = [threading.Thread(target=write, daemon=True)] + [
        threading.Thread(target=read, daemon=True) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join(120)
    stop.set()
    threads[0].join(30)
    assert errors == []
    assert written[0] >= 3  # the readers overlapped the writer's progress


# -- DynamoDB's partial answers: UnprocessedKeys, cancelled transactions, the 4 MB cap ---------------------


class Unprocessed:
    """A `before-send` hook standing in for a throttled DynamoDB: the first `count` BatchGetItem calls read
    nothing and hand every key back as UnprocessedKeys (the table itself is never asked)."""

    def __init__(self, count):
        self.count, self.calls = count, 0

    def __call__(self, request, **_):
        from botocore.awsrequest import AWSResponse

        if operation_of(request) != "BatchGetItem":
            return None
        self.calls += 1
        if self.calls > self.count:
            return None
        asked = json.loads(request.body)["RequestItems"]
        body = json.dumps({"Responses": {name: [] for name in asked}, "UnprocessedKeys": asked}).encode()
        return AWSResponse(request.url, 200, {"Content-Type": "application/x-amz-json-1.0"}, _Body(body))


def own_store(state_table, hook=None, operation="BatchGetItem"):
    client = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
    if hook is not None:
        client.meta.events.register(f"before-send.dynamodb.{operation}", hook)
    return StateStore(client, state_table)


def test_unprocessed_keys_are_asked_for_again(state_table):
    writer = own_store(state_table)
    first, second = keys(2)
    for key in (first, second):
        writer.write(key, StoredValue.encode(b'"x"'), actor="alice", now=utc_now(), precondition=Precondition.GONE)
    throttled = Unprocessed(count=2)

    found = own_store(state_table, throttled).get_many([first, second, "absent:key"])

    assert sorted(found) == sorted([first, second])
    assert throttled.calls == 3


def test_keys_left_unprocessed_every_time_are_a_503_not_a_404(state_table):
    key = keys(1)[0]
    own_store(state_table).write(
        key, StoredValue.encode(b"1"), actor="alice", now=utc_now(), precondition=Precondition.GONE
    )
    with pytest.raises(ServiceUnavailable):
        own_store(state_table, Unprocessed(count=100)).get_many([key])


def test_a_snapshot_cancelled_by_a_write_in_flight_is_tried_again_then_503(state_table):
    key = keys(1)[0]
    own_store(state_table).write(
        key, StoredValue.encode(b"1"), actor="alice", now=utc_now(), precondition=Precondition.GONE
    )
    conflicts = FailingService(status=400, code="TransactionCanceledException")
    passing = CountedPassage(conflicts, count=2)
    assert own_store(state_table, passing, "TransactGetItems").snapshot([key])[key].version == 1
    assert conflicts.attempts == 2

    with pytest.raises(ServiceUnavailable):
        own_store(state_table, FailingService(400, "TransactionCanceledException"), "TransactGetItems").snapshot([key])


def test_a_snapshot_over_dynamodbs_4_mb_transaction_cap_is_413(state_table):
    """DynamoDB refuses a TransactGetItems whose items exceed 4 MB with a ValidationException (the emulator
    does not enforce the cap, so DynamoDB's answer is given at the network's edge)."""
    key = keys(1)[0]
    with pytest.raises(PayloadTooLarge):
        own_store(state_table, FailingService(400, "ValidationException"), "TransactGetItems").snapshot([key])


class CountedPassage:
    """Lets `hook` answer the first `count` calls, then lets requests through to the table."""

    def __init__(self, hook, count):
        self.hook, self.count = hook, count

    def __call__(self, request, **kwargs):
        if self.hook.attempts >= self.count:
            return None
        return self.hook(request, **kwargs)
