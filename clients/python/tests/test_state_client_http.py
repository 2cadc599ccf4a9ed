"""Every method and error of both clients against the real local stack (gateway, authorizer, handlers,
moto, redis): one stack for the module."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from state_client import (
    AsyncStateClient,
    BadRequest,
    Envelope,
    Forbidden,
    NotFound,
    PreconditionFailed,
    RetryPolicy,
    StateClient,
    TooLarge,
    Unauthorized,
    Unprocessable,
    WriteOutcomeUnknown,
)
from state_client._protocol import Call
from tests.stack import DevStack

pytestmark = pytest.mark.e2e


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=120))


@pytest.fixture
def sync(stack: DevStack) -> Any:
    patient = RetryPolicy(attempts=50, budget=120)
    with StateClient(stack.base_url, token=stack.token(), timeout=60, retry=patient) as client:
        yield client


def test_the_life_of_a_key_sync(sync: StateClient, key: str) -> None:
    created = sync.set(key, {"preferences": {"theme": "dark"}})
    assert isinstance(created, Envelope)
    assert (created.version, created.etag, created.updated_by) == (1, '"1"', "alice")
    assert created.value == {"preferences": {"theme": "dark"}}
    assert created.created_at is not None
    assert created.created_at.tzinfo is not None

    read = sync.get(key)
    assert (read.key, read.value, read.version, read.expires_at) == (key, {"preferences": {"theme": "dark"}}, 1, None)
    assert isinstance(read.updated_at, datetime)

    patched = sync.update(key, {"preferences": {"font_size": 14}})
    assert patched.value == {"preferences": {"theme": "dark", "font_size": 14}}
    assert patched.version == 2

    assert sync.get_version(key, 1).value == {"preferences": {"theme": "dark"}}
    assert sync.delete(key) == 3
    with pytest.raises(NotFound) as absent:
        sync.get(key)
    assert absent.value.status == 404
    assert absent.value.type == "https://state.service/problems/not-found"


def test_the_life_of_a_key_async(stack: DevStack, key: str) -> None:
    async def scenario() -> None:
        async with AsyncStateClient(stack.base_url, token=stack.token()) as state:
            await state.set(key, {"preferences": {"theme": "dark"}}, ttl_seconds=3600)
            envelope = await state.update(key, {"preferences": {"font_size": 14}})
            assert envelope.value == {"preferences": {"theme": "dark", "font_size": 14}}
            assert envelope.expires_at is not None
            assert envelope.expires_at > datetime.now(UTC)
            assert (await state.get(key, consistent=True)).version == 2
            assert (await state.get_version(key, 2)).value == envelope.value
            assert await state.delete(key, if_match=2) == 3
            with pytest.raises(NotFound):
                await state.get(key)

    run(scenario())


def test_preconditions_on_every_write(sync: StateClient, key: str) -> None:
    sync.set(key, 1, if_none_match="*")
    with pytest.raises(PreconditionFailed) as exists:
        sync.set(key, 2, if_none_match="*")
    assert exists.value.current_version == 1
    with pytest.raises(PreconditionFailed) as stale:
        sync.set(key, 2, if_match=7)
    assert stale.value.current_version == 1
    assert sync.set(key, 2, if_match='"1"').version == 2
    with pytest.raises(PreconditionFailed):
        sync.update(key, {"a": 1}, if_match=1)
    with pytest.raises(PreconditionFailed):
        sync.delete(key, if_match=1)
    assert sync.get(key).value == 2
    with pytest.raises(PreconditionFailed) as missing:
        sync.set(f"{key}-absent", 1, if_match="*")
    assert missing.value.current_version is None


def test_history_and_listing_fetch_every_page(stack: DevStack, sync: StateClient) -> None:
    prefix = f"client:{uuid.uuid4().hex[:8]}:"
    keys = [f"{prefix}{i:02d}" for i in range(5)]
    for i, key in enumerate(keys):
        sync.set(key, {"i": i})
    for n in range(2, 6):
        sync.set(keys[0], {"i": n})

    # The history trails the writes by the stream's lag (docs/api.md): wait until it holds them all.
    until = time.monotonic() + 15
    while [v.version for v in sync.history(keys[0], page_size=2)] != [5, 4, 3, 2, 1]:
        assert time.monotonic() < until, "the history never listed the five versions"
        time.sleep(0.2)
    pages = list(sync.history_pages(keys[0], page_size=2))
    assert [[v.version for v in page.items] for page in pages] == [[5, 4], [3, 2], [1]]
    assert [v.operation for v in pages[-1].items] == ["created"]

    async def async_history() -> list[int]:
        async with AsyncStateClient(stack.base_url, token=stack.token()) as state:
            return [v.version async for v in state.history(keys[0], page_size=2)]

    assert run(async_history()) == [5, 4, 3, 2, 1]

    def listed() -> list[str]:
        return [k.key for k in sync.list(prefix, page_size=2)]

    # The listing's index is eventually consistent (docs/api.md).
    until = time.monotonic() + 10
    while listed() != keys:
        assert time.monotonic() < until, "the listing never showed the five keys"
        time.sleep(0.2)
    with_values = list(sync.list(prefix, include_values=True))
    assert [k.value for k in with_values][1:] == [{"i": i} for i in range(1, 5)]
    pages = list(sync.list_pages(prefix, page_size=2))
    assert [len(page.items) for page in pages] == [2, 2, 1]
    assert pages[-1].next_cursor is None

    async def async_listing() -> list[str]:
        async with AsyncStateClient(stack.base_url, token=stack.token()) as state:
            return [k.key async for k in state.list(prefix, page_size=3)]

    assert run(async_listing()) == keys


def test_errors_are_typed_from_the_problem_documents(stack: DevStack, sync: StateClient, key: str) -> None:
    with pytest.raises(BadRequest) as bad_key:
        sync.get("no spaces allowed")
    assert bad_key.value.status == 400
    assert bad_key.value.detail
    with pytest.raises(BadRequest):
        sync.set(key, 1, ttl_seconds=0)
    with pytest.raises(Unprocessable):
        # No method sends a body of the wrong shape: the client's own sender with a PUT without "value".
        sync._send(Call("PUT", f"/state/{key}", headers={"Content-Type": "application/json"}, content=b"{}"))
    with pytest.raises(NotFound):
        sync.update(key, {"a": 1})
    with pytest.raises(NotFound):
        sync.delete(key)
    sync.set(key, 1)
    with pytest.raises(NotFound):
        sync.get_version(key, 9)
    with pytest.raises(TooLarge):
        sync.set(key, "x" * (1024 * 1024 + 1))
    with StateClient(stack.base_url, token=stack.token("bob", "state:read:user:${sub}:*")) as bob:
        with pytest.raises(Forbidden) as forbidden:
            bob.get(key)
        assert forbidden.value.type == "https://state.service/problems/forbidden"
    with StateClient(stack.base_url) as anonymous, pytest.raises(Unauthorized):
        anonymous.get(key)
    with StateClient(stack.base_url, token="not-a-jwt") as rejected, pytest.raises(Forbidden) as by_gateway:
        rejected.get(key)
    assert by_gateway.value.type is None
    assert by_gateway.value.title == "Forbidden"


def test_a_one_mib_value_round_trips_both_ways(stack: DevStack, sync: StateClient, key: str) -> None:
    value = "é" * (512 * 1024 - 1)  # 1,048,574 bytes of UTF-8, with the quotes 1 MiB exactly
    sync.set(key, value)
    assert sync.get(key).value == value

    async def scenario() -> Any:
        async with AsyncStateClient(stack.base_url, token=stack.token()) as state:
            await state.set(key, value, if_match=1)
            return (await state.get(key, consistent=True)).value

    assert run(scenario()) == value


# On a loaded machine a write's DynamoDB call can time out: the service then answers write-outcome-unknown,
# which modify passes on (applying fn again could apply it twice). Nothing acknowledged may be lost, nothing
# applied twice; such an outcome may have gone either way.


def test_twenty_concurrent_modifies_of_one_key_lose_nothing(stack: DevStack, key: str) -> None:
    async def scenario() -> tuple[list[Any], Envelope]:
        # 20 requests at once start the functions' cold workers: on 2 shared cores that exceeds 10 s.
        # A loaded machine also answers 503 (the table did not answer in time: nothing written) for a while.
        patient = RetryPolicy(attempts=50, budget=120)
        async with AsyncStateClient(stack.base_url, token=stack.token(), timeout=60, retry=patient) as state:
            # Absent at first: the first round of all twenty races to create it (If-None-Match: *).
            outcomes = await asyncio.gather(
                *(state.modify(key, lambda n: (n or 0) + 1, budget=60) for _ in range(20)), return_exceptions=True
            )
            return outcomes, await state.get(key)

    outcomes, final = run(scenario())
    acknowledged = [o for o in outcomes if isinstance(o, Envelope)]
    unknown = [o for o in outcomes if isinstance(o, WriteOutcomeUnknown)]
    assert len(acknowledged) + len(unknown) == 20, [repr(o) for o in outcomes if not isinstance(o, Envelope)]
    assert len({e.version for e in acknowledged}) == len(acknowledged)
    assert len(acknowledged) <= final.value <= 20
    assert final.value == final.version  # one increment per version: none applied twice
    if not unknown:
        assert final.value == 20


def test_twenty_threads_modifying_through_one_sync_client_lose_nothing(sync: StateClient, key: str) -> None:
    sync.set(key, {"items": []}, ttl_seconds=3600)

    def append(i: int) -> Envelope | WriteOutcomeUnknown:
        try:
            return sync.modify(key, lambda value: {"items": [*value["items"], i]}, budget=60)
        except WriteOutcomeUnknown as unknown:
            return unknown

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(append, range(20)))
    final = sync.get(key)
    items = final.value["items"]
    acknowledged = [i for i, o in enumerate(outcomes) if isinstance(o, Envelope)]
    assert set(acknowledged) <= set(items)
    assert len(items) == len(set(items)) == final.version - 1  # each append once, one version each
    assert all(isinstance(o, Envelope | WriteOutcomeUnknown) for o in outcomes)
    if len(acknowledged) == 20:
        assert sorted(items) == list(range(20))
    assert final.expires_at is not None  # modify keeps the TTL a PUT would otherwise remove


def test_modify_gives_up_after_its_budget(stack: DevStack, sync: StateClient, key: str) -> None:
    sync.set(key, 0)

    def interfere(n: int) -> int:
        # Someone else writes between every read and write of this modify: it can never win.
        with StateClient(stack.base_url, token=stack.token()) as other:
            other.set(key, n + 100)
        return n + 1

    started = time.monotonic()
    with pytest.raises(PreconditionFailed):
        sync.modify(key, interfere, budget=1.0)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("hostile", ["../state", "a/b", "user:alice?version=1", "a#b", "x" * 257, "", "é"])
def test_a_hostile_key_is_refused_and_never_reaches_another_route(sync: StateClient, hostile: str) -> None:
    with pytest.raises((BadRequest, NotFound)) as refused:
        sync.set(hostile, {"evil": True})
    # Quoted whole into one path segment: the service refuses the key (400), or the gateway matches no
    # route for an empty one (404); never a write elsewhere.
    assert refused.value.status in (400, 404)
    with pytest.raises((BadRequest, NotFound)):
        sync.get(hostile)


def test_arguments_the_api_would_refuse_are_refused_before_sending(sync: StateClient, key: str) -> None:
    with pytest.raises(ValueError, match="if_none_match"):
        sync.set(key, 1, if_none_match='"1"')
    with pytest.raises(TypeError):
        sync.set(key, 1, if_match=True)
    with pytest.raises(ValueError, match="Out of range float values"):
        sync.set(key, float("nan"))
    with pytest.raises(NotFound):
        sync.get(key)  # nothing was written


def test_the_async_client_raises_the_same_typed_errors(stack: DevStack, key: str) -> None:
    async def scenario() -> None:
        async with AsyncStateClient(stack.base_url, token=stack.token()) as state:
            with pytest.raises(BadRequest):
                await state.get("bad key")
            with pytest.raises(NotFound):
                await state.update(key, {"a": 1})
            await state.set(key, {"a": 1}, if_none_match="*")
            with pytest.raises(PreconditionFailed) as stale:
                await state.update(key, {"a": 2}, if_match=5)
            assert stale.value.current_version == 1
            with pytest.raises(TooLarge):
                await state.set(key, "x" * (1024 * 1024 + 1), if_match=1)
            with pytest.raises(NotFound):
                await state.get_version(key, 2)
            with pytest.raises(NotFound):
                [v async for v in state.history(f"{key}-never")]
        async with AsyncStateClient(stack.base_url, token=stack.token("bob", "state:read:user:${sub}:*")) as bob:
            with pytest.raises(Forbidden):
                await bob.delete(key)
            with pytest.raises(Forbidden):
                [k async for k in bob.list("client:")]
        async with AsyncStateClient(stack.base_url) as anonymous:
            with pytest.raises(Unauthorized):
                await anonymous.get(key)

    run(scenario())


def test_a_transaction_sync_and_async_applies_once_and_names_failed_conditions(sync: StateClient, key: str) -> None:
    from state_client import TransactionResult

    sync.set(f"{key}:stock", {"free": 5})
    operations = [
        {"op": "put", "key": f"{key}:order", "value": {"qty": 2}, "if_none_match": "*"},
        {"op": "patch", "key": f"{key}:stock", "patch": {"free": 3}, "if_match": 1},
    ]

    first = sync.transaction(operations, idempotency_key=f"tx-{key}")
    again = sync.transaction(operations, idempotency_key=f"tx-{key}")

    assert isinstance(first, TransactionResult)
    assert [(r.op, r.version, r.created) for r in first.results] == [("put", 1, True), ("patch", 2, False)]
    assert (again.transaction_id, again.replayed, first.replayed) == (first.transaction_id, True, False)
    assert sync.get(f"{key}:stock").value == {"free": 3}

    async def conflicting() -> PreconditionFailed:
        async with AsyncStateClient(sync.base_url, token=sync._token) as client:
            with pytest.raises(PreconditionFailed) as failed:
                await client.transaction(operations)  # a fresh key: the order exists, the stock moved on
            return failed.value

    error = run(conflicting())
    assert error.failed_operations == [
        {"index": 0, "key": f"{key}:order", "current_version": 1},
        {"index": 1, "key": f"{key}:stock", "current_version": 2},
    ]


def test_get_many_answers_each_key_in_order_with_its_own_error_sync_and_async(
    sync: StateClient, stack: DevStack, key: str
) -> None:
    sync.set(f"{key}:a", {"n": 1})
    sync.set(f"{key}:b", {"n": 2})
    sync.update(f"{key}:b", {"m": 3})
    keys = [f"{key}:b", f"{key}:missing", f"{key}:a"]

    answers = sync.get_many(keys)

    assert [(a.key, a.value, a.version) for a in answers[::2] if isinstance(a, Envelope)] == [
        (f"{key}:b", {"n": 2, "m": 3}, 2),
        (f"{key}:a", {"n": 1}, 1),
    ]
    assert isinstance(answers[1], NotFound)

    async def as_bob() -> list[Any]:
        token = stack.token("bob", "state:read:user:${sub}:*")
        async with AsyncStateClient(stack.base_url, token=token) as bob:
            return await bob.get_many([f"{key}:a", "user:bob:nothing"], snapshot=True)

    refused, absent = run(as_bob())
    assert isinstance(refused, Forbidden)  # the same whether or not the key exists
    assert isinstance(absent, NotFound)
    with pytest.raises(ValueError, match="distinct"):
        sync.get_many([f"{key}:a", f"{key}:a"])
    with pytest.raises(ValueError, match="distinct"):
        sync.get_many([])


def test_get_many_fetches_the_values_an_answer_left_out_for_size(sync: StateClient, key: str) -> None:
    # Seven values of ~1 MB: past the 6 MB a Lambda may answer, so the bulk read leaves some out and names their
    # versions; the client reads those versions itself.
    keys = [f"{key}:big{n}" for n in range(7)]
    for n, big in enumerate(keys):
        sync.set(big, str(n) * 1_000_000)
        sync.set(big, str(n) * 1_000_001)  # version 2: a fetch of the wrong version would show

    answers = sync.get_many(keys)

    assert [(a.value, a.version) for a in answers if isinstance(a, Envelope)] == [
        (str(n) * 1_000_001, 2) for n in range(7)
    ]
