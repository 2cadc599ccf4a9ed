"""GET /state?prefix=: the real list_state handler against the serialized moto server, with the real table
(its ListIndex from template.yaml), the real put/delete handlers writing the keys, and a real Secrets Manager
secret for the cursors' key. Each test lists under a prefix of its own, so they share the table."""

from __future__ import annotations

import base64
import copy
import json
import random
import threading
import time
import uuid

import pytest
from conftest import http_event, load_event

from state_core import runtime
from state_core.domain.listing import LIST_SHARDS
from state_core.security import audit

pytestmark = pytest.mark.integration

SECRET_VALUE = "listed-value-never-logged"


@pytest.fixture(scope="module", autouse=True)
def cursor_key(handler_environment, moto_server):
    """The cursors' signing key in moto's Secrets Manager, named to the handler as deployed (by ARN)."""
    import os

    import boto3

    manager = boto3.client("secretsmanager", endpoint_url=moto_server, region_name="us-east-1")
    arn = manager.create_secret(Name=f"list-cursor-{uuid.uuid4().hex}", SecretString=uuid.uuid4().hex * 2)["ARN"]
    os.environ["STATE_LIST_CURSOR_SECRET_ARN"] = arn
    runtime.service_settings.cache_clear()
    runtime.key_lister.cache_clear()
    yield arn
    os.environ.pop("STATE_LIST_CURSOR_SECRET_ARN", None)
    runtime.service_settings.cache_clear()
    runtime.key_lister.cache_clear()


@pytest.fixture
def prefix():
    return f"lt{uuid.uuid4().hex[:10]}:"


def list_event(query=None, *, sub="alice", scopes="state:read", roles="[]"):
    event = copy.deepcopy(load_event("list_state"))
    event["requestContext"]["requestId"] = uuid.uuid4().hex
    event["queryStringParameters"] = query or None
    event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in (query or {}).items())
    event["requestContext"]["authorizer"] = {"lambda": {"sub": sub, "scopes": scopes, "roles": roles}}
    return event


def listing(invoke, prefix, *, status=200, **kwargs):
    query = {"prefix": prefix, **{k: str(v) for k, v in kwargs.pop("query", {}).items()}}
    response = invoke("list_state", list_event(query, **kwargs))
    assert response["statusCode"] == status, response.get("body")
    return json.loads(response["body"])


