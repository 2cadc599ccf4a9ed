"""A Hypothesis stateful test of the core against a model, to find sequences of operations no one wrote.

Real: the StateManager, the StateStore on the serialized moto server, the RedisStateCache and the
RedisKeyLock on a real redis-server. The model: per key, version, value, tombstone and expiry, with the
contract's rules. The clock is injected and moved by the test, so TTLs expire on demand; it
drives the core, its DynamoDB conditions (which take `now` from the core) and the cache's checks alike.

Short in make test (deterministic examples); STATE_VERIFY=1 (make verify) runs many more.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from state_core.cache.breaker import CircuitBreaker
from state_core.cache.link import RedisLink, connect
from state_core.cache.lock import RedisKeyLock
from state_core.cache.state_cache import CachePolicy, RedisStateCache, entry_key
from state_core.domain.errors import NotFound, PreconditionFailed
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import Expectation, StateManager
from state_core.storage.state import StateStore
from tests.doubles import SIGNING_KEY, Clock, NoMetrics

pytestmark = [pytest.mark.integration, pytest.mark.verify]

VERIFY = os.environ.get("STATE_VERIFY") == "1"
KEYS = ("a", "b")

values = st.dictionaries(st.sampled_from("xyz"), st.integers(0, 9) | st.booleans(), max_size=3)
patches = st.dictionaries(st.sampled_from("xyzw"), st.none() | st.integers(0, 9), max_size=3)
ttls = st.sampled_from([None, 1, 2, 3])
keys = st.sampled_from(KEYS)


@dataclass
class Model:
    """One key as the contract says it is."""

    version: int = 0
    value: Any = None
    deleted: bool = True  # absent and deleted look the same to a client
    expires_at: float | None = None

    def live(self, now: datetime) -> bool:
        return not self.deleted and (self.expires_at is None or self.expires_at > now.timestamp())

    def touched_by_a_write(self, now: datetime) -> None:
        """Expiry is a change and takes the next version. A write that meets an expired,
        not yet tombstoned version first turns it into the `expired` tombstone (reads only say 404)."""
        if not self.deleted and not self.live(now):
            self.version += 1
            self.value, self.deleted, self.expires_at = None, True, None


def merge(target: Any, patch: Any) -> Any:
    """RFC 7396, written again here so the model does not borrow the code under test."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for name, member in patch.items():
        if member is None:
            out.pop(name, None)
        else:
            out[name] = merge(out.get(name), member)
    return out


class Wiring:
    table: str = ""
    redis_url: str = ""
    operations: dict[str, int] = {}


def tally(name: str) -> None:
    Wiring.operations[name] = Wiring.operations.get(name, 0) + 1


class StateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(datetime.now(UTC).replace(microsecond=0))
        link = RedisLink(
            connect(Wiring.redis_url, password=None, timeout_seconds=2.0),
            CircuitBreaker(open_seconds=1.0),
            on_error=lambda: None,
            signing_key=SIGNING_KEY,
        )
        self.manager = StateManager(
            StateStore(boto3.client("dynamodb", config=DYNAMODB_CONFIG), Wiring.table),
            clock=self.clock,
            metrics=NoMetrics(),
            cache=RedisStateCache(link, NoMetrics(), clock=self.clock, policy=CachePolicy()),
            lock=RedisKeyLock(link, NoMetrics()),
        )
        self.prefix = f"sm:{uuid.uuid4().hex[:12]}:"
        self.redis = redis.Redis.from_url(Wiring.redis_url)
        self.model = {key: Model() for key in KEYS}

    @initialize()
    def start(self) -> None:
        pass

    def now(self) -> datetime:
        return self.clock.now

    # --- rules ------------------------------------------------------------------------------------------

    @rule(key=keys, value=values, ttl=ttls, expect=st.sampled_from(["none", "if-match", "if-match-any", "create"]),
          off_by=st.integers(-1, 1))  # fmt: skip
    def put(self, key: str, value: Any, ttl: int | None, expect: str, off_by: int) -> None:
        tally("put")
        model = self.model[key]
        model.touched_by_a_write(self.now())
        live = model.live(self.now())
        expectation = {
            "none": Expectation(),
            "if-match": Expectation(if_match=max(1, model.version + off_by)),
            "if-match-any": Expectation(if_match="*"),
            "create": Expectation(if_none_match_any=True),
        }[expect]
        allowed = {
            "none": True,
            "if-match": live and expectation.if_match == model.version,
            "if-match-any": live,
            "create": not live,
        }[expect]
        if not allowed:
            with pytest.raises(PreconditionFailed) as failed:
                self.manager.put(self.prefix + key, value, actor="t", ttl_seconds=ttl, expect=expectation)
            assert failed.value.current_version == (model.version if live else None)
            return
        result = self.manager.put(self.prefix + key, value, actor="t", ttl_seconds=ttl, expect=expectation)
        model.version += 1
        model.value, model.deleted = value, False
        model.expires_at = None if ttl is None else self.now().timestamp() + ttl
        assert result.record.version == model.version
        assert result.created == (not live)

    @rule(key=keys, patch=patches, use_if_match=st.booleans(), off_by=st.integers(-1, 1))
    def patch(self, key: str, patch: dict[str, Any], use_if_match: bool, off_by: int) -> None:
        tally("patch")
        model = self.model[key]
        model.touched_by_a_write(self.now())
        live = model.live(self.now())
        if_match = max(1, model.version + off_by) if use_if_match else None
        expectation = Expectation(if_match=if_match)
        if not live:
            with pytest.raises(PreconditionFailed if use_if_match else NotFound):
                self.manager.patch(self.prefix + key, patch, actor="t", expect=expectation)
            return
        if use_if_match and if_match != model.version:
            with pytest.raises(PreconditionFailed) as failed:
                self.manager.patch(self.prefix + key, patch, actor="t", expect=expectation)
            assert failed.value.current_version == model.version
            return
        result, canonical = self.manager.patch(self.prefix + key, patch, actor="t", expect=expectation)
        model.version += 1
        model.value = merge(model.value, patch)
        assert result.record.version == model.version
        import json

        assert json.loads(canonical) == model.value

    @rule(key=keys, use_if_match=st.booleans(), off_by=st.integers(-1, 1))
    def delete(self, key: str, use_if_match: bool, off_by: int) -> None:
        tally("delete")
        model = self.model[key]
        model.touched_by_a_write(self.now())
        live = model.live(self.now())
        if_match = max(1, model.version + off_by) if use_if_match else None
        expectation = Expectation(if_match=if_match)
        if not live or (use_if_match and if_match != model.version):
            with pytest.raises(PreconditionFailed if use_if_match else NotFound):
                self.manager.delete(self.prefix + key, actor="t", expect=expectation)
            return
        tombstone = self.manager.delete(self.prefix + key, actor="t", expect=expectation)
        model.version += 1
        model.value, model.deleted, model.expires_at = None, True, None
        assert tombstone.version == model.version

    @rule(key=keys, consistent=st.booleans())
    def get(self, key: str, consistent: bool) -> None:
        self._check_read(key, consistent)

    @rule(key=keys)
    def redis_forgets(self, key: str) -> None:
        """Redis loses the entry (eviction, restart): the next read fills again from DynamoDB."""
        tally("redis_forgets")
        self.redis.delete(entry_key(self.prefix + key))

    @rule(seconds=st.integers(1, 3))
    def time_passes(self, seconds: int) -> None:
        tally("time_passes")
        self.clock.advance(seconds)

    @invariant()
    def cached_reads_agree_with_the_model(self) -> None:
        for key in KEYS:
            self._check_read(key, consistent=False)

    def _check_read(self, key: str, consistent: bool) -> None:
        import json

        tally("get")
        model = self.model[key]
        if not model.live(self.now()):
            with pytest.raises(NotFound):
                self.manager.get(self.prefix + key, consistent=consistent)
            return
        view = self.manager.get(self.prefix + key, consistent=consistent)
        assert view.record.version == model.version
        assert json.loads(view.canonical_value) == model.value
        assert view.record.expires_at == model.expires_at


@pytest.fixture
def wiring(state_table, redis_server):
    Wiring.table, Wiring.redis_url = state_table, redis_server.url
    return Wiring


def test_the_core_behaves_like_its_model(wiring):
    run = StateMachine.TestCase
    run.settings = settings(
        max_examples=200 if VERIFY else 25,
        stateful_step_count=40 if VERIFY else 25,
        deadline=None,
        derandomize=not VERIFY,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        print_blob=True,
    )
    Wiring.operations = {}
    run().runTest()
    print(f"\nstate machine: {sum(Wiring.operations.values())} operations {Wiring.operations}")
    assert min(Wiring.operations.get(name, 0) for name in ("put", "patch", "delete", "get", "time_passes")) > 0
