"""Value schemas: a named JSON Schema (draft 2020-12) governing the keys that match its patterns.

Pure rules, no I/O and no validator: names, patterns and which keys a schema governs, the registry's
records, and the 422 a value that violates its schema gets. The validator itself is loaded by
`service.schemas` only when a governed key is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Protocol

from state_core.domain.errors import BadRequest, Conflict, StateError
from state_core.domain.keys import KEY_PATTERN

NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,63}"
_NAME = re.compile(NAME_PATTERN + r"\Z")
# A pattern is an exact key, or a prefix followed by `*` (an empty prefix would govern every key).
_PATTERN = re.compile(rf"(?:{KEY_PATTERN})\*?\Z")
MAX_PATTERNS = 20
MAX_SCHEMA_BYTES = 65_536
# A 422 lists this many violations, then how many more there were.
MAX_VIOLATIONS = 20
MODES = ("checked", "forward")
# A check's id: 32 hex digits (a uuid4), so a path segment that is anything else is refused before a read.
CHECK_ID = re.compile(r"[0-9a-f]{32}\Z")
# A check's page of offending keys.
DEFAULT_CHECK_PAGE = 100
MAX_CHECK_PAGE = 1000
# The offending keys a check records (it counts them all): enough to fix them, bounded in storage.
MAX_OFFENDING_RECORDED = 1000
# Each offending key keeps this many of its violations.
OFFENDING_VIOLATIONS = 3
CHECK_STATES = ("settling", "running", "passed", "refused")


def validate_check_id(check_id: str) -> str:
    if not CHECK_ID.match(check_id):
        raise BadRequest("a check id is 32 hexadecimal digits (lower case)")
    return check_id


def validate_name(name: str) -> str:
    if not _NAME.match(name):
        raise BadRequest(
            f"a schema name is 1 to 64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit: {name!r}"
        )
    return name


def validate_patterns(patterns: object) -> tuple[str, ...]:
    """1 to 20 distinct patterns, each an exact key or a key prefix ending in `*`."""
    if not isinstance(patterns, list) or not patterns or len(patterns) > MAX_PATTERNS:
        raise BadRequest(f"patterns must be a list of 1 to {MAX_PATTERNS} key patterns")
    for pattern in patterns:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise BadRequest(f"a pattern is a key, or a key prefix followed by '*': {pattern!r}")
    if len(set(patterns)) != len(patterns):
        raise BadRequest("patterns must be distinct")
    return tuple(patterns)


def pattern_matches(pattern: str, key: str) -> bool:
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some key matches both patterns."""
    if a.endswith("*") and b.endswith("*"):
        return a[:-1].startswith(b[:-1]) or b[:-1].startswith(a[:-1])
    if a.endswith("*"):
        return pattern_matches(a, b)
    if b.endswith("*"):
        return pattern_matches(b, a)
    return a == b


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One published version of a named schema. `document` is the JSON Schema as published (canonical
    JSON text); `mode` is `forward` when it was published without checking the values already stored."""

    name: str
    version: int
    document: str
    patterns: tuple[str, ...]
    created_at: str
    created_by: str
    mode: str = "checked"
    # Set while this version is being checked against the values already stored (not yet published).
    check_id: str | None = None

    def with_check(self, check_id: str | None) -> SchemaVersion:
        return replace(self, check_id=check_id)

    def governs(self, key: str) -> bool:
        return any(pattern_matches(pattern, key) for pattern in self.patterns)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "patterns": list(self.patterns),
            "mode": self.mode,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


def governing(schemas: tuple[SchemaVersion, ...] | list[SchemaVersion], key: str) -> SchemaVersion | None:
    """The schema governing `key`, if any: publishing refuses overlapping patterns, so at most one does."""
    for schema in schemas:
        if schema.governs(key):
            return schema
    return None


def overlapping(patterns: tuple[str, ...], others: list[SchemaVersion], name: str) -> list[str]:
    """What in other schemas' patterns a key of `patterns` could also match: a key governed by two schemas
    would have two answers to "is this value valid", so publishing refuses it."""
    return [
        f"{pattern} overlaps {other.name}'s {theirs}"
        for other in others
        if other.name != name
        for theirs in other.patterns
        for pattern in patterns
        if patterns_overlap(pattern, theirs)
    ]


@dataclass(frozen=True, slots=True)
class CheckProgress:
    """How far a check got: keys checked, offending keys found, where it goes on (`cursor`: the pattern's
    index, the shard's index and the last key read, or `done`), and when a runner last recorded it."""

    checked: int = 0
    offending: int = 0
    cursor: str = "0:0:"
    heartbeat: float = 0.0

    @property
    def done(self) -> bool:
        return self.cursor == "done"

    def position(self) -> tuple[int, int, str | None]:
        pattern, shard, last = self.cursor.split(":", 2)
        return int(pattern), int(shard), last or None


def cursor_at(pattern: int, shard: int, last: str | None) -> str:
    return f"{pattern}:{shard}:{last or ''}"


@dataclass(frozen=True, slots=True)
class SchemaCheck:
    """A check of a pending version against the values already stored under its patterns: `settling` until
    every write checked without the pending version has landed, then `running`, then `passed` (published)
    or `refused` (offending keys found; not published)."""

    id: str
    name: str
    version: int
    patterns: tuple[str, ...]
    state: str
    created_at: str
    created_by: str
    settle_until: float  # epoch seconds
    progress: CheckProgress
    finished_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("passed", "refused")

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "patterns": list(self.patterns),
            "state": self.state,
            "keys_checked": self.progress.checked,
            "offending_key_count": self.progress.offending,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "finished_at": self.finished_at,
        }


