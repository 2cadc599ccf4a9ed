"""Multi-key transactions: up to 25 puts, patches, deletes and checks applied all or nothing.

Every round reads the keys together (strongly consistent), decides each operation's condition on what it
read (412 at once, naming each failed operation), merges the patches, and commits one TransactWriteItems in
which every key is conditioned on exactly the state read: its version (or its absence). So the explicit
conditions DynamoDB would check are implied by the exact ones, a key changed since the read cancels the
whole commit (nothing written), and the round starts again within the patch time budget. TransactWriteItems
returns no attributes: reading first is also how the service knows each key's next version.

After the commit every written key goes through the single-key writes' own follow-up: the versioned cache
write-through (StateManager.write_through). The stream does the rest, per key version, as for any write.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from state_core import failpoints
from state_core.domain.codec import canonical_json
from state_core.domain.errors import PayloadTooLarge, ServiceUnavailable
from state_core.domain.merge_patch import apply_merge_patch
from state_core.domain.schemas import SchemaViolation
from state_core.domain.transactions import (
    IDEMPOTENCY_SECONDS,
    MAX_TRANSACTION_STORED_BYTES,
    MAX_TRANSACTION_VALUE_BYTES,
    FailedOperation,
    IdempotencyKeyReused,
    Operation,
    OperationResult,
    Outcome,
    PlannedOperation,
    Transaction,
    TransactionConflict,
    TransactionPreconditionFailed,
    TransactionResult,
)
from state_core.service.manager import PatchPolicy, StateManager

if TYPE_CHECKING:
    from state_core.domain.codec import StoredValue
    from state_core.domain.ports import MetricsSink, TransactionWrites
    from state_core.domain.records import SchemaStamp, StateRecord

# How a result or a failed condition is answered (api/transact.py): the service remembers exactly that.
Render = Callable[[TransactionResult | TransactionPreconditionFailed], Outcome]


@dataclass(slots=True)
class _Attempt:
    """One transaction's rounds: what stays the same across them, and the round's number."""

    transaction: Transaction
    actor: str
    render: Render
    partition: str | None
    transaction_id: str
    deadline: float
    number: int = 0
    # The last commit sent and its outcome: a commit refused after a retry may be one that had landed.
    sent: Outcome | None = None


class Transactions:
    """Applies transactions; `manager` lends the single-key writes' expiry, encoding and cache steps."""

    def __init__(
        self,
        writes: TransactionWrites,
        manager: StateManager,
        *,
        clock: Callable[[], datetime],
        metrics: MetricsSink,
        policy: PatchPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._writes = writes
        self._manager = manager
        self._clock = clock
        self._metrics = metrics
        self._policy = policy or PatchPolicy()
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not security

    def transact(
        self, transaction: Transaction, *, actor: str, render: Render, idempotency_partition: str | None = None
    ) -> Outcome:
        """Apply `transaction` all or nothing: 200 with each key's new version, or 412 naming each failed
        operation (nothing written). Under an idempotency partition, the first such outcome is remembered for
        10 minutes and answers every retry with the same body (IdempotencyKeyReused for another body)."""
        if idempotency_partition is not None:
            # Before the values are judged: a retry answers the first outcome even where a schema published
            # since would now refuse a value it holds.
            prior = self._writes.outcome(idempotency_partition, self._clock())
            if prior is not None:
                return self._replay(prior, transaction)
        puts = {op.index: self._encoded(op) for op in transaction.operations if op.op == "put"}
        attempt = _Attempt(
            transaction,
            actor=actor,
            render=render,
            partition=idempotency_partition,
            transaction_id=secrets.token_hex(12),
            deadline=self._monotonic() + self._policy.time_budget_seconds,
        )
        while True:
            attempt.number += 1
            outcome = self._round(attempt, puts)
            if outcome is not None:
                return outcome

    def _round(self, attempt: _Attempt, puts: dict[int, tuple[StoredValue, SchemaStamp | None]]) -> Outcome | None:
        """One read, decide and commit; None when the transaction must be read again."""
        transaction, partition = attempt.transaction, attempt.partition
        now = self._clock()
        keys = [op.key for op in transaction.operations]
        current = self._writes.read(keys)
        ours = [r for r in current.values() if r is not None and r.transaction_id == attempt.transaction_id]
        if ours and attempt.sent is not None:
            # The commit landed though its answer said otherwise: botocore retried one whose answer was lost,
            # and that retry was refused on the versions the first one had moved. All of it landed (our id is on
            # a key), so it is answered as it was sent; keys written again since are already newer in the cache.
            self._acknowledge(ours)
            self._metrics.add_metric(name="Transactions", unit="Count", value=1)
            return attempt.sent
        due = [record for record in current.values() if record is not None and _past_expiry(record, now)]
        if due:
            # Expiry is a change of its own (one version, one event), written before anything goes over it.
            for record in due:
                self._manager.expire(record.key, record, now)
            if self._monotonic() > attempt.deadline:
                raise ServiceUnavailable("the transaction's keys kept changing; retry shortly")
            return None
        failed = [failure for op in transaction.operations if (failure := _failed_condition(op, current[op.key], now))]
        if failed:
            return self._refused(attempt, TransactionPreconditionFailed(failed), now)
        planned = self._plan(transaction, current, puts, now)
        if planned is None:
            return None  # a large value changed under the patch that loaded it
        outcome = attempt.render(TransactionResult(attempt.transaction_id, [_result(step) for step in planned]))
        remember = None
        if partition is not None:
            outcome = replace(outcome, fingerprint=transaction.fingerprint, expires_at=_expiry(now))
            remember = (partition, outcome)
        if failpoints.ENABLED:
            failpoints.hit("transact_before_commit", keys=keys, attempt=attempt.number)
        attempt.sent = outcome
        try:
            records = self._writes.commit(
                planned,
                actor=attempt.actor,
                now=now,
                transaction_id=attempt.transaction_id,
                attempt=attempt.number,
                remember=remember,
            )
        except TransactionConflict:
            return self._after_conflict(attempt)
        self._acknowledge(records)
        self._metrics.add_metric(name="Transactions", unit="Count", value=1)
        return outcome

    def _refused(self, attempt: _Attempt, error: TransactionPreconditionFailed, now: datetime) -> Outcome:
        """412, remembered under the request's Idempotency-Key unless an outcome is there first."""
        if attempt.partition is None:
            return attempt.render(error)
        fingerprint = attempt.transaction.fingerprint
        outcome = replace(attempt.render(error), fingerprint=fingerprint, expires_at=_expiry(now))
        first = self._writes.remember(attempt.partition, outcome, now)
        if first is None:
            return outcome
        if attempt.sent is not None and first.body == attempt.sent.body:
            # An earlier round's commit landed after all (its keys written over since), its write-throughs never made.
            self._catch_up(attempt.transaction)
            return attempt.sent
        return self._replay(first, attempt.transaction)

    def _after_conflict(self, attempt: _Attempt) -> Outcome | None:
        """A key changed since it was read: back off and read again, within the time budget (503 past it)."""
        self._metrics.add_metric(name="Conflicts", unit="Count", value=1)
        if attempt.partition is not None:
            prior = self._writes.outcome(attempt.partition, self._clock())
            if prior is not None and attempt.sent is not None and prior.body == attempt.sent.body:
                # Our own record (its body holds our transaction id): the commit landed, and what was refused was
                # botocore's retry of it. Answered as this request's own outcome, after its write-throughs.
                keys = [op.key for op in attempt.transaction.operations]
                current = self._writes.read(keys).values()
                self._acknowledge([r for r in current if r is not None and r.transaction_id == attempt.transaction_id])
                self._metrics.add_metric(name="Transactions", unit="Count", value=1)
                return attempt.sent
            if prior is not None:
                return self._replay(prior, attempt.transaction)  # the same key's first request came first
        delay = self._policy.delay(attempt.number, self._rng)
        if self._monotonic() + delay > attempt.deadline:
            raise ServiceUnavailable(
                f"the transaction lost {attempt.number} races to concurrent writers; retry shortly"
            ) from None
        self._metrics.add_metric(name="Retries", unit="Count", value=1)
        self._sleep(delay)
        return None

    def _replay(self, prior: Outcome, transaction: Transaction) -> Outcome:
        """The first outcome of this Idempotency-Key again. A 200 acknowledges the transaction as the first answer
        did, but the first request may have died between its commit and its write-throughs, or not have reached
        them yet: the written keys are caught up first, so no read after this answer is older either."""
        outcome = _replayed(prior, transaction)
        if outcome.status == 200:
            self._catch_up(transaction)
        return outcome

    def _catch_up(self, transaction: Transaction) -> None:
        """Write through the current state of every key the transaction writes (one strongly consistent read):
        at the transaction's version or a later one, and a write-through never replaces a newer entry."""
        written = [op.key for op in transaction.operations if op.writes]
        if not written:
            return
        for record in self._writes.read(written).values():
            if record is not None:
                self._manager.write_through(record)

    def _acknowledge(self, records: Sequence[StateRecord | None]) -> None:
        """Each written key's cache write-through, exactly as a single write's, before the answer: a read that
        starts after the acknowledgement never gets an older version of any of them."""
        if failpoints.ENABLED:
            failpoints.hit("transact_after_commit_before_cache")
        for record in records:
            if record is None:
                continue
            self._manager.write_through(record)
            if failpoints.ENABLED:
                failpoints.hit("transact_after_cache_write", key=record.key)

    def _encoded(self, op: Operation) -> tuple[StoredValue, SchemaStamp | None]:
        """A put's value as stored, refused before its key is read if it cannot be part of a transaction, and the
        schema it was checked against."""
        stored = self._manager.encode(op.value)
        _check_fits(op, stored)
        return stored, _check_schema(self._manager, op, op.value)

    def _plan(
        self,
        transaction: Transaction,
        current: dict[str, StateRecord | None],
        puts: dict[int, tuple[StoredValue, SchemaStamp | None]],
        now: datetime,
    ) -> list[PlannedOperation] | None:
        planned: list[PlannedOperation] = []
        for op in transaction.operations:
            record = current[op.key]
            if op.op == "put":
                expires_at = None if op.ttl_seconds is None else now.timestamp() + op.ttl_seconds
                stored, schema = puts[op.index]
                planned.append(PlannedOperation(op, record, stored, expires_at, schema))
            elif op.op == "patch":
                assert record is not None  # _failed_condition: a patch needs a live key
                if record.value is None:
                    loaded = self._writes.load(op.key)  # a large value, not read with the others
                    if loaded is None or loaded.version != record.version or loaded.value is None:
                        return None
                    record = loaded
                assert record.value is not None
                merged = apply_merge_patch(json.loads(self._manager.canonical(record)), op.patch)
                stored = self._manager.encode_canonical(canonical_json(merged))
                _check_fits(op, stored)
                schema = _check_schema(self._manager, op, merged)
                planned.append(PlannedOperation(op, replace(record, value=None), stored, record.expires_at, schema))
            else:
                planned.append(PlannedOperation(op, record))
        total = sum(len(step.value.data) for step in planned if step.value is not None)
        if total > MAX_TRANSACTION_STORED_BYTES:
            raise PayloadTooLarge(
                f"the transaction's values take {total} bytes stored; a transaction holds at most"
                f" {MAX_TRANSACTION_STORED_BYTES}"
            )
        return planned


def _check_schema(manager: StateManager, op: Operation, value: Any) -> SchemaStamp | None:
    """The key's schema judges the value the operation would store; a violation names the operation."""
    try:
        return manager.check_schema(op.key, value)
    except SchemaViolation as violation:
        violation.operation_index = op.index
        violation.detail = f"operations[{op.index}]: {violation.detail}"
        raise


def _check_fits(op: Operation, stored: StoredValue) -> None:
    if len(stored.data) > MAX_TRANSACTION_VALUE_BYTES:
        raise PayloadTooLarge(
            f"operations[{op.index}]: the value takes {len(stored.data)} bytes stored (compressed); a value in a"
            f" transaction must fit its item, at most {MAX_TRANSACTION_VALUE_BYTES} bytes: write it on its own"
        )


def _past_expiry(record: StateRecord, now: datetime) -> bool:
    return not record.deleted and record.expires_at is not None and not record.is_live(now)


def _failed_condition(op: Operation, record: StateRecord | None, now: datetime) -> FailedOperation | None:
    """The operation's condition on the state read: its explicit if_match / if_none_match, and the implicit
    one of a patch or delete (the key exists). A put without a condition always holds."""
    live = record is not None and record.is_live(now)
    version = record.version if live and record is not None else None
    if isinstance(op.if_match, int):
        holds = version == op.if_match
    elif op.if_match == "*" or op.op in ("patch", "delete"):
        holds = live
    elif op.if_none_match:
        holds = not live
    else:
        holds = True
    return None if holds else FailedOperation(op.index, op.key, version)


def _result(step: PlannedOperation) -> OperationResult:
    op, current = step.operation, step.current
    if op.op == "check":
        live_version = None if current is None or current.deleted else current.version
        return OperationResult(op.index, op.op, op.key, live_version)
    created = op.op != "delete" and (current is None or current.deleted)
    return OperationResult(op.index, op.op, op.key, step.next_version, created)


def _expiry(now: datetime) -> float:
    return now.timestamp() + IDEMPOTENCY_SECONDS


def _replayed(prior: Outcome, transaction: Transaction) -> Outcome:
    if prior.fingerprint != transaction.fingerprint:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used in the last 10 minutes for a different transaction; use a new key"
        )
    return replace(prior, replayed=True)
