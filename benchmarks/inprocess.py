"""Rows measured in this process: the real handlers (loaded from functions/<name>/app.py, an authorizer
context in each event) against a serialized moto server and a redis-server the benchmark starts, each
beside a bare baseline that makes only the storage calls the operation cannot avoid."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import statistics
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, Row, interleaved, load_module, quiet_stdout, row
from tests.doubles import LambdaContext

SMALL_VALUE = {"name": "alice", "plan": "pro", "count": 1, "tags": ["a", "b", "c"], "prefs": {"theme": "dark"}}
# 1 MiB canonical JSON that does not compress: a string of random base64 (6 bits a byte, so zlib keeps
# ~75% of it: still three 350,000-byte chunks).
LARGE_VALUE = base64.b64encode(os.urandom(786_000)).decode()[: 1_048_576 - 2]


@dataclass
class Services:
    moto_url: str
    redis_url: str
    table: str
    issuer: str
    issuer_dir: Path


@contextmanager
def services() -> Iterator[Services]:
    """moto (serialized, as in the local stack), redis-server and the dev OIDC issuer, with the handlers'
    environment pointed at them."""
    import boto3

    from devstack.moto_server import SerializedMotoServer
    from devstack.oidc import DevIssuer
    from devstack.redis_server import RedisServer
    from devstack.resources import client, ensure_secret
    from devstack.template import load_template

    template = load_template(REPO_ROOT / "template.yaml")
    moto = SerializedMotoServer(port=0).start()
    redis_server = RedisServer().start()
    issuer_dir = Path(tempfile.mkdtemp(prefix="bench-issuer-"))
    issuer = DevIssuer(issuer_dir, port=0)
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    asyncio.run_coroutine_threadsafe(issuer.start(), loop).result(timeout=10)
    table = f"state-bench-{uuid.uuid4().hex[:8]}"
    # As deployed: the functions read the cache's signing key from Secrets Manager (moto's here).
    signing_secret_arn = ensure_secret(client("secretsmanager", moto.endpoint_url), f"bench-signing-{table}")
    environment = {
        name: str(value)
        for name, value in template.function("GetStateFunction").environment.items()
        if name.startswith("POWERTOOLS_")
    }
    environment.update(
        {
            "AWS_ENDPOINT_URL": moto.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "STATE_TABLE_NAME": table,
            "STATE_REDIS_URL": redis_server.url,
            "STATE_CACHE_SIGNING_SECRET_ARN": signing_secret_arn,
            "STATE_TRACING": "false",
            "STATE_OIDC_ISSUER": issuer.issuer,
            "STATE_OIDC_AUDIENCE": "state-service",
        }
    )
    os.environ.update(environment)
    os.environ.pop("AWS_PROFILE", None)
    ddb = boto3.client("dynamodb", endpoint_url=moto.endpoint_url, region_name="us-east-1")
    ddb.create_table(**template.table_create_kwargs("StateTable", table))
    ddb.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    try:
        yield Services(moto.endpoint_url, redis_server.url, table, issuer.issuer, issuer_dir)
    finally:
        asyncio.run_coroutine_threadsafe(issuer.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        redis_server.stop()
        moto.stop()


def _modules() -> dict[str, Any]:
    return {
        name: load_module(f"{name}_app", REPO_ROOT / "functions" / name / "app.py")
        for name in ("get_state", "put_state", "patch_state", "delete_state", "authorizer")
    }


def _ok(response: dict[str, Any], *statuses: int) -> dict[str, Any]:
    # A benchmark of error answers would be meaningless: stop loudly rather than print it.
    if response.get("statusCode") not in statuses and "isAuthorized" not in response:
        raise RuntimeError(f"unexpected answer {response.get('statusCode')}: {str(response.get('body'))[:200]}")
    return response


def run(svc: Services, runs: int, large_runs: int) -> list[Row]:  # noqa: C901, PLR0915  one block per table row
    import boto3
    import jwt
    import redis

    from state_core.cache.state_cache import entry_key

    events = load_module("bench_events", REPO_ROOT / "tests" / "integration" / "conftest.py")
    http_event, context = events.http_event, LambdaContext()
    modules = _modules()
    handlers = {name: module.lambda_handler for name, module in modules.items()}
    raw = redis.Redis.from_url(svc.redis_url)
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    rows: list[Row] = []

    def call(function: str, event: dict[str, Any], *ok: int) -> dict[str, Any]:
        return _ok(handlers[function](event, context), *ok)

    key = f"bench:{uuid.uuid4().hex}"
    bare_key = f"bench-bare:{uuid.uuid4().hex}"
    with quiet_stdout():
        call("put_state", http_event("put", key, body={"value": SMALL_VALUE}), 201)
        # The write-through of a key nobody has read stores a fence; the first read fills the value.
        call("get_state", http_event("get", key), 200)
    cached_bytes = raw.hget(entry_key(key), "d")
    if cached_bytes is None:
        raise RuntimeError("the first read did not fill the cache: the cache-hit row would measure misses")
    raw.set(bare_key, cached_bytes)
    ddb.put_item(TableName=svc.table, Item=_bare_item(bare_key, 1, cached_bytes))

    # 1. Cache-hit GET vs a bare handler that only does a redis GET and returns the bytes.
    get_event = http_event("get", key)

    def bare_get(_: int) -> dict[str, Any]:
        return {"statusCode": 200, "body": raw.get(bare_key)}

    with quiet_stdout():
        measured, base = interleaved(lambda _: call("get_state", get_event, 200), bare_get, runs)
        # Where the overhead goes: the core alone, then the core behind Powertools' resolver (no
        # lambda_entry: no Logger context, audit record or metrics flush).
        from state_core.runtime import state_manager

        core, resolver = interleaved(
            lambda _: state_manager().get(key), lambda _: modules["get_state"].app.resolve(get_event, context), runs
        )
    median = {name: _median_ms(samples) for name, samples in (("core", core), ("resolver", resolver))}
    rows.append(
        row(
            "GET, cache hit",
            "redis GET",
            measured,
            base,
            core_ms=median["core"],
            core_and_resolver_ms=median["resolver"],
        )
    )

    # 2. Cache-miss GET vs a bare consistent GetItem + redis SET.
    def empty_cache(_: int) -> None:
        raw.delete(entry_key(key))

    def bare_miss(_: int) -> None:
        item = ddb.get_item(TableName=svc.table, Key=_bare_key(bare_key), ConsistentRead=True)["Item"]
        raw.set(bare_key, item["value"]["B"], px=300_000)

    with quiet_stdout():
        measured, base = interleaved(lambda _: call("get_state", get_event, 200), bare_miss, runs, before=empty_cache)
    rows.append(row("GET, cache miss", "GetItem + redis SET", measured, base))

    # 3. PUT vs a bare conditional PutItem.
    put_key = f"bench:{uuid.uuid4().hex}"
    put_event = http_event("put", put_key, body={"value": SMALL_VALUE})
    bare_version = [1]

    def bare_put(_: int) -> None:
        bare_version[0] += 1
        ddb.put_item(
            TableName=svc.table,
            Item=_bare_item(bare_key, bare_version[0], cached_bytes),
            ConditionExpression="attribute_not_exists(pk) OR version < :v",
            ExpressionAttributeValues={":v": {"N": str(bare_version[0])}},
        )

    from state_core.runtime import dynamodb_client

    put_calls: list[str] = []

    def count_call(model: Any, **_: Any) -> None:
        put_calls.append(model.name)

    with quiet_stdout():
        runtime_events = dynamodb_client().meta.events
        runtime_events.register("before-call.dynamodb", count_call)
        try:
            measured, base = interleaved(lambda _: call("put_state", put_event, 200, 201), bare_put, runs)
        finally:
            runtime_events.unregister("before-call.dynamodb", count_call)
        # The store's own conditional UpdateItem alone: what the emulator charges for the service's
        # expression, as against the bare PutItem's; and the history PutItem a PUT no longer makes (the
        # stream writes it), as it cost on the request path.
        from datetime import UTC, datetime

        from state_core.domain.codec import StoredValue, canonical_json
        from state_core.domain.writes import Precondition
        from state_core.storage.history import HistoryStore
        from state_core.storage.state import StateStore

        store = StateStore(ddb, svc.table)
        history = HistoryStore(ddb, svc.table, retention_seconds=86_400)
        stored = StoredValue.encode(canonical_json(SMALL_VALUE))
        written = store.write(
            put_key, stored, actor="bench", now=datetime.now(UTC), precondition=Precondition.NOT_EXPIRED
        )
        update_item, history_put = interleaved(
            lambda _: store.write(
                put_key, stored, actor="bench", now=datetime.now(UTC), precondition=Precondition.NOT_EXPIRED
            ),
            lambda _: history.record([(written.record, "updated")]),
            runs // 3,
        )
    rows.append(
        row(
            "PUT",
            "conditional PutItem",
            measured,
            base,
            store_update_item_ms=_median_ms(update_item),
            history_put_item_ms_no_longer_paid=_median_ms(history_put),
            dynamodb_calls_per_put=round(len(put_calls) / (runs + 20), 2),
        )
    )

    # 4. Uncontended PATCH vs a bare GetItem + conditional PutItem.
    def patch(i: int) -> None:
        body = json.dumps({"count": i})
        call("patch_state", http_event("patch", key, body=body, content_type="application/merge-patch+json"), 200)

    def bare_patch(_: int) -> None:
        item = ddb.get_item(TableName=svc.table, Key=_bare_key(bare_key), ConsistentRead=True)["Item"]
        version = int(item["version"]["N"])
        ddb.put_item(
            TableName=svc.table,
            Item=_bare_item(bare_key, version + 1, item["value"]["B"]),
            ConditionExpression="version = :v",
            ExpressionAttributeValues={":v": {"N": str(version)}},
        )

    with quiet_stdout():
        measured, base = interleaved(patch, bare_patch, runs)
    rows.append(row("PATCH, uncontended", "GetItem + cond. PutItem", measured, base))

    # 5. 1 MiB incompressible PUT + GET vs the storage calls it needs: the chunks (BatchWriteItem), the
    # state item (conditional PutItem) and the write-through (redis SET), then the read from the cache.
    large_key = f"bench:{uuid.uuid4().hex}"
    large_put = http_event("put", large_key, body={"value": LARGE_VALUE})
    large_get = http_event("get", large_key)
    with quiet_stdout():
        call("put_state", large_put, 200, 201)
        call("get_state", large_get, 200)  # fills the cache (the write-through of an unread key is a fence)
    compressed = raw.hget(entry_key(large_key), "d")
    if not compressed:
        raise RuntimeError("the first read did not fill the cache with the large value")

    def large_roundtrip(_: int) -> None:
        call("put_state", large_put, 200, 201)
        call("get_state", large_get, 200)

    def bare_large(i: int) -> None:
        write_id = secrets.token_hex(8)
        chunks = [compressed[n : n + 350_000] for n in range(0, len(compressed), 350_000)]
        ddb.batch_write_item(
            RequestItems={
                svc.table: [
                    {
                        "PutRequest": {
                            "Item": {"pk": {"S": f"chunk#{write_id}#{n}"}, "sk": {"S": "chunk"}, "d": {"B": c}}
                        }
                    }
                    for n, c in enumerate(chunks)
                ]
            }
        )
        ddb.put_item(
            TableName=svc.table,
            Item={"pk": {"S": bare_key + ":large"}, "sk": {"S": "state"}, "blob_id": {"S": write_id}},
            ConditionExpression="attribute_not_exists(pk) OR blob_id <> :w",
            ExpressionAttributeValues={":w": {"S": write_id}},
        )
        raw.set(bare_key + ":large", compressed, px=300_000)
        raw.get(bare_key + ":large")

    with quiet_stdout():
        measured, base = interleaved(large_roundtrip, bare_large, large_runs, warmup=3)
    rows.append(
        row("1 MiB PUT + GET", "BatchWrite + PutItem + SET + GET", measured, base, stored_bytes=len(compressed))
    )

    # 6. Authorizer with its JWKS cached vs a bare jwt.decode with the key in hand.
    from devstack.token import mint

    token = mint("alice", "state:read state:write", issuer=svc.issuer, state_dir=svc.issuer_dir)
    auth_event = json.loads((REPO_ROOT / "events" / "authorizer.json").read_text())
    auth_event["headers"] = {"authorization": f"Bearer {token}"}
    auth_event["identitySource"] = [f"Bearer {token}"]
    jwks = json.loads(_fetch(f"{svc.issuer}/jwks.json"))
    public_key = jwt.PyJWK(jwks["keys"][0]).key

    def authorize(_: int) -> None:
        if not handlers["authorizer"](auth_event, context).get("isAuthorized"):
            raise RuntimeError("the authorizer refused the benchmark's token")

    def bare_decode(_: int) -> None:
        jwt.decode(token, public_key, algorithms=["RS256"], audience="state-service", issuer=svc.issuer)

    with quiet_stdout():
        measured, base = interleaved(authorize, bare_decode, runs)
    rows.append(row("authorizer, JWKS cached", "jwt.decode, key in hand", measured, base))
    return rows


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def _bare_key(key: str) -> dict[str, Any]:
    return {"pk": {"S": key}, "sk": {"S": "state"}}


def _bare_item(key: str, version: int, value: bytes) -> dict[str, Any]:
    return {**_bare_key(key), "version": {"N": str(version)}, "value": {"B": value}}


def _fetch(url: str) -> str:
    from urllib.request import urlopen

    with urlopen(url, timeout=5) as response:  # noqa: S310 - the local dev issuer
        return response.read().decode()


def capacity(svc: Services) -> list[dict[str, Any]]:
    """WCU per write operation and value size, from the items the real handlers write (capacity.py)."""
    from benchmarks import capacity as wcu

    events = load_module("bench_events", REPO_ROOT / "tests" / "integration" / "conftest.py")
    handlers = {name: module.lambda_handler for name, module in _modules().items()}
    context = LambdaContext()

    def call(function: str, event: dict[str, Any]) -> dict[str, Any]:
        return _ok(handlers[function](event, context), 200, 201, 204)

    with quiet_stdout():
        return wcu.run(call, events.http_event, svc.table)
