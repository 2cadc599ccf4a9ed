"""A multi-key transaction as the service accepts it: the operations of `POST /state:transact`, their checks
(before any I/O), and what a transaction answers. No I/O here.

Body: `{"operations": [{"op": "put" | "patch" | "delete" | "check", "key": ..., ...}, ...]}`, 1-25 operations
on distinct keys. Every malformed body is a 400 naming the operation and member, never a value.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from state_core.domain.codec import StoredValue, canonical_json, check_depth
from state_core.domain.errors import BadRequest, InvalidKey, PreconditionFailed, StateError
from state_core.domain.keys import validate_key
from state_core.domain.records import MAX_TTL_SECONDS, SchemaStamp, StateRecord

# DynamoDB's TransactWriteItems takes 100 actions; the contract (and etcd's default) is 25, which
# leaves room for the idempotency record and keeps a conflict-retried transaction cheap.
MAX_OPERATIONS = 25
# A transaction writes state items only, never a large value's blob chunks: each value must fit inline in its
# item, as stored (compressed), the inline limit of storage.state.INLINE_VALUE_BYTES (a unit test holds them
# equal). TransactWriteItems caps a transaction at 4 MB of items: the stored values together may take this
# much, which leaves room for the items' other attributes and the idempotency record.
MAX_TRANSACTION_VALUE_BYTES = 350_000
MAX_TRANSACTION_STORED_BYTES = 3_500_000
# The Idempotency-Key header: a client's opaque token, printable ASCII.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}\Z")
# How long a transaction's first outcome answers its retries.
IDEMPOTENCY_SECONDS = 600

OpKind = Literal["put", "patch", "delete", "check"]
_MEMBERS: dict[str, frozenset[str]] = {
    "put": frozenset({"op", "key", "value", "ttl_seconds", "if_match", "if_none_match"}),
    "patch": frozenset({"op", "key", "patch", "if_match"}),
    "delete": frozenset({"op", "key", "if_match"}),
    "check": frozenset({"op", "key", "if_match", "if_none_match"}),
}
_VERSION_LIMIT = 10**18


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation: `if_match` is a version or "*" (the key exists), `if_none_match` means "the key does not
    exist". `value` is a put's value, `patch` a patch's merge patch."""

    index: int
    op: OpKind
    key: str
    value: Any = None
    patch: Any = None
    ttl_seconds: int | None = None
    if_match: int | Literal["*"] | None = None
    if_none_match: bool = False

    @property
    def writes(self) -> bool:
        return self.op != "check"


@dataclass(frozen=True, slots=True)
class Transaction:
    operations: tuple[Operation, ...]
    # SHA-256 of the body's canonical JSON: a retry under the same Idempotency-Key must send the same body.
    fingerprint: str


@dataclass(frozen=True, slots=True)
class FailedOperation:
    index: int
    key: str
    current_version: int | None  # None: the key does not exist (absent, deleted or expired)


class TransactionPreconditionFailed(PreconditionFailed):
    """412 for a transaction: each operation whose condition failed, with the key's current version."""

    def __init__(self, failed: list[FailedOperation]) -> None:
        names = ", ".join(f"operations[{f.index}] ({f.key})" for f in failed)
        super().__init__(f"the conditions of {names} do not hold; nothing was written", current_version=None)
        self.failed = failed

    def extensions(self) -> dict[str, Any]:
        return {
            "failed_operations": [
                {"index": f.index, "key": f.key, "current_version": f.current_version} for f in self.failed
            ]
        }