def every_key(invoke, prefix, *, limit=100, **kwargs):
    """Every page of a listing: the keys in the order listed, and the pages."""
    keys, pages, cursor = [], [], None
    while True:
        query = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = listing(invoke, prefix, query=query, **kwargs)
        pages.append(page)
        keys += [entry["key"] for entry in page["keys"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return keys, pages
        assert len(pages) < 1000


def put(invoke, key, value=None, **body):
    response = invoke("put_state", http_event("put", key, body={"value": value or {"v": SECRET_VALUE}, **body}))
    assert response["statusCode"] in (200, 201), response.get("body")


def delete(invoke, key):
    assert invoke("delete_state", http_event("delete", key))["statusCode"] == 204


@pytest.fixture
def dynamodb_calls():
    """The operation names of every real DynamoDB call the functions' client makes during the test."""
    calls: list[str] = []

    def record(model, **_):
        calls.append(model.name)

    client = runtime.dynamodb_client()
    client.meta.events.register("before-call.dynamodb.*", record, unique_id="test-list-recorder")
    yield calls
    client.meta.events.unregister("before-call.dynamodb.*", unique_id="test-list-recorder")


# -- what is listed -------------------------------------------------------------------------------------


def test_lists_live_keys_under_the_prefix_in_key_order_with_their_metadata(invoke, prefix):
    keys = [f"{prefix}{name}" for name in ("b", "a:1", "a", "c-d", "Z", "0")]
    for key in keys:
        put(invoke, key)
    put(invoke, keys[0], {"v": 2})
    put(invoke, f"{prefix[:-1]}x:outside")  # shares the prefix's text up to its last character only

    page = listing(invoke, prefix)

    assert [entry["key"] for entry in page["keys"]] == sorted(keys)
    assert page["next_cursor"] is None
    assert page["prefix"] == prefix
    entry = next(e for e in page["keys"] if e["key"] == keys[0])
    assert entry["version"] == 2
    assert entry["size"] == len(b'{"v":2}')
    assert entry["updated_at"].endswith("Z")
    assert entry["expires_at"] is None
    assert "value" not in entry


def test_tombstones_and_expired_keys_are_never_listed(invoke, prefix):
    put(invoke, f"{prefix}live")
    put(invoke, f"{prefix}deleted")
    delete(invoke, f"{prefix}deleted")
    put(invoke, f"{prefix}recreated")
    delete(invoke, f"{prefix}recreated")
    put(invoke, f"{prefix}recreated")
    put(invoke, f"{prefix}expiring", ttl_seconds=1)
    put(invoke, f"{prefix}later", ttl_seconds=3600)
    time.sleep(1.1)  # past the expiry; nothing has written the expiry yet (no stream here)

    page = listing(invoke, prefix, query={"include": "value"})

    assert [entry["key"] for entry in page["keys"]] == [f"{prefix}later", f"{prefix}live", f"{prefix}recreated"]
    assert page["keys"][0]["expires_at"] is not None
    assert page["keys"][2]["version"] == 3


def test_an_index_entry_that_trails_a_delete_never_shows_a_value(invoke, prefix, client, state_table):
    """DynamoDB updates the index after the table: a key just deleted may still be in it. Stand-in for that
    window: the state item made a tombstone behind the index's back (its list_shard left in place)."""
    put(invoke, f"{prefix}a", {"v": "a"})
    put(invoke, f"{prefix}b", {"v": SECRET_VALUE})
    put(invoke, f"{prefix}c", {"v": "c"})
    client.update_item(
        TableName=state_table,
        Key={"pk": {"S": f"{prefix}b"}, "sk": {"S": "state"}},
        UpdateExpression="SET deleted = :true REMOVE #value",
        ExpressionAttributeNames={"#value": "value"},
        ExpressionAttributeValues={":true": {"BOOL": True}},
    )

    with_values = listing(invoke, prefix, query={"include": "value"})
    without = listing(invoke, prefix)

    assert [entry["key"] for entry in with_values["keys"]] == [f"{prefix}a", f"{prefix}c"]
    assert SECRET_VALUE not in json.dumps(with_values)
    # Without values the index alone answers: the trailing entry is listed, as the docs say it may be.
    assert [entry["key"] for entry in without["keys"]] == [f"{prefix}a", f"{prefix}b", f"{prefix}c"]


def test_history_blob_and_marker_items_are_not_in_the_index(invoke, prefix, client, state_table):
    """The index is sparse: only items carrying list_shard, which only live state items carry."""
    put(invoke, f"{prefix}big", {"blob": random.Random(1).randbytes(400_000).hex()})
    put(invoke, f"{prefix}small")
    # Every page: the session's other tests fill the table past one Scan page (1 MB).
    indexed = [
        item
        for page in client.get_paginator("scan").paginate(TableName=state_table, IndexName="ListIndex")
        for item in page["Items"]
    ]
    shards = {item["list_shard"]["S"] for item in indexed if item["pk"]["S"].startswith(prefix)}
    items = [item for item in indexed if item["pk"]["S"].startswith(prefix) or item["pk"]["S"].startswith("chunk#")]

    assert sorted(item["pk"]["S"] for item in items) == [f"{prefix}big", f"{prefix}small"]
    assert {item["sk"]["S"] for item in items} == {"state"}
    assert shards <= {f"{n:02d}" for n in range(LIST_SHARDS)}
    assert "value" not in items[0]


# -- pages and cursors -------------------------------------------------------------------------------------


def test_pages_list_every_key_once_in_order_and_the_last_page_has_no_cursor(invoke, prefix):
    keys = sorted(f"{prefix}{n:03d}" for n in range(23))
    for key in keys:
        put(invoke, key)

    listed, pages = every_key(invoke, prefix, limit=5)

    assert listed == keys
    assert [len(page["keys"]) for page in pages] == [5, 5, 5, 5, 3]


def test_a_cursor_replayed_by_another_caller_for_another_prefix_or_altered_is_400(invoke, prefix):
    for n in range(3):
        put(invoke, f"{prefix}{n}")
    cursor = listing(invoke, prefix, query={"limit": 1})["next_cursor"]
    assert listing(invoke, prefix, query={"limit": 1, "cursor": cursor})["keys"][0]["key"] == f"{prefix}1"

    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    forged = []
    for position in (0, 2, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[position] ^= 0x01
        forged.append(base64.urlsafe_b64encode(bytes(flipped)).decode().rstrip("="))
    # The same tag with a later key spliced in: the MAC covers the key.
    forged.append(base64.urlsafe_b64encode(bytes(raw[:-1]) + b"2").decode().rstrip("="))
    attempts = [
        ({"sub": "mallory"}, prefix, cursor),
        ({}, prefix[:-1], cursor),
        ({}, f"{prefix}1", cursor),
        *[({}, prefix, bad) for bad in forged],
        ({}, prefix, cursor + "A"),
        ({}, prefix, cursor[:-2]),
        ({}, prefix, "not a cursor"),
        ({}, prefix, "x" * 1000),
        ({}, prefix, ""),
    ]
    for who, where, bad in attempts:
        response = invoke("list_state", list_event({"prefix": where, "limit": "1", "cursor": bad}, **who))
        assert response["statusCode"] == 400, (who, where, bad)
        problem = json.loads(response["body"])
        assert response["headers"]["Content-Type"] == "application/problem+json"
        assert problem["status"] == 400
        assert "cursor" in problem["detail"]


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": "²"},
        {"limit": "1,2"},
        {"prefix": ":a"},
        {"prefix": "a b"},
        {"prefix": "a/b"},
        {"prefix": "a#state"},
        {"prefix": "a" * 257},
        {"prefix": "a\n"},
        {"prefix": "user:${sub}"},
        {"prefix": "a*"},
        {"prefix": "a,b"},
        {"include": "values"},
        {"include": ""},
        {"include": "value,value"},
    ],
)
def test_bad_parameters_are_400_before_anything_is_read(invoke, query, dynamodb_calls):
    response = invoke("list_state", list_event({"prefix": "a", **query}, scopes="state:read"))

    assert response["statusCode"] == 400, response["body"]
    assert json.loads(response["body"])["status"] == 400
    assert dynamodb_calls == []


def test_limits_at_the_bounds_are_accepted(invoke, prefix):
    put(invoke, f"{prefix}a")
    assert len(listing(invoke, prefix, query={"limit": 1})["keys"]) == 1
    assert len(listing(invoke, prefix, query={"limit": 1000})["keys"]) == 1


# -- permissions --------------------------------------------------------------------------------------------


def test_a_sub_grant_narrows_a_wider_prefix_to_the_callers_own_keys(invoke, prefix, dynamodb_calls):
    for who in ("alice", "bob", "alice2", "al"):
        for n in range(3):
            put(invoke, f"{prefix}user:{who}:{n}")
    scopes = f"state:read:{prefix}user:${{sub}}:*"

    listed, _ = every_key(invoke, f"{prefix}user:", scopes=scopes, limit=2)

    assert listed == [f"{prefix}user:alice:{n}" for n in range(3)]
    assert "Scan" not in dynamodb_calls
    # Only alice's range was read: bob's keys were never fetched, let alone filtered out.
    assert listing(invoke, f"{prefix}user:bob:", status=403, scopes=scopes)["status"] == 403
    assert listing(invoke, f"{prefix}user:alice:1", scopes=scopes)["keys"][0]["key"] == f"{prefix}user:alice:1"


def test_a_role_grant_with_sub_lists_only_the_callers_keys(invoke, prefix, policy_file):
    policy_file(json.dumps({"version": 1, "roles": {"self": [f"state:read:{prefix}${{sub}}:*"]}}))
    for who in ("alice", "bob"):
        put(invoke, f"{prefix}{who}:x")

    page = listing(invoke, prefix, scopes="", roles='["self"]')

    assert [entry["key"] for entry in page["keys"]] == [f"{prefix}alice:x"]


def test_a_subject_that_is_not_one_segment_gets_nothing_from_a_sub_grant(invoke, prefix):
    put(invoke, f"{prefix}user:alice:x:1")
    scopes = f"state:read:{prefix}user:${{sub}}:*"

    problem = listing(invoke, f"{prefix}user:", status=403, sub="alice:x", scopes=scopes)

    assert problem["type"].endswith("/forbidden")


def test_exact_key_grants_list_exactly_those_keys(invoke, prefix, dynamodb_calls):
    for name in ("a", "a:child", "b", "c"):
        put(invoke, f"{prefix}{name}")
    dynamodb_calls.clear()  # a write may read the value schemas (a Query): only the listing's queries count
    scopes = f"state:read:{prefix}a state:read:{prefix}c state:read:other:key"

    page = listing(invoke, prefix, scopes=scopes)

    assert [entry["key"] for entry in page["keys"]] == [f"{prefix}a", f"{prefix}c"]
    # An exact key lives in one known shard: one query each, not one per shard.
    assert dynamodb_calls.count("Query") == 2


def test_a_caller_whose_grants_cover_no_key_under_the_prefix_gets_403_and_nothing_is_read(
    invoke, prefix, dynamodb_calls
):
    put(invoke, f"{prefix}secret", {"v": SECRET_VALUE})
    dynamodb_calls.clear()
    for scopes in ("state:write", f"state:read:{prefix}x:*", "state:read:other:*", f"state:read:{prefix[:-1]}", ""):
        problem = listing(invoke, f"{prefix}s", status=403, scopes=scopes)
        assert problem["status"] == 403
        assert SECRET_VALUE not in json.dumps(problem)
    assert dynamodb_calls == []


def test_the_empty_prefix_is_only_for_a_caller_granted_every_key(invoke, prefix):
    put(invoke, f"{prefix}a")

    assert listing(invoke, "", status=403, scopes="state:read:user:*")["status"] == 403
    assert listing(invoke, "", status=403, scopes=f"state:read:{prefix}a")["status"] == 403
    assert listing(invoke, "", query={"limit": 5}, scopes="state:read")["keys"]
    response = invoke("list_state", list_event(None, scopes="state:read:*"))
    assert response["statusCode"] == 200


def test_a_request_without_the_authorizers_context_is_401(invoke):
    event = list_event({"prefix": "a"})
    event["requestContext"].pop("authorizer")
    assert invoke("list_state", event)["statusCode"] == 401


# -- values -------------------------------------------------------------------------------------------------


def test_include_value_lists_the_values_and_omits_a_large_ones_blob(invoke, prefix):
    big = {"blob": random.Random(2).randbytes(400_000).hex()}
    put(invoke, f"{prefix}a", {"n": 1, "s": "é"})
    put(invoke, f"{prefix}b", big)
    put(invoke, f"{prefix}c", [1, 2, 3])

    page = listing(invoke, prefix, query={"include": "value"})

    assert [entry.get("value") for entry in page["keys"]] == [{"n": 1, "s": "é"}, None, [1, 2, 3]]
    assert page["keys"][1]["value_omitted"] is True
    assert page["keys"][1]["size"] == len(json.dumps(big, separators=(",", ":")))
    assert "value_omitted" not in page["keys"][0]


def test_include_value_stops_a_page_early_rather_than_exceed_the_body_limit(invoke, prefix):
    from state_core.service.listing import MAX_LIST_BODY_BYTES

    for n in range(8):
        put(invoke, f"{prefix}{n}", "x" * 300_000 + str(n))  # compresses: stored inline

    bodies, keys, cursor = [], [], None
    while True:
        query = {"include": "value", "limit": "100", **({"cursor": cursor} if cursor else {})}
        response = invoke("list_state", list_event({"prefix": prefix, **query}))
        bodies.append(response["body"])
        page = json.loads(response["body"])
        keys += [entry["key"] for entry in page["keys"]]
        assert all(entry["value"].startswith("xxx") for entry in page["keys"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert keys == [f"{prefix}{n}" for n in range(8)]
    assert len(bodies) >= 2
    assert all(len(body.encode()) <= MAX_LIST_BODY_BYTES for body in bodies)


def test_a_one_mib_value_fits_a_page_of_its_own(invoke, prefix):
    from state_core.domain.codec import MAX_VALUE_BYTES

    value = "y" * (MAX_VALUE_BYTES - 2)
    put(invoke, f"{prefix}a", "small")
    put(invoke, f"{prefix}b", value)
    put(invoke, f"{prefix}c", value)

    keys, cursor, sizes = [], None, []
    while True:
        query = {"include": "value", **({"cursor": cursor} if cursor else {})}
        page = listing(invoke, prefix, query=query)
        keys += [entry["key"] for entry in page["keys"]]
        sizes.append(len(page["keys"]))
        assert all("value" in entry for entry in page["keys"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert keys == [f"{prefix}a", f"{prefix}b", f"{prefix}c"]
    assert sizes == [2, 1]


# -- cost: no Scan, a page costs about the page --------------------------------------------------------


def test_a_page_is_read_with_queries_of_the_index_never_a_scan(invoke, prefix, dynamodb_calls):
    for n in range(60):
        put(invoke, f"{prefix}{n:02d}")
    for n in range(40):
        put(invoke, f"{prefix}zz{n:02d}")  # more keys after the first page
    dynamodb_calls.clear()

    page = listing(invoke, prefix, query={"limit": 10})

    assert len(page["keys"]) == 10
    assert set(dynamodb_calls) == {"Query"}
    # One query per shard, plus at most a few refills of shards the merge drained.
    assert LIST_SHARDS <= len(dynamodb_calls) <= LIST_SHARDS + 6

    dynamodb_calls.clear()
    listing(invoke, prefix, query={"limit": 10, "include": "value"})
    assert set(dynamodb_calls) == {"Query", "BatchGetItem"}
    assert dynamodb_calls.count("BatchGetItem") == 1


# -- concurrency: a key present for the whole listing is listed exactly once -------------------------------


def test_keys_present_for_the_whole_listing_appear_exactly_once_while_others_change(invoke, prefix):
    stable = [f"{prefix}k{n:03d}" for n in range(0, 120, 3)]
    for key in stable:
        put(invoke, key)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                other = f"{prefix}k{rng.randrange(120):03d}{rng.choice(['', 'x', ':y'])}"
                if other in stable:
                    put(invoke, other, {"rewritten": rng.random()})  # rewritten, never absent
                elif rng.random() < 0.5:
                    put(invoke, other)
                else:
                    invoke("delete_state", http_event("delete", other))
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=churn, args=(seed,)) for seed in range(3)]
    for writer in writers:
        writer.start()
    try:
        time.sleep(0.2)
        listed, pages = every_key(invoke, prefix, limit=7)
    finally:
        stop.set()
        for writer in writers:
            writer.join()

    assert not errors
    assert listed == sorted(set(listed)), "listed out of order or twice"
    assert [key for key in listed if key in stable] == stable
    assert len(pages) > 3


# -- audit and logs -------------------------------------------------------------------------------------


def test_every_listing_leaves_an_audit_record_with_the_prefix_and_no_value(invoke, prefix, capsys):
    import logging

    put(invoke, f"{prefix}a", {"v": SECRET_VALUE})
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    collector = Collect()
    collector.setFormatter(audit.audit_logger.registered_formatter)
    audit.audit_logger.addHandler(collector)
    try:
        listing(invoke, prefix, query={"include": "value"})
        listing(invoke, prefix, status=403, scopes="state:read:other:*")
        invoke("list_state", list_event({"prefix": ":bad"}))
    finally:
        audit.audit_logger.removeHandler(collector)

    records = [json.loads(line)["audit"] for line in lines]
    summary = [(r["action"], r["permission"], r["prefix"], r["decision"], r["status"], r["key"]) for r in records]
    assert summary == [
        ("list", "state:read", prefix, "allow", 200, None),
        ("list", "state:read", prefix, "deny", 403, None),
        ("list", "state:read", None, None, 400, None),
    ]
    assert SECRET_VALUE not in "".join(lines)
    assert SECRET_VALUE not in capsys.readouterr().out