@dataclass(frozen=True, slots=True)
class Violation:
    pointer: str  # JSON Pointer (RFC 6901) into the value
    message: str


@dataclass(frozen=True, slots=True)
class OffendingKey:
    """A key whose current value a checked version refuses: the first of its violations and how many."""

    key: str
    violation_count: int
    violations: tuple[Violation, ...]

    def summary(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "violation_count": self.violation_count,
            "violations": [{"pointer": v.pointer, "message": v.message} for v in self.violations],
        }


class SchemaViolation(StateError):
    """A value its key's schema refuses: 422, nothing written. Lists at most MAX_VIOLATIONS violations,
    each a JSON Pointer and the validator's message, and how many there were in all."""

    status, title, slug = 422, "Value violates its schema", "schema-violation"

    def __init__(self, key: str, schema: SchemaVersion, violations: list[Violation], total: int) -> None:
        super().__init__(
            f"the value of key {key} does not satisfy schema {schema.name} version {schema.version}: "
            f"{total} violation{'s' if total != 1 else ''}"
        )
        self.key = key
        self.schema_name = schema.name
        self.schema_version = schema.version
        self.violations = violations[:MAX_VIOLATIONS]
        self.total = total
        self.operation_index: int | None = None  # a transaction's operation

    def extensions(self) -> dict[str, Any]:
        where = {} if self.operation_index is None else {"index": self.operation_index}
        return {
            **where,
            "key": self.key,
            "schema": {"name": self.schema_name, "version": self.schema_version},
            "violations": [{"pointer": v.pointer, "message": v.message} for v in self.violations],
            "violation_count": self.total,
        }


class SchemaConflict(Conflict):
    """A publish the registry refuses as it stands: another publish came first, or patterns overlap."""

    def __init__(self, detail: str, reasons: list[str]) -> None:
        super().__init__(detail)
        self.reasons = reasons

    def extensions(self) -> dict[str, Any]:
        return {"reasons": self.reasons}


class SchemaSource(Protocol):
    """The registry's storage (storage.schemas.SchemaStore), as the service needs it."""

    def current(self) -> list[SchemaVersion]: ...
    def registry(self) -> list[SchemaVersion]: ...
    def version(self, name: str, version: int | None) -> SchemaVersion | None: ...
    def versions(self, name: str) -> list[SchemaVersion]: ...
    def publish(self, schema: SchemaVersion, *, previous: int | None, revision: int) -> None: ...
    def revision(self) -> int: ...
    def begin_check(
        self, schema: SchemaVersion, check: SchemaCheck, *, previous: int | None, revision: int
    ) -> None: ...
    def end_check(self, schema: SchemaVersion, check: SchemaCheck, *, revision: int) -> None: ...
    def check(self, name: str, check_id: str) -> SchemaCheck | None: ...
    def save_progress(self, check: SchemaCheck, previous: CheckProgress, offending: list[OffendingKey]) -> bool: ...
    def offending(
        self, name: str, check_id: str, *, after: str | None, limit: int
    ) -> tuple[list[OffendingKey], bool]: ...
