"""The service's answers as frozen dataclasses (docs/api.md): times are aware UTC datetimes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

JSON = Any
Operation = Literal["created", "updated", "deleted", "expired"]


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 time of the service (``2026-11-28T06:47:55.739Z``), or None for null."""
    if text is None:
        return None
    return datetime.fromisoformat(str(text))


def _required_time(text: Any) -> datetime:
    parsed = parse_time(text)
    if parsed is None:
        raise ValueError("a required time is null")
    return parsed


def etag_of(version: int) -> str:
    return f'"{version}"'


@dataclass(frozen=True)
class Envelope:
    """A key's state: its value (None where the answer carries none, as a DELETE's) and metadata."""

    key: str
    value: JSON
    version: int
    created_at: datetime | None
    updated_at: datetime | None
    updated_by: str | None
    expires_at: datetime | None

    @property
    def etag(self) -> str:
        """The strong ETag of this version, for If-Match."""
        return etag_of(self.version)

    @classmethod
    def from_json(cls, body: dict[str, Any], *, value: JSON = None) -> Envelope:
        return cls(
            key=body["key"],
            value=body.get("value", value),
            version=int(body["version"]),
            created_at=parse_time(body.get("created_at")),
            updated_at=parse_time(body.get("updated_at")),
            updated_by=body.get("updated_by"),
            expires_at=parse_time(body.get("expires_at")),
        )


@dataclass(frozen=True)
class VersionInfo:
    """One entry of a key's history."""

    version: int
    operation: Operation
    actor: str
    occurred_at: datetime
    size: int | None
    transaction_id: str | None = None  # the transaction that wrote this version, if one did

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> VersionInfo:
        return cls(
            version=int(body["version"]),
            operation=body["operation"],
            actor=body["actor"],
            occurred_at=_required_time(body["occurred_at"]),
            size=body.get("size"),
            transaction_id=body.get("transaction_id"),
        )


@dataclass(frozen=True)
class KeyInfo:
    """One key of a listing; `value` only when listed with values (`value_omitted` for large blobs)."""

    key: str
    version: int
    updated_at: datetime | None
    size: int | None
    expires_at: datetime | None
    value: JSON = None
    value_omitted: bool = False

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> KeyInfo:
        return cls(
            key=body["key"],
            version=int(body["version"]),
            updated_at=parse_time(body.get("updated_at")),
            size=body.get("size"),
            expires_at=parse_time(body.get("expires_at")),
            value=body.get("value"),
            value_omitted=bool(body.get("value_omitted", False)),
        )


@dataclass(frozen=True)
class Page[T]:
    """One page of a listing or a history, and the cursor of the next (None on the last)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class Change:
    """A change of a watched key (docs/watch.md). `value` is None for deletions and expiries, and when
    `value_omitted` (too large for a message: read it with ``get_version(key, version)``)."""

    key: str
    version: int
    operation: Operation
    occurred_at: datetime
    cursor: str
    value: JSON = None
    value_omitted: bool = False

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Change:
        return cls(
            key=body["key"],
            version=int(body["version"]),
            operation=body["operation"],
            occurred_at=_required_time(body["occurred_at"]),
            cursor=body["cursor"],
            value=body.get("value"),
            value_omitted=bool(body.get("value_omitted", False)),
        )


@dataclass(frozen=True)
class Resync:
    """Versions that could not be replayed (past retention, or too many). With `key`: that key's, read it;
    the watch goes on from its current version. With `prefix` (and `key` None): a prefix watch could not be
    resumed and goes on as a new watch from now; list the prefix."""

    key: str | None
    reason: str
    prefix: str | None = None


type WatchEvent = Change | Resync


@dataclass(frozen=True)
class OperationResult:
    """One operation of an applied transaction: the key's new version (a delete: its tombstone's; a check:
    the version it checked, None for a checked absence), and whether a put started a new life of the key."""

    index: int
    op: Literal["put", "patch", "delete", "check"]
    key: str
    version: int | None
    created: bool

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> OperationResult:
        version = body.get("version")
        return cls(
            int(body["index"]),
            body["op"],
            body["key"],
            None if version is None else int(version),
            bool(body["created"]),
        )


@dataclass(frozen=True)
class TransactionResult:
    """An applied transaction. `replayed`: the answer is the first outcome of an earlier request with the same
    idempotency key (the transaction was applied once, by that request)."""

    transaction_id: str
    results: list[OperationResult]
    replayed: bool = False

    @classmethod
    def from_json(cls, body: dict[str, Any], *, replayed: bool = False) -> TransactionResult:
        return cls(body["transaction_id"], [OperationResult.from_json(r) for r in body["results"]], replayed)