class IdempotencyKeyReused(StateError):
    """The Idempotency-Key was first used (within its 10 minutes) for a different body."""

    status, title, slug = 422, "Idempotency key reused", "idempotency-key-reused"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a transaction answered (status and JSON body), as its Idempotency-Key remembers it."""

    status: int
    body: str
    fingerprint: str = ""
    expires_at: float = 0.0
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class OperationResult:
    index: int
    op: OpKind
    key: str
    version: int | None  # the new version (a check: the version it checked; None if it checked absence)
    created: bool = False


@dataclass(frozen=True, slots=True)
class TransactionResult:
    transaction_id: str
    results: list[OperationResult] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "results": [
                {"index": r.index, "op": r.op, "key": r.key, "version": r.version, "created": r.created}
                for r in self.results
            ],
        }


def parse_transaction(data: Any) -> Transaction:
    """`data` (the parsed body) as a transaction; BadRequest (400) for anything malformed."""
    if not isinstance(data, dict) or set(data) != {"operations"}:
        raise BadRequest('the body must be a JSON object with one member, "operations"')
    raw_operations = data["operations"]
    if not isinstance(raw_operations, list) or not raw_operations:
        raise BadRequest("operations must be a non-empty array")
    if len(raw_operations) > MAX_OPERATIONS:
        raise BadRequest(f"a transaction has at most {MAX_OPERATIONS} operations, not {len(raw_operations)}")
    operations = tuple(_operation(index, raw) for index, raw in enumerate(raw_operations))
    seen: dict[str, int] = {}
    for operation in operations:
        if operation.key in seen:
            raise BadRequest(
                f"operations[{operation.index}]: key {operation.key} is already in operations[{seen[operation.key]}];"
                " keys must be distinct"
            )
        seen[operation.key] = operation.index
    return Transaction(operations, hashlib.sha256(canonical_json(data)).hexdigest())


def _operation(index: int, raw: Any) -> Operation:
    where = f"operations[{index}]"
    if not isinstance(raw, dict):
        raise BadRequest(f"{where} must be a JSON object")
    op = raw.get("op")
    if not isinstance(op, str) or op not in _MEMBERS:
        raise BadRequest(f"{where}.op must be one of put, patch, delete, check")
    unknown = sorted(name[:40] for name in raw if name not in _MEMBERS[op])[:5]
    if unknown:
        raise BadRequest(f"{where}: {', '.join(repr(n) for n in unknown)} not allowed in a {op} operation")
    try:
        key = validate_key(raw.get("key"))  # type: ignore[arg-type]  # validated here: any JSON may come
    except InvalidKey as exc:
        raise InvalidKey(f"{where}.key: {exc.detail}") from None
    if_match = _if_match(where, raw)
    if_none_match = _if_none_match(where, raw)
    if if_match is not None and if_none_match:
        raise BadRequest(f"{where}: if_match and if_none_match cannot be combined")
    if op == "check" and if_match is None and not if_none_match:
        raise BadRequest(f"{where}: a check needs if_match or if_none_match")
    if op == "put":
        if "value" not in raw:
            raise BadRequest(f"{where}.value is required in a put")
        check_depth(raw["value"])
        return Operation(
            index,
            "put",
            key,
            value=raw["value"],
            ttl_seconds=_ttl(where, raw.get("ttl_seconds")),
            if_match=if_match,
            if_none_match=if_none_match,
        )
    if op == "patch":
        if "patch" not in raw:
            raise BadRequest(f"{where}.patch is required in a patch")
        check_depth(raw["patch"])
        canonical_json(raw["patch"])  # a lone surrogate is invalid even where it only removes
        return Operation(index, "patch", key, patch=raw["patch"], if_match=if_match)
    return Operation(index, op, key, if_match=if_match, if_none_match=if_none_match)  # type: ignore[arg-type]


def _if_match(where: str, raw: dict[str, Any]) -> int | Literal["*"] | None:
    value = raw.get("if_match")
    if value is None:
        return None
    if value == "*":
        return "*"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or not 1 <= value < _VERSION_LIMIT:
        raise BadRequest(f'{where}.if_match must be a version (a whole number from 1) or "*"')
    return value


def _if_none_match(where: str, raw: dict[str, Any]) -> bool:
    value = raw.get("if_none_match")
    if value is None:
        return False
    if value != "*":
        raise BadRequest(f'{where}.if_none_match must be "*" (the key must not exist)')
    return True


def _ttl(where: str, raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if type(raw) is not int or not 1 <= raw <= MAX_TTL_SECONDS:
        raise BadRequest(f"{where}.ttl_seconds must be a whole number of seconds from 1 to {MAX_TTL_SECONDS}")
    return raw


def idempotency_key(header: str | None) -> str | None:
    """The Idempotency-Key header, if given: 1-255 printable ASCII characters, else 400."""
    if header is None:
        return None
    if IDEMPOTENCY_KEY.match(header) is None:
        raise BadRequest("Idempotency-Key must be 1-255 printable ASCII characters without spaces")
    return header


@dataclass(frozen=True, slots=True)
class PlannedOperation:
    """An operation ready to commit: the state it read (the commit is conditioned on exactly that state) and,
    for a put or patch, the stored value and the new version's expiry."""

    operation: Operation
    current: StateRecord | None
    value: StoredValue | None = None
    expires_at: float | None = None
    schema: SchemaStamp | None = None  # the schema a put's or patch's value was checked against

    @property
    def next_version(self) -> int:
        return 1 if self.current is None else self.current.version + 1


class TransactionConflict(Exception):
    """The commit was cancelled because a key changed since it was read (or another transaction held it):
    nothing was written; the transaction is read and planned again."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("transaction cancelled: " + ", ".join(reasons))
        self.reasons = reasons


IDEMPOTENCY_PREFIX = "idem#"


def idempotency_partition(subject: str, idempotency_key: str) -> str:
    """The partition key of an idempotency record: scoped to the caller, so one subject's token never answers
    another's, and hashed, so neither the subject nor the token is stored and the length is fixed. `#` is
    never in a state key, so the record cannot share a key's partition."""
    digest = hashlib.sha256(f"{subject}\x00{idempotency_key}".encode()).hexdigest()
    return IDEMPOTENCY_PREFIX + digest
